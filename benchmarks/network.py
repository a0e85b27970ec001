"""Live video through an impaired network: loss, delay and a rate cap; ooblex vs stock aiortc, side by side.

    client 10.30.1.2 ── router 10.30.1.1 │ 10.30.2.1 ── server 10.30.2.2
                        (loss, delay, rate cap, both directions)

    sudo python benchmarks/network.py [--seconds 20] [--loss 0 1 3 5] [--delay-ms 40] [--jitter-ms 10]
                                      [--rate-kbit 1500] [--without-fec] [--browser] [--lossy both|up|down]
                                      [--only SETUP ...] [--json rows.json]

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

``--browser`` adds two rows with Chromium (``/usr/bin/chromium`` through Playwright) as the client,
publishing its fake camera (640x480, 30 fps) to each server and playing what comes back: freeze % and
longest gap from the returned frames' presentation times (``requestVideoFrameCallback``), Chromium's
inbound-rtp counters (packets lost, NACKs, PLIs, its jitter buffer's mean delay, ``fecPacketsReceived``
where Chromium has it), its own video on the way up (``upstream``: packets sent and resent, and the loss
the server's receiver reports gave it, from ``remote-inbound-rtp``) and, for the gateway, its
``ooblex_fec`` metric: parity sent to Chromium, packets rebuilt from Chromium's parity, the loss Chromium
reports. No round trip: the fake camera's frames are
not numbered.
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
CHROMIUM = "/usr/bin/chromium"
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


#: Chromium in the client namespace: fake camera (640x480, 30 fps), the lab's plain-HTTP server origin treated as
#: secure (getUserMedia needs a secure context), video played without a user gesture.
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
                  "--disable-background-networking", "--disable-component-update", "--no-first-run"]
#: Publishes the fake camera over WHIP (POST from the page: same origin), plays what comes back and notes
#: each returned frame's presentation time (``requestVideoFrameCallback``).
BROWSER_PUBLISH = """async ([path, token]) => {
  const camera = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 480, frameRate: 30}});
  const pc = window.__pc = new RTCPeerConnection();
  window.__frames = [];
  pc.addTransceiver(camera.getVideoTracks()[0], {direction: 'sendrecv'});
  pc.ontrack = (e) => {
    const video = document.createElement('video');
    video.muted = true; video.autoplay = true; video.playsInline = true;
    video.srcObject = new MediaStream([e.track]);
    document.body.appendChild(video);
    const note = (now) => { window.__frames.push(now); video.requestVideoFrameCallback(note); };
    video.requestVideoFrameCallback(note);
  };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => { if (pc.iceGatheringState === 'complete') done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === 'complete' && done(); });
  const headers = {'Content-Type': 'application/sdp'};
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch(path, {method: 'POST', headers, body: pc.localDescription.sdp});
  if (r.status !== 201) throw new Error('WHIP ' + r.status + ': ' + await r.text());
  window.__resource = [new URL(r.headers.get('Location'), location.href).href, headers];
  const answer = await r.text();
  await pc.setRemoteDescription({type: 'answer', sdp: answer});
  return answer;
}"""
#: Ends the session the WHIP way (DELETE of its resource), so that the server closes it at once.
BROWSER_HANG_UP = """async () => { const [url, headers] = window.__resource; window.__pc.close();
  await fetch(url, {method: 'DELETE', headers: {Authorization: headers.Authorization || ''}}); }"""
#: The returned video's inbound-rtp stats and the presentation times noted so far.
BROWSER_STATS = """async () => { let inbound = null, outbound = null, remote = null, sent = 0, received = 0;
  for (const s of (await window.__pc.getStats()).values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'video') inbound = s;
    if (s.type === 'outbound-rtp' && s.kind === 'video') outbound = s;
    if (s.type === 'remote-inbound-rtp' && s.kind === 'video') remote = s;
    if (s.type === 'transport') { sent += s.bytesSent; received += s.bytesReceived; } }
  return {inbound, outbound, remote, sent, received, frames: window.__frames.length, now: performance.now()}; }"""
#: Chromium's counters reported for the returned video (``fecPacketsReceived`` is absent unless Chromium has one).
BROWSER_KEYS = ("framesDecoded", "packetsLost", "packetsReceived", "nackCount", "pliCount", "freezeCount",
                "totalFreezesDuration", "fecPacketsReceived", "fecPacketsDiscarded", "jitterBufferDelay",
                "jitterBufferEmittedCount")


async def measure_browser(url: str, seconds: float, warmup: float = 4.0) -> dict:
    """In the client namespace: Chromium publishes its fake camera and plays the returned video; one row."""
    from urllib.parse import urlsplit

    from playwright.async_api import async_playwright

    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=[
            *CHROMIUM_FLAGS, f"--unsafely-treat-insecure-origin-as-secure={origin}"])
        try:
            page = await browser.new_page()
            await page.goto(f"{origin}/healthz")
            answer = await page.evaluate(BROWSER_PUBLISH, [parts.path, os.environ.get("OOBLEX_TOKEN", "")])
            await asyncio.sleep(warmup)
            first, fec0 = await page.evaluate(BROWSER_STATS), await asyncio.to_thread(_gateway_fec, origin)
            await asyncio.sleep(seconds)
            last, fec1 = await page.evaluate(BROWSER_STATS), await asyncio.to_thread(_gateway_fec, origin)
            times = await page.evaluate("([a, b]) => window.__frames.slice(a, b)", [first["frames"], last["frames"]])
            await page.evaluate(BROWSER_HANG_UP)
        finally:
            await browser.close()
    row = _browser_row(first, last, times, answer)
    if fec1:
        counted = [k for k in ("parity_sent", "rebuilt", "nack_copies", "tail_probes") if k in fec1]
        row["gateway_fec"] = {**{k: fec1[k] - fec0.get(k, 0) for k in counted}, "peer_loss": fec1["peer_loss"]}
    return row


def _gateway_fec(origin: str) -> dict:
    """The gateway's FEC counters over its open sessions (``ooblex_fec`` in /metrics); {} from another server."""
    import urllib.request

    token = os.environ.get("OOBLEX_METRICS_TOKEN")
    request = urllib.request.Request(f"{origin}/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        text = urllib.request.urlopen(request, timeout=5).read().decode()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        if line.startswith("ooblex_fec{"):
            measure = line.split('measure="', 1)[1].split('"', 1)[0]
            values[measure] = float(line.rsplit(" ", 1)[1])
    return values


def _browser_row(first: dict, last: dict, times: list[float], answer: str) -> dict:
    """Freeze share from the presentation times (ms, the page's clock), and how Chromium's counters moved."""
    start, end = first["now"], last["now"]
    edges = [start, *times, end]
    gaps = [(b - a) / 1e3 for a, b in zip(edges, edges[1:], strict=False)]
    span = (end - start) / 1e3
    before, after = first["inbound"] or {}, last["inbound"] or {}
    moved = {k: round(after[k] - before.get(k, 0), 3) for k in BROWSER_KEYS if k in after}
    emitted = moved.get("jitterBufferEmittedCount", 0)
    return {"fps": round(len(times) / span, 1),
            "freeze_pct": round(100 * sum(g for g in gaps if g > FREEZE_S) / span, 1),
            "longest_gap_ms": round(max(gaps) * 1e3), "freezes_ms": [round(g * 1e3) for g in gaps if g > FREEZE_S],
            "rtt_p50_ms": None, "rtt_p99_ms": None,
            "kbit_up": round((last["sent"] - first["sent"]) * 8 / span / 1e3),
            "kbit_down": round((last["received"] - first["received"]) * 8 / span / 1e3),
            "jitter_buffer_ms": round(1e3 * moved.get("jitterBufferDelay", 0) / emitted, 1) if emitted else None,
            "fec_negotiated": "ulpfec/90000" in answer, "chromium": moved, "upstream": _upstream(first, last)}


def _upstream(first: dict, last: dict) -> dict:
    """Chromium's video on the way up: packets sent and resent, and the loss the server's receiver reports
    gave (``remote-inbound-rtp``: the lost count moved, and the last report's fraction)."""
    out0, out1 = first.get("outbound") or {}, last.get("outbound") or {}
    rem0, rem1 = first.get("remote") or {}, last.get("remote") or {}
    sent = out1.get("packetsSent", 0) - out0.get("packetsSent", 0)
    return {"packets_sent": sent,
            "resent": out1.get("retransmittedPacketsSent", 0) - out0.get("retransmittedPacketsSent", 0),
            "reported_lost": rem1.get("packetsLost", 0) - rem0.get("packetsLost", 0),
            "reported_fraction": rem1.get("fractionLost")}


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


def impair(lab: Lab, router: str, devices: list[str], loss_pct: float, rate_kbit: float, lossy: str = "both") -> None:
    """Loss (random drop; ``lossy``: on packets going ``up`` to the server, ``down`` to the client or ``both``)
    then delay (NFQUEUE 0) on forwarded UDP; a tbf rate cap on each link."""
    script = ["iptables -F FORWARD"]
    if loss_pct:
        coming_in = {"up": f"-i {devices[0]} ", "down": f"-i {devices[1]} ", "both": ""}[lossy]
        script.append(f"iptables -A FORWARD -p udp {coming_in}-m statistic --mode random "
                      f"--probability {loss_pct / 100} -j DROP")
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
        metrics_token = mint("control", secret=secret)
        setups = [("ooblex", f"http://{SERVER}:{GATEWAY_PORT}/whip/identity", []),
                  ("stock aiortc", f"http://{SERVER}:{BASELINE_PORT}/whip", ["--stock"])]
        if args.without_fec:
            setups.insert(1, ("ooblex, NACKs only", setups[0][1], ["--no-fec"]))
        if args.browser:
            setups += [(f"Chromium, {name}", url, ["--browser"]) for name, url, flags in list(setups)
                       if "--no-fec" not in flags]
        setups = [s for s in setups if not args.only or s[0] in args.only]
        for loss in args.loss:
            impair(lab, router, devices, loss, args.rate_kbit, args.lossy)
            for name, url, flags in setups:
                before = cap_drops(lab, router, devices)
                out = _measure_in(lab, client, url, flags, args, env, token, metrics_token)
                row = {"loss_pct": loss, "setup": name, **out, "cap_drops": cap_drops(lab, router, devices) - before}
                rows.append(row)
                print(f"  {row}", flush=True)
    return rows


def _measure_in(lab: Lab, ns: str, url: str, flags: list[str], args: argparse.Namespace, env: dict,
                token: str, metrics_token: str) -> dict:
    proc = lab.spawn(ns, [sys.executable, __file__, "--measure", url, "--seconds", str(args.seconds), *flags],
                     env={**env, "OOBLEX_TOKEN": token, "OOBLEX_METRICS_TOKEN": metrics_token},
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
                     f"| {r['rtt_p50_ms'] or '-'} | {r['rtt_p99_ms'] or '-'} | {r['kbit_up']} | {r['kbit_down']} |")
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
    parser.add_argument("--only", nargs="+", metavar="SETUP", help="only these rows, by setup name")
    parser.add_argument("--lossy", choices=["both", "up", "down"], default="both",
                        help="which way packets are lost: both, up (client to server) or down (server to client)")
    parser.add_argument("--browser", action="store_true",
                        help="two more rows: Chromium (/usr/bin/chromium, fake camera) publishing to each server")
    parser.add_argument("--no-fec", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--measure", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--stock", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        from benchmarks.webrtc_rtt import serve_baseline

        serve_baseline(args.serve_baseline, host=SERVER)
        return 0
    if args.measure and args.browser:
        print(json.dumps(asyncio.run(measure_browser(args.measure, args.seconds))))
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
