"""Audio-video sync through the gateway: a flash and a beep sent together, measured where they arrive.

A publisher (aiortc, ``ooblex.webrtc.avsync.signal_tracks``) sends ``SyncSignal`` over WHIP: once a
second the picture turns white and a 1 kHz tone starts, at the same instant. The gateway runs
the video through a tensor thread and passes the Opus audio through untouched, held by the
video's measured delay. Receivers:

- the **returned track** (the publisher's own sendrecv connection) and a **WHEP viewer**, both
  aiortc with ``ooblex.webrtc.avsync.SyncProbe``: when each decoded flash frame arrived (its frame
  number corrects for frames dropped at the flash's start) and when each beep's Opus packet
  arrived (tapped before aiortc's ~80 ms audio jitter buffer, which is the receiver's, not ours);
- with ``--chromium``: a **Chromium WHEP viewer** at playout (``benchmarks/av_sync.js``: flashes at
  requestVideoFrameCallback's expectedDisplayTime, beeps at an AudioWorklet's sample time mapped
  to the output clock), where the browser's own jitter buffers and lip sync act too (counted once
  its lip sync has settled, 20 s after joining).

Offset = video time - audio time per flash, in ms: positive when the sound comes first (EBU R37
sign; it asks for +40 / -60 ms). Threads: ``identity`` and ``sleep40`` (40 ms per frame); the
``sleep40 (hold off)`` row runs a gateway with ``OOBLEX_AUDIO_MAX_DELAY_MS=0`` to show what the
hold does. Everything runs inside a private network namespace (re-executes under ``unshare -n``).

    python benchmarks/av_sync.py [--seconds 20] [--chromium]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ooblex as ob  # noqa: E402
from ooblex.media.avsync import SyncSignal, offsets, summary  # noqa: E402
from ooblex.tokens import mint  # noqa: E402
from ooblex.webrtc.avsync import SyncProbe, signal_tracks  # noqa: E402
from ooblex.webrtc.client import WhepClient, WhipClient  # noqa: E402

#: Flashes long enough that a slow thread's output always shows one (frame numbers date its start).
SIGNAL = SyncSignal(flash=0.2, width=320, height=240)
#: Chromium lip-syncs audio and video of one stream by their RTCP sender reports, moving the video's
#: delay step by step (libwebrtc's StreamSynchronization: a filtered difference, steps of at most 80 ms,
#: none under 30 ms): on a loaded machine it takes 10-20 s from joining to settle.
CHROMIUM_SETTLE_S = 20.0
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
                  "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--autoplay-policy=no-user-gesture-required"]


@ob.tensor_thread
def sleep40(frame):
    """A thread that takes 40 ms per frame (served by the gateways this script starts)."""
    time.sleep(0.04)
    return frame


def start_gateway(port: int, **env: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "ooblex", "gateway", "--broker", "memory://", "--loopback", "--port", str(port),
            "--thread", f"{Path(__file__).resolve()}:sleep40"]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"gateway did not start:\n{proc.stderr.read().decode()}")


async def chromium_viewer(url: str, token: str, seconds: float, settle: float) -> tuple[list[float], dict]:
    """Flash/beep offsets at a Chromium WHEP viewer's playout after its lip sync has settled, and its
    jitter buffer delays (ms)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(bypass_csp=True)  # a harness page: the gateway's CSP allows no injection
            await page.goto(str(httpx.URL(url).join("/healthz")))
            await page.add_script_tag(path=str(Path(__file__).with_suffix(".js")))
            await page.evaluate("async ([u, t]) => avsync.measure(await avsync.whep(u, t))", [url, token])
            await asyncio.sleep(settle)
            start = await page.evaluate("performance.now()")
            await asyncio.sleep(seconds)
            got = await page.evaluate("({f: avsync.flashes, b: avsync.beeps})")
            buffers = await page.evaluate("avsync.jitterBuffers()")
        finally:
            await browser.close()
    return offsets([t / 1e3 for t in got["f"] if t >= start], [t / 1e3 for t in got["b"] if t >= start],
                   SIGNAL.period), buffers


async def measure(base: str, thread: str, seconds: float, chromium: bool, warmup: float = 3.0) -> list[dict]:
    token = mint("publish")
    video, audio = signal_tracks(SIGNAL)
    pub = WhipClient(f"{base}/whip/{thread}", video, audio=audio, token=token)
    back = SyncProbe(SIGNAL)
    pub.tap_audio(back.on_packet)
    await pub.start()
    await pub.wait_connected()
    viewer = WhepClient(f"{base}/whep/{pub.stream_id}", token=token)
    view = SyncProbe(SIGNAL)
    viewer.tap_audio(view.on_packet)
    await viewer.start()
    watchers = [asyncio.create_task(back.watch(pub.remote)), asyncio.create_task(view.watch(viewer.remote))]
    await asyncio.sleep(warmup)
    after = time.monotonic()
    browser = None
    if chromium:
        browser = await chromium_viewer(f"{base}/whep/{pub.stream_id}", token, seconds, settle=CHROMIUM_SETTLE_S)
    else:
        await asyncio.sleep(seconds)
    async with httpx.AsyncClient() as http:
        info = (await http.get(f"{base}/api/v1/streams/{pub.stream_id}",
                               headers={"Authorization": f"Bearer {token}"})).json()
    for w in watchers:
        w.cancel()
    await viewer.close()
    await pub.close()
    audio_info = info.get("audio") or {}
    common = {"thread": thread, "hold_ms": audio_info.get("hold_ms"),
              "video_ms": info.get("latency_ms", {}).get("total", {}).get("p50"),
              "dropped": info.get("dropped", 0) + info.get("stale", 0)}
    rows = [{**common, "receiver": "returned track (aiortc, arrival)", **summary(back.offsets(after)),
             "missing_ms": round(back.missing / 48, 1)},
            {**common, "receiver": "WHEP viewer (aiortc, arrival)", **summary(view.offsets(after)),
             "missing_ms": round(view.missing / 48, 1)}]
    if browser is not None:
        rows.append({**common, "receiver": "WHEP viewer (Chromium, playout)", **summary(browser[0]),
                     "buffers": browser[1]})
    return rows


async def run(args: argparse.Namespace) -> list[dict]:
    os.environ.setdefault("OOBLEX_SECRET", secrets.token_urlsafe(32))
    held, unheld = 18951, 18952
    gateways = [start_gateway(held), start_gateway(unheld, OOBLEX_AUDIO_MAX_DELAY_MS="0")]
    rows = []
    try:
        for base, thread, label in [(held, "identity", "identity"), (held, "sleep40", "sleep40"),
                                    (unheld, "sleep40", "sleep40 (hold off)")]:
            for row in await measure(f"http://127.0.0.1:{base}", thread, args.seconds, args.chromium):
                row["thread"] = label
                rows.append(row)
                print(f"  {row}", flush=True)
    finally:
        for g in gateways:
            g.send_signal(signal.SIGINT)
            g.wait(20)
    return rows


async def packet_costs(seconds: float = 10.0) -> dict[str, float]:
    """Microseconds per 20 ms Opus packet: the pass-through (tap, relay, track, aiortc's pack) against
    what decoding would cost (aiortc's decoder: what dropping audio used to cost) and transcoding."""
    from aiortc.codecs.opus import OpusDecoder, OpusEncoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtp import RtpPacket

    from ooblex.webrtc.audio import AudioRelay, LipSync, PacketTap

    payloads = SIGNAL.opus(seconds)
    relay = AudioRelay(LipSync())
    track = relay.subscribe()
    tap, packer = PacketTap(relay.push), OpusEncoder()
    t = time.perf_counter()
    for i, data in enumerate(payloads):
        tap.add(RtpPacket(payload_type=111, sequence_number=i & 0xFFFF, timestamp=i * 960, payload=data))
        relay._send(relay._queue.pop(0)[2])  # what run() does when the packet is due
        packer.pack(await track.recv())
    passthrough = (time.perf_counter() - t) / len(payloads) * 1e6
    decoder, encoder = OpusDecoder(), OpusEncoder()
    t = time.perf_counter()
    decoded = [f for i, data in enumerate(payloads) for f in decoder.decode(JitterFrame(data, i * 960))]
    decode = (time.perf_counter() - t) / len(payloads) * 1e6
    t = time.perf_counter()
    for f in decoded:
        encoder.encode(f)
    encode = (time.perf_counter() - t) / len(payloads) * 1e6
    return {"pass-through (tap, relay, track, pack)": passthrough, "aiortc decode": decode,
            "aiortc decode + encode (a transcoding relay)": decode + encode}


def table(rows: list[dict], args: argparse.Namespace) -> str:
    load = os.getloadavg()
    lines = [f"A/V offset (video - audio, ms; + = sound first), {args.seconds:g} s per thread, 1 flash+beep per s "
             f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f})", "",
             "| thread | receiver | beeps | median | min | max | audio hold ms | video in gateway p50 ms | "
             "frames dropped | sound missing ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['thread']} | {r['receiver']} | {r.get('n', 0)} | {r.get('median', '-')} | "
                     f"{r.get('min', '-')} | {r.get('max', '-')} | {r['hold_ms']} | {r['video_ms']} | "
                     f"{r['dropped']} | {r.get('missing_ms', '-')} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per thread")
    parser.add_argument("--chromium", action="store_true", help="add a Chromium WHEP viewer (playout)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--no-netns", action="store_true", help="do not re-run inside unshare -n")
    args = parser.parse_args()
    if not args.no_netns and os.environ.get("OOBLEX_IN_NETNS") != "1":
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", cmd], env={**os.environ, "OOBLEX_IN_NETNS": "1"})
    rows = asyncio.run(run(args))
    print(table(rows, args))
    costs = asyncio.run(packet_costs())
    print("\n| per 20 ms Opus packet, one listener | us |\n| --- | ---: |")
    for name, us in costs.items():
        print(f"| {name} | {us:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
