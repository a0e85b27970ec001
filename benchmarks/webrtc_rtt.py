"""Round trip of frame-numbered 640x480 video through WebRTC: the ooblex gateway vs plain aiortc.

Each run sends numbered frames (``ooblex.webrtc.framecode``) over WHIP to a server that sends
them back on the same peer connection, and times each number from leaving the sender's track
to being decoded again (encode, network, server decode, processing, encode, network, decode).

    python benchmarks/webrtc_rtt.py [--seconds 20] [--fps 30] [--codec vp8|h264]

Rows:
- ooblex gateway (identity thread, embedded engine) with the ooblex client (``ooblex send``);
- the same gateway with a stock aiortc client (what the gateway alone contributes);
- baseline: the classic aiortc server (frames transformed in-process inside ``recv``,
  stock jitter buffers), with a stock aiortc client;
- with ``--cluster [redis] [rabbitmq]`` (needs the servers installed; both when none is named):
  ``ooblex up --broker B`` (gateway -> broker -> one ``ooblex worker``
  process serving identity), with the ooblex client;
- codec floor: the same numbered frames through the same encoders and decoders, twice (the client's
  encoder at aiortc's speed, the gateway's at its ``encoder_speed``), in this process: no network, no
  RTP, no server logic. The round trip cannot be shorter; the rest is what WebRTC and the gateway add.
Servers run as separate processes; everything runs inside a private network namespace with only
``lo`` up (re-executes itself under ``unshare -n`` unless --no-netns).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ooblex.tokens import mint  # noqa: E402
from ooblex.webrtc import internals  # noqa: E402
from ooblex.webrtc.client import ImageTrack, RoundTrips, WhipClient, percentiles_ms  # noqa: E402


def serve_baseline(port: int, host: str = "127.0.0.1") -> None:
    """The plain aiortc way: transform frames inside the returned track's ``recv``."""
    import uvicorn
    from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
    from av import VideoFrame
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from ooblex.webrtc import allow_loopback, rtc_configuration

    allow_loopback(True)
    pcs: dict[str, RTCPeerConnection] = {}

    class Transform(MediaStreamTrack):
        kind = "video"

        def __init__(self, track: MediaStreamTrack) -> None:
            super().__init__()
            self.track = track

        async def recv(self) -> VideoFrame:
            frame = await self.track.recv()
            image = frame.to_ndarray(format="rgb24")  # the "model": identity on RGB pixels
            out = VideoFrame.from_ndarray(image, format="rgb24")
            out.pts, out.time_base = frame.pts, frame.time_base
            return out

    async def offer(request: Request) -> Response:
        pc = RTCPeerConnection(rtc_configuration())
        key = str(len(pcs))
        pcs[key] = pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            pc.addTrack(Transform(track))

        await pc.setRemoteDescription(RTCSessionDescription(sdp=(await request.body()).decode(), type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return Response(pc.localDescription.sdp, 201, media_type="application/sdp",
                        headers={"Location": f"/whip/{key}"})

    async def delete(request: Request) -> Response:
        pc = pcs.pop(request.path_params["key"], None)
        if pc is not None:
            await pc.close()
        return Response("ok")

    async def health(request: Request) -> Response:
        return Response("ok")

    app = Starlette(routes=[Route("/whip", offer, methods=["POST"]), Route("/whip/{key}", delete, methods=["DELETE"]),
                            Route("/healthz", health)])
    uvicorn.run(app, host=host, port=port, log_level="warning")


def moving_picture(width: int = 640, height: int = 480) -> Callable[[], np.ndarray]:
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    state = {"i": 0}

    def next_image() -> np.ndarray:
        state["i"] += 1
        return np.roll(base, state["i"] * 4, axis=1)
    return next_image


async def measure(url: str, *, fast: bool, seconds: float, fps: float, codec: str, warmup: float = 2.0) -> dict:
    track = ImageTrack(moving_picture(), fps=fps)
    client = WhipClient(url, track, codec=codec, fast=fast, token=mint("publish"))
    await client.start()
    await client.wait_connected()
    trips = RoundTrips(track)
    reader = asyncio.create_task(trips.consume(client.remote))
    await asyncio.sleep(warmup)
    first, skip, bytes0 = track.count, len(trips.rtts), await received_bytes(client.pc)
    await asyncio.sleep(seconds)
    last, bytes1 = track.count, await received_bytes(client.pc)
    await asyncio.sleep(1.0)  # stragglers
    inside = await gateway_stages(url, client.stream_id)
    encoder = next((internals.encoder(t.sender) for t in client.pc.getTransceivers() if t.kind == "video"), None)
    reader.cancel()
    await client.close()
    window = {n & 0xFFFF for n in range(first, last)}
    got = window & trips.numbers
    rtts = trips.rtts[skip:]
    return {"sent": len(window), "received": len(got), "loss_pct": round(100 * (1 - len(got) / max(1, len(window))), 2),
            "fps_sent": round(len(window) / seconds, 1), **percentiles_ms(rtts), **inside,
            "bitrates": (getattr(encoder, "target_bitrate", None), int((bytes1 - bytes0) * 8 / seconds))}


async def received_bytes(pc: Any) -> int:
    """What ``pc`` received so far (SRTP datagrams: media, RTP/SRTP headers, RTCP)."""
    return sum(s.bytesReceived for s in (await pc.getStats()).values() if s.type == "transport")


def codec_floor(frames: int, fps: float, codec: str, gateway_speed: str,
                bitrates: tuple[int | None, int | None] = (None, None)) -> dict:
    """Encode + decode twice, per frame (ms): the client's encoder (aiortc's speed, ``realtime_encoders(pc,
    "stock")`` as ``WhipClient`` sets it) from the RGB frame as the client's track gives it, the gateway's
    (``gateway_speed``) from the decoded frame as the gateway sends it back; aiortc's decoders, RTP payloads
    depayloaded in between. ``bitrates``: the encoders' targets, as the measured row ran (the client's
    encoder where REMB took it; the gateway's by what the client received, ~3 % RTP/SRTP headers
    included): more bits cost more CPU. None: aiortc's starting 500 kbit/s."""
    from aiortc.codecs import depayload, get_decoder, get_encoder
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from ooblex.webrtc.encoders import encoder_for

    params = RTCRtpCodecParameters(mimeType=f"video/{codec.upper()}", clockRate=90000, payloadType=96)
    hops = [(encoder_for(params.mimeType, speed) or get_encoder(params), get_decoder(params))
            for speed in ("stock", gateway_speed)]
    for (encoder, _), bitrate in zip(hops, bitrates, strict=True):
        if bitrate and hasattr(encoder, "target_bitrate"):
            encoder.target_bitrate = bitrate
    track, times = ImageTrack(moving_picture(), fps=fps), []  # the frames, numbers and pace of the rows

    async def one() -> float:
        vf = await track.recv()
        started = time.perf_counter()
        for encoder, decoder in hops:
            payloads, timestamp = encoder.encode(vf)
            data = b"".join(depayload(params, p) for p in payloads)
            decoded = decoder.decode(JitterFrame(data=data, timestamp=timestamp))
            if not decoded:
                return float("nan")
            vf = decoded[0]
            vf.pts, vf.time_base = timestamp, fractions.Fraction(1, 90000)  # as ProcessedTrack stamps it
        return time.perf_counter() - started

    async def all_frames() -> None:
        for _ in range(frames):
            times.append(await one())
    asyncio.run(all_frames())
    done = [t for t in times[10:] if t == t]  # after the first keyframes
    return {"sent": len(done), "loss_pct": 0.0, **percentiles_ms(done), "bitrates": bitrates}


async def gateway_stages(url: str, stream_id: str | None) -> dict:
    """The gateway's own view (decoded frame in -> processed frame out), from /api/v1/streams."""
    if not stream_id:
        return {}
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {mint('control')}"}) as http:
        r = await http.get(str(httpx.URL(url).join(f"/api/v1/streams/{stream_id}")))
    info = r.json() if r.status_code == 200 else {}
    lat = info.get("latency_ms", {})
    return {"gateway_p50": lat.get("total", {}).get("p50"), "gateway_p99": lat.get("total", {}).get("p99"),
            "gateway_dropped": info.get("dropped", 0) + info.get("stale", 0)}


def start(argv: list[str], health: str, env: dict[str, str] | None = None, timeout_s: float = 30.0
          ) -> subprocess.Popen:
    """``argv`` started from the checkout (this checkout's ooblex first), once ``health`` answers 200."""
    proc = subprocess.Popen(argv, cwd=ROOT, env=env or {**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(health, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start: {' '.join(argv)}\n{proc.stderr.read().decode()[-3000:]}")


async def run(args: argparse.Namespace) -> list[tuple[str, dict]]:
    os.environ.setdefault("OOBLEX_SECRET", secrets.token_urlsafe(32))  # the gateways and `ooblex up` share it
    gw_port, base_port = 18931, 18932
    clusters = {b: 18933 + i for i, b in enumerate(args.cluster or ())}
    servers = [
        start([sys.executable, "-m", "ooblex", "gateway", "--broker", "memory://", "--loopback",
               "--port", str(gw_port)], f"http://127.0.0.1:{gw_port}/healthz"),
        start([sys.executable, __file__, "--serve-baseline", str(base_port)], f"http://127.0.0.1:{base_port}/healthz"),
    ]
    for broker, port in clusters.items():
        servers.append(start([sys.executable, "-m", "ooblex", "up", "--workers", "1", "--broker", broker,
                              "--thread", "identity", "--port", str(port)], f"http://127.0.0.1:{port}/healthz"))
    if clusters:
        await asyncio.sleep(3)  # the workers register and take their queues
    rows = []
    try:
        configs = [
            ("ooblex gateway + ooblex client", f"http://127.0.0.1:{gw_port}/whip/identity", True),
            ("ooblex gateway + stock aiortc client", f"http://127.0.0.1:{gw_port}/whip/identity", False),
            ("baseline: plain aiortc server + client", f"http://127.0.0.1:{base_port}/whip", False),
        ]
        for broker, port in clusters.items():
            configs.append((f"ooblex gateway -> {broker} -> 1 worker process",
                            f"http://127.0.0.1:{port}/whip/identity", True))
        if args.only is not None:
            configs = [configs[args.only]]
        for name, url, fast in configs:
            result = await measure(url, fast=fast, seconds=args.seconds, fps=args.fps, codec=args.codec)
            rows.append((name, result))
            print(f"  {name}: {result}", flush=True)
        if not args.no_floor:  # the servers idle, as for the rows above
            speed = os.environ.get("OOBLEX_ENCODER_SPEED", "fast")
            floor = await asyncio.to_thread(codec_floor, int(args.seconds * args.fps), args.fps,
                                          args.codec, speed, rows[0][1].get("bitrates", (None, None)))
            rows.append((FLOOR, floor))
            print(f"  {FLOOR}: {floor}", flush=True)
    finally:
        for s in servers:
            s.send_signal(signal.SIGINT)  # `ooblex up` stops its children on SIGINT
            s.wait(20)
    return rows


FLOOR = "codec floor: encode + decode twice, no network"


def table(rows: list[tuple[str, dict]], args: argparse.Namespace) -> str:
    lines = [f"WebRTC round trip, {args.codec.upper()} 640x480 @ {args.fps:g} fps, {args.seconds:g} s per row "
             f"({platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()})", "",
             "| setup | frames | p50 ms | p95 ms | p99 ms | loss % | inside gateway p50 / p99 ms | dropped there |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in rows:
        inside = f"{r['gateway_p50']} / {r['gateway_p99']}" if r.get("gateway_p50") is not None else "-"
        lines.append(f"| {name} | {r['sent']} | {r.get('p50', '-')} | {r.get('p95', '-')} | {r.get('p99', '-')} "
                     f"| {r['loss_pct']} | {inside} | {r.get('gateway_dropped', '-')} |")
    base, ours = dict(rows).get("baseline: plain aiortc server + client", {}), rows[0][1]
    if base.get("p50") and ours.get("p50"):
        lines += ["", f"p50 speed-up over the baseline: {base['p50'] / ours['p50']:.1f}x"]
    floor = dict(rows).get(FLOOR, {})
    if floor.get("p50") and ours.get("p50"):
        kbps = " / ".join(f"{b // 1000}" if b else "500" for b in floor.get("bitrates", (None, None))) + " kbit/s"
        lines += ["", f"p50 round trip / codec floor ({rows[0][0]}; floor encoders at {kbps}): "
                      f"{ours['p50'] / floor['p50']:.2f}x"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--only", type=int, help="run only this row (0, 1, 2, 3)")
    parser.add_argument("--cluster", nargs="*", choices=["redis", "rabbitmq"],
                        help="add cluster rows through these brokers (default with no names: both)")
    parser.add_argument("--no-floor", action="store_true", help="leave out the codec floor row")
    parser.add_argument("--no-netns", action="store_true", help="do not re-run inside unshare -n")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster == []:
        args.cluster = ["redis", "rabbitmq"]
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return 0
    if not args.no_netns and os.environ.get("OOBLEX_IN_NETNS") != "1":
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", cmd], env={**os.environ, "OOBLEX_IN_NETNS": "1"})
    rows = asyncio.run(run(args))
    print(table(rows, args))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
