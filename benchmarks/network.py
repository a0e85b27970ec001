"""Live video through an impaired network: loss, delay and a rate cap; ooblex vs stock aiortc, side by side.

    client 10.30.1.2 ── router 10.30.1.1 │ 10.30.2.1 ── server 10.30.2.2
                        (loss, delay, rate cap, both directions)

    sudo python benchmarks/network.py [--seconds 20] [--loss 0 1 3 5] [--delay-ms 40] [--jitter-ms 10]
                                      [--rate-kbit 1500] [--without-fec] [--json rows.json]

Three network namespaces; the router forwards UDP through:
- random loss: ``iptables -m statistic --mode random --probability P -j DROP`` (each direction);
- delay ± jitter: an NFQUEUE handler in user space (``tests/netem.py``; this kernel has no netem);
- a rate cap: ``tbf`` on both of the router's links (burst 8 KB, at most 100 ms queued).

For each loss rate, two rows: **ooblex** (``ooblex gateway``, identity thread, with the ooblex
client: ``WhipClient``; RED/ULPFEC negotiated, ``--without-fec`` adds a row without) and
**stock aiortc** (the classic aiortc server of ``benchmarks/webrtc_rtt.py`` with a plain aiortc
client). The client sends frame-numbered
640x480 video at 30 fps over WHIP and reads the returned video: output fps, freeze ratio (share
of the time covered by gaps of more than 200 ms between returned frames), round trip p50/p99
(numbered frames from leaving the client's track to decoded back), and the bitrate up and
down (all the client's transport bytes: media, retransmissions, RTCP). Needs root (``ip netns``), iptables and tc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.netlab import Lab  # noqa: E402

SERVER, CLIENT = "10.30.2.2", "10.30.1.2"
GATEWAY_PORT, BASELINE_PORT = 8800, 8801
FREEZE_S = 0.2


def camera_like(width: int = 640, height: int = 480):
    """A smooth textured picture panning 4 px a frame: compresses like camera video (noise would not)."""
    import cv2

    coarse = np.random.default_rng(0).integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    base = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    state = {"i": 0}

    def next_image() -> np.ndarray:
        state["i"] += 1
        return np.roll(base, state["i"] * 4, axis=1)
    return next_image


async def measure(url: str, stock: bool, seconds: float, warmup: float = 4.0, fec: bool = True) -> dict:
    """In the client namespace: send, read back, and sum up one row."""
    from ooblex.webrtc import framecode
    from ooblex.webrtc.client import ImageTrack, WhipClient

    track = ImageTrack(camera_like(), fps=30)
    client = WhipClient(url, track, fast=not stock, fec=fec, ice_servers=[], token=os.environ.get("OOBLEX_TOKEN"))
    await client.start()
    await client.wait_connected(30)
    arrivals: list[float] = []
    rtts: list[tuple[float, float]] = []

    async def consume() -> None:
        while True:
            frame = await client.remote.recv()
            now = time.monotonic()
            arrivals.append(now)
            n = framecode.read(await asyncio.to_thread(frame.to_ndarray, format="rgb24"))
            if n is not None and n in track.sent:
                rtts.append((now, time.time() - track.sent.pop(n)))

    reader = asyncio.create_task(consume())
    await asyncio.sleep(warmup)
    start, bytes0 = time.monotonic(), await _bytes(client.pc)
    await asyncio.sleep(seconds)
    end, bytes1 = time.monotonic(), await _bytes(client.pc)
    reader.cancel()
    recovery = _recovery(client.pc)
    await client.close()
    inside = [t for t in arrivals if start <= t <= end]
    edges = [start, *inside, end]
    gaps = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    trips = [r for t, r in rtts if start <= t <= end]
    p50, p99 = np.percentile(np.array(trips) * 1e3, [50, 99]) if trips else (float("nan"), float("nan"))
    return {"fps": round(len(inside) / (end - start), 1),
            "freeze_pct": round(100 * sum(g for g in gaps if g > FREEZE_S) / (end - start), 1),
            "longest_gap_ms": round(max(gaps) * 1e3),
            "freezes_ms": [round(g * 1e3) for g in gaps if g > FREEZE_S],
            "rtt_p50_ms": round(float(p50), 1), "rtt_p99_ms": round(float(p99), 1),
            "kbit_up": round((bytes1[0] - bytes0[0]) * 8 / (end - start) / 1e3),
            "kbit_down": round((bytes1[1] - bytes0[1]) * 8 / (end - start) / 1e3), **recovery}


def _recovery(pc) -> dict:
    """What the client's loss recovery did (ooblex client only): NACK retries, holes given up on or
    stepped over, parity sent and packets it rebuilt, and the encoder's bitrate at the end."""
    from ooblex.webrtc.protection import protection_stats
    from ooblex.webrtc.recovery import RecoveringJitterBuffer

    for transceiver in pc.getTransceivers():
        buffer = getattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer", None)
        if isinstance(buffer, RecoveringJitterBuffer):
            nacks = transceiver.receiver._RTCRtpReceiver__nack_generator
            encoder = getattr(transceiver.sender, "_RTCRtpSender__encoder", None)
            return {"nack_retries": nacks.retries, "gave_up": buffer.gave_up, "discarded": buffer.discarded,
                    "skipped": buffer.skipped, "rtt_ms": round(nacks.rtt * 1e3), **protection_stats(pc),
                    "encoder_kbit": getattr(encoder, "target_bitrate", 0) // 1000}
    return {}


async def _bytes(pc) -> tuple[int, int]:
    """(bytes sent, bytes received) by ``pc``'s transports so far: media, retransmissions, RTCP."""
    sent = received = 0
    for stats in (await pc.getStats()).values():
        if stats.type == "transport":
            sent += stats.bytesSent
            received += stats.bytesReceived
    return sent, received


def build(lab: Lab) -> tuple[str, str, str, list[str]]:
    client, router, server = lab.host("client"), lab.host("router", forward=True), lab.host("server")
    _, towards_client = lab.link(client, f"{CLIENT}/24", router, "10.30.1.1/24")
    towards_server, _ = lab.link(router, "10.30.2.1/24", server, f"{SERVER}/24")
    lab.sh(client, "ip route add default via 10.30.1.1")
    lab.sh(server, "ip route add default via 10.30.2.1")
    return client, router, server, [towards_client, towards_server]


def impair(lab: Lab, router: str, devices: list[str], loss_pct: float, rate_kbit: float) -> None:
    """Loss (random drop) then delay (NFQUEUE 0) on forwarded UDP; a tbf rate cap on each link."""
    script = ["iptables -F FORWARD"]
    if loss_pct:
        script.append(f"iptables -A FORWARD -p udp -m statistic --mode random --probability {loss_pct / 100} -j DROP")
    script.append("iptables -A FORWARD -p udp -j NFQUEUE --queue-num 0")
    for dev in devices:
        script.append(f"tc qdisc replace dev {dev} root tbf rate {rate_kbit:g}kbit burst 8kb latency 100ms")
    lab.sh(router, " && ".join(script))


def cap_drops(lab: Lab, router: str, devices: list[str]) -> int:
    """Packets the rate cap (tbf) has dropped so far on the router's links, both directions."""
    total = 0
    for dev in devices:
        stats = lab.sh(router, f"tc -s qdisc show dev {dev}").stdout
        words = stats.replace(",", " ").split()
        total += sum(int(words[i + 1]) for i, w in enumerate(words[:-1]) if w == "dropped")
    return total


def wait_http(lab: Lab, ns: str, url: str) -> None:
    probe = ("import sys, time, urllib.request\nfor _ in range(150):\n"
             "    try: urllib.request.urlopen(sys.argv[1], timeout=1); break\n"
             "    except Exception: time.sleep(0.2)\nelse: sys.exit(1)")
    lab.sh(ns, f"{sys.executable} -c '{probe}' {url}")


def run(args: argparse.Namespace) -> list[dict]:
    from ooblex.tokens import mint

    secret = secrets.token_urlsafe(32)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OOBLEX_SECRET": secret}
    rows = []
    with Lab("bench") as lab:
        client, router, server, devices = build(lab)
        netem = lab.spawn(router, [sys.executable, str(ROOT / "tests" / "netem.py"), "--delay-ms",
                                   str(args.delay_ms), "--jitter-ms", str(args.jitter_ms)], stdout=subprocess.PIPE)
        assert netem.stdout is not None and netem.stdout.readline().strip() == b"netem: ready"
        lab.spawn(server, [sys.executable, "-m", "ooblex", "gateway", "--host", SERVER, "--port", str(GATEWAY_PORT),
                           "--broker", "memory://"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        lab.spawn(server, [sys.executable, __file__, "--serve-baseline", str(BASELINE_PORT)], env=env,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        impair(lab, router, devices, 0, args.rate_kbit)
        wait_http(lab, client, f"http://{SERVER}:{GATEWAY_PORT}/healthz")
        wait_http(lab, client, f"http://{SERVER}:{BASELINE_PORT}/healthz")
        token = mint("publish", thread="identity", secret=secret)
        setups = [("ooblex", f"http://{SERVER}:{GATEWAY_PORT}/whip/identity", []),
                  ("stock aiortc", f"http://{SERVER}:{BASELINE_PORT}/whip", ["--stock"])]
        if args.without_fec:
            setups.insert(1, ("ooblex, NACKs only", setups[0][1], ["--no-fec"]))
        for loss in args.loss:
            impair(lab, router, devices, loss, args.rate_kbit)
            for name, url, flags in setups:
                before = cap_drops(lab, router, devices)
                out = _measure_in(lab, client, url, flags, args, env, token)
                row = {"loss_pct": loss, "setup": name, **out, "cap_drops": cap_drops(lab, router, devices) - before}
                rows.append(row)
                print(f"  {row}", flush=True)
    return rows


def _measure_in(lab: Lab, ns: str, url: str, flags: list[str], args: argparse.Namespace, env: dict,
                token: str) -> dict:
    proc = lab.spawn(ns, [sys.executable, __file__, "--measure", url, "--seconds", str(args.seconds), *flags],
                     env={**env, "OOBLEX_TOKEN": token}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=args.seconds + 120)
    if proc.returncode != 0:
        return {"error": err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


def table(rows: list[dict], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    lines = [f"640x480 VP8 @ 30 fps through {args.delay_ms:g} ± {args.jitter_ms:g} ms each way, "
             f"{args.rate_kbit:g} kbit/s cap each way, {args.seconds:g} s per row "
             f"({platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})",
             "", "| loss % | setup | output fps | freeze % | longest gap ms | round trip p50 ms | p99 ms "
                 "| kbit/s up | kbit/s down |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['loss_pct']:g} | {r['setup']} | failed: {r['error']} | | | | | | |")
            continue
        lines.append(f"| {r['loss_pct']:g} | {r['setup']} | {r['fps']} | {r['freeze_pct']} | {r['longest_gap_ms']} "
                     f"| {r['rtt_p50_ms']} | {r['rtt_p99_ms']} | {r['kbit_up']} | {r['kbit_down']} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--loss", type=float, nargs="+", default=[0, 1, 3, 5], help="loss rates, percent")
    parser.add_argument("--delay-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=10.0)
    parser.add_argument("--rate-kbit", type=float, default=1500.0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--without-fec", action="store_true",
                        help="a third row: ooblex with RED/ULPFEC left out of the offer (NACKs only)")
    parser.add_argument("--no-fec", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        from benchmarks.webrtc_rtt import serve_baseline

        serve_baseline(args.serve_baseline, host=SERVER)
        return 0
    if args.measure:
        print(json.dumps(asyncio.run(measure(args.measure, args.stock, args.seconds, fec=not args.no_fec))))
        return 0
    rows = run(args)
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
