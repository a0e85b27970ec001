"""Capacity of one gateway: CPU per stream and per frame by stage, and how many 640x480@30 streams it holds.

    python benchmarks/capacity.py                # everything, ~6 min: the tables docs/performance.md shows
    python benchmarks/capacity.py --quick        # shorter runs, fewer rows
    python benchmarks/capacity.py --ooblex-root /path/to/other/checkout   # the same for another version
    python benchmarks/capacity.py --picture photo    # a panning camera's content instead of noise
    python benchmarks/capacity.py --picture webcam   # a fixed camera: a still scene, a moving part
    python benchmarks/capacity.py --clients replay   # clients that cost ~40 ms per stream-second (replay.py)

Sections (each prints a table):
1. Video encoders: CPU and wall ms per 640x480 frame, bitrate and PSNR of aiortc's VP8/H.264
   encoders at each ``encoder_speed`` (``ooblex.webrtc.encoders``), in this process.
2. Where a stream's CPU goes: ``ooblex gateway --broker memory://`` (identity) in its own process
   with S streams (WHIP, processed video back), sampled by ``py-spy`` (needs ptrace; else skipped):
   samples by stage (receive/decode, colour conversion, engine, encode, RTP/SRTP/ICE, HTTP, rest),
   scaled to the gateway's CPU time from /proc, per processed frame. Then the extra CPU per frame of
   one MJPEG viewer and one WHEP viewer per stream (differences of /proc CPU between runs).
3. Streams held: N = 1, 2, ... WHIP streams of frame-numbered 640x480 video at 30 fps, each frame's
   round trip timed by its number; the largest N with p99 <= 100 ms and < 1 % loss, for the ooblex
   gateway and for a stock aiortc server (``webrtc_rtt.serve_baseline``) in the same run. Gateway CPU
   ms per stream-second from /proc; the load generator runs in separate processes (2 streams each)
   whose CPU is reported apart. ``--clients replay`` sends a pre-encoded VP8 loop and times the returned
   frames by RTP timestamp, undecoded (``replay.py``): ~40 instead of ~200 ms of client CPU per
   stream-second, so that one client core can load a gateway core to its limit.

With two or more cores the gateway (and the stock server) is pinned to CPU 0 and the load generators
(and py-spy) to the others (``taskset``; ``--pin SERVER_CPUS:CLIENT_CPUS`` to choose, ``--pin none`` for
no pinning), so "streams held" is per gateway core and the clients do not steal the gateway's core.

Everything runs inside a private network namespace with only ``lo`` (re-executes itself under
``unshare -n``). The machine's load average is printed with each table: the clients share it.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import json
import linecache
import os
import platform
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import replay  # noqa: E402
from webrtc_rtt import moving_picture, start  # noqa: E402

from ooblex.tokens import mint  # noqa: E402

P99_MAX_MS, LOSS_MAX_PCT = 100.0, 1.0
TICK = os.sysconf("SC_CLK_TCK")
#: CPU lists for ``taskset -c``: "server" (gateway, stock server), "clients" (load generators, py-spy); "" = any.
PIN = {"server": "", "clients": ""}


def pinned(argv: list[str], role: str) -> list[str]:
    """``argv`` run on the CPUs ``PIN`` gives ``role`` (unchanged when none)."""
    return ["taskset", "-c", PIN[role], *argv] if PIN[role] else argv


# --- 1. encoders ------------------------------------------------------------------------------
def encoder_table(frames: int = 90) -> list[dict[str, Any]]:
    import av
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder

    from ooblex.webrtc.encoders import SPEEDS, encoder_for

    photo = shipped_photo()
    clip = []
    for i in range(frames):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(photo, i * 4, axis=1)), format="rgb24")
        vf = vf.reformat(format="yuv420p")
        vf.pts, vf.time_base = i * 3000, fractions.Fraction(1, 90000)
        clip.append(vf)
    rows = []
    for mime, decoder in (("video/VP8", "libvpx"), ("video/H264", "h264")):
        for speed in SPEEDS:
            enc = encoder_for(mime, speed) or (Vp8Encoder() if mime == "video/VP8" else H264Encoder())
            cpu0, wall0, size = time.process_time(), time.perf_counter(), 0
            for vf in clip:
                payloads, _ = enc.encode(vf)
                size += sum(len(p) for p in payloads)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            rows.append({"codec": mime.split("/")[1], "speed": speed, "cpu_ms": round(cpu / frames * 1e3, 2),
                         "wall_ms": round(wall / frames * 1e3, 2), "kbps": round(size * 8 * 30 / frames / 1e3),
                         "psnr": psnr(mime, decoder, speed, clip)})
    return rows


def psnr(mime: str, decoder: str, speed: str, clip: list[Any]) -> float:
    """Median PSNR (dB) of the clip through the encoder and back."""
    import av
    from aiortc.codecs.h264 import H264Encoder
    from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

    from ooblex.webrtc.encoders import encoder_for

    enc = encoder_for(mime, speed) or (Vp8Encoder() if mime == "video/VP8" else H264Encoder())
    enc.encode(clip[0])  # opens the context with this speed's options
    dec, scores = av.CodecContext.create(decoder, "r"), []
    for i, vf in enumerate(clip[1:]):
        if mime == "video/VP8":  # whole frames back from aiortc's RTP payloads (not every VP8 encoder is PyAV's)
            payloads, _ = enc.encode(vf, force_keyframe=i == 0)
            packets = [av.Packet(b"".join(vp8_depayload(p) for p in payloads))]
        else:
            vf.pict_type = av.video.frame.PictureType.I if i == 0 else av.video.frame.PictureType.NONE
            packets = enc.codec.encode(vf)
        for packet in packets:
            for out in dec.decode(packet):
                ref = clip[1 + len(scores)].to_ndarray(format="rgb24").astype(np.float32)
                mse = float(((out.to_ndarray(format="rgb24").astype(np.float32) - ref) ** 2).mean())
                scores.append(10 * np.log10(255 ** 2 / max(mse, 1e-9)))
    return round(float(np.median(scores)), 1)


# --- processes ----------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


class Servers:
    """The ooblex gateway (from ``root``) and the stock aiortc server, each in its own process."""

    def __init__(self, root: Path, encoder_speed: str | None) -> None:
        self.env = {**os.environ, "PYTHONPATH": str(root), "OOBLEX_MAX_SESSIONS": "64",
                    "OOBLEX_MAX_SESSIONS_PER_CLIENT": "64", "OOBLEX_MAX_PENDING_PER_CLIENT": "64"}
        if encoder_speed:
            self.env["OOBLEX_ENCODER_SPEED"] = encoder_speed
        self.root = root
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.urls: dict[str, str] = {}

    def start(self, which: str) -> str:
        port = 18950 + len(self.procs)
        if which == "ooblex":
            argv = [sys.executable, "-m", "ooblex", "gateway", "--broker", "memory://", "--loopback",
                    "--port", str(port)]
            self.urls[which] = f"http://127.0.0.1:{port}/whip/identity"
        else:
            argv = [sys.executable, str(HERE / "webrtc_rtt.py"), "--serve-baseline", str(port)]
            self.urls[which] = f"http://127.0.0.1:{port}/whip"
        self.procs[which] = start(pinned(argv, "server"), f"http://127.0.0.1:{port}/healthz", self.env, timeout_s=60)
        return self.urls[which]

    def close(self) -> None:
        for p in self.procs.values():
            stop(p)


# --- load generator (a separate process) -----------------------------------------------------------
def shipped_photo(width: int = 640, height: int = 480) -> np.ndarray:
    """The shipped test photo (a face, a background) as RGB at ``width`` x ``height``."""
    import cv2

    return cv2.resize(cv2.imread(str(ROOT / "tests/data/one_face.jpg")), (width, height))[:, :, ::-1]


def panning_photo(width: int = 640, height: int = 480) -> Any:
    """A photo panning 4 px a frame: a panning camera's content (``moving_picture`` pans noise, which VP8's motion
    search predicts exactly: the cheapest of the pictures for a gateway)."""
    base = shipped_photo(width, height)
    state = {"i": 0}

    def next_image() -> np.ndarray:
        state["i"] += 1
        return np.roll(base, state["i"] * 4, axis=1)
    return next_image


def fixed_camera(width: int = 640, height: int = 480) -> Any:
    """A fixed camera's content: the photo still, its head and shoulders moving as a person in front of a webcam
    or a security camera does, and sensor noise of up to 2 levels everywhere. The movement repeats every
    160 frames, as the pans do (``replay.loop_of_frames``)."""
    base = shipped_photo(width, height)
    y0, x0, h, w = height // 48, width * 9 // 64, height * 2 // 3, width * 15 // 32  # head and shoulders: 31 %
    part = base[y0:y0 + h, x0:x0 + w].copy()
    noise = np.random.default_rng(0)
    state = {"i": 0}

    def next_image() -> np.ndarray:
        state["i"] += 1
        phase = 2 * np.pi * state["i"] / 160
        dy, dx = round(8 * np.sin(2 * phase)), round(24 * np.sin(phase))
        image = base.copy()
        image[y0 + dy:y0 + dy + h, x0 + dx:x0 + dx + w] = part
        return np.clip(image + noise.integers(-2, 3, image.shape), 0, 255).astype(np.uint8)
    return next_image


PICTURES = {"noise": moving_picture, "photo": panning_photo, "webcam": fixed_camera}


async def loadgen(url: str, streams: int, seconds: float, warmup: float, viewers: str, token: str,
                  codec: str = "vp8", picture: str = "noise", client_kind: str = "full") -> dict:
    """``streams`` WHIP publishers (+ viewers per stream: "", "mjpeg", "whep"); round trips and loss.

    ``client_kind`` "full" encodes, decodes and reads each frame's number; "replay" (``replay.py``, VP8
    only) sends a pre-encoded loop and times the returned frames by RTP timestamp, undecoded."""
    from ooblex import routes
    from ooblex.webrtc.client import ImageTrack, RoundTrips, WebRTCError, WhepClient, WhipClient

    replaying = client_kind == "replay"
    if replaying:
        replay.install()
        loop_frames = replay.loop_of_frames(PICTURES[picture]())
    clients, trips, extra, tasks, refused = [], [], [], [], 0
    for _ in range(streams):
        track = replay.ReplayTrack(loop_frames) if replaying else ImageTrack(PICTURES[picture](), fps=30)
        client = WhipClient(url, track, token=token, codec=codec,
                            prefer=routes.PREFER_INPUT_TIMESTAMPS if replaying else None)
        try:
            await client.start()
        except WebRTCError as exc:  # 503 at capacity (or a failed negotiation): counted, not fatal
            print(f"  refused: {str(exc)[:120]}", file=sys.stderr, flush=True)
            refused += 1
            continue
        clients.append(client)
        trips.append(replay.ReplayTrips(track) if replaying else RoundTrips(track))
    for c, t in zip(clients, trips, strict=True):
        await c.wait_connected()
        tasks.append(asyncio.create_task(t.consume(c.remote)))
        base = str(httpx.URL(url).join("/"))
        if viewers == "whep":
            viewer = WhepClient(f"{base}whep/{c.stream_id}", token=token)
            await viewer.start()
            extra.append(viewer)
            tasks.append(asyncio.create_task(_drain(viewer.remote)))
        elif viewers == "mjpeg":
            tasks.append(asyncio.create_task(_mjpeg(f"{base}mjpeg/{c.stream_id}", token)))
    await asyncio.sleep(warmup)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # "go": every load generator measures the same window
    first = [t.track.count for t in trips]
    skip = [len(t.rtts) for t in trips]
    received0 = [t.received for t in trips]
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    print("done", flush=True)
    last = [t.track.count for t in trips]
    await asyncio.sleep(1.0)  # stragglers
    rtts, sent, got, received = [], 0, 0, 0
    for t, a, b, s, r0 in zip(trips, first, last, skip, received0, strict=True):
        window = {n & 0xFFFF for n in range(a, b)}
        sent += len(window)
        got += len(window & t.numbers)
        rtts += t.rtts[s:]
        received += t.received - r0
    for task in tasks:
        task.cancel()
    for c in [*extra, *clients]:
        try:
            await asyncio.wait_for(c.close(), 5)
        except Exception:  # noqa: BLE001 - the server may be gone
            pass
    return {"sent": sent, "returned": got, "received": received, "rtts": rtts, "cpu_s": cpu, "refused": refused}


async def _drain(track: Any) -> None:
    while True:
        await track.recv()


async def _mjpeg(url: str, token: str) -> None:
    async with httpx.AsyncClient(timeout=None) as http:
        async with http.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as r:
            async for _ in r.aiter_raw():
                pass


def run_load(url: str, streams: int, seconds: float, server_pid: int, viewers: str = "",
             profile: bool = False, per_process: int = 2, codec: str = "vp8", picture: str = "noise",
             client_kind: str = "full") -> dict:
    """Load generators in their own processes; the server's CPU from /proc over the measured window."""
    token = mint("control")
    procs = []
    for i in range(0, streams, per_process):
        n = min(per_process, streams - i)
        out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
        argv = [sys.executable, __file__, "--loadgen", url, str(n), str(seconds), viewers, token, out, codec, picture,
                client_kind]
        procs.append((subprocess.Popen(pinned(argv, "clients"), cwd=ROOT, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True), out))
    for p, _ in procs:
        assert p.stdout.readline().strip() == "ready", "load generator failed to start"
    for p, _ in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    cpu0, load0, t0 = cpu_seconds(server_pid), os.getloadavg()[0], time.monotonic()
    spy = start_profile(server_pid, seconds) if profile else None
    for p, _ in procs:
        p.stdout.readline()
    cpu, wall = cpu_seconds(server_pid) - cpu0, time.monotonic() - t0
    stacks = finish_profile(spy)
    results = []
    for p, out in procs:
        p.wait(60)
        results.append(json.loads(Path(out).read_text()))
        os.unlink(out)
    gen_cpu = sum(r["cpu_s"] for r in results)
    rtts = [r for res in results for r in res["rtts"]]
    sent, returned = sum(r["sent"] for r in results), sum(r["returned"] for r in results)
    p = np.percentile(np.array(rtts) * 1e3, [50, 95, 99]) if rtts else [float("nan")] * 3
    return {"streams": streams, "p50": round(float(p[0]), 1), "p95": round(float(p[1]), 1),
            "p99": round(float(p[2]), 1), "loss_pct": round(100 * (1 - returned / max(1, sent)), 2),
            "server_cpu_s": cpu, "wall_s": wall, "frames": sum(r["received"] for r in results),
            "server_ms_per_stream_s": round(cpu * 1e3 / wall / streams, 1),
            "server_ms_per_frame": round(cpu * 1e3 / max(1, sum(r["received"] for r in results)), 2),
            "loadgen_ms_per_stream_s": round(gen_cpu * 1e3 / seconds / streams, 1),
            "refused": sum(r["refused"] for r in results),
            "load": round((load0 + os.getloadavg()[0]) / 2, 1), "stacks": stacks}


# --- 2. profile -------------------------------------------------------------------------------------
STAGES = ("receive/decode", "colour conversion", "engine", "encode", "RTP/SRTP/ICE/DTLS", "HTTP/MJPEG/JPEG",
          "event loop, other")  # "other": the event loop's own work (uvloop: sockets, timers), asyncio glue


def start_profile(pid: int, seconds: float) -> tuple[subprocess.Popen[bytes], str] | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    out = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    proc = subprocess.Popen(pinned([spy, "record", "--pid", str(pid), "--rate", "200", "--duration", str(int(seconds)),
                             "--format", "raw", "--nonblocking", "--full-filenames", "-o", out], "clients"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, out


def finish_profile(spy: tuple[subprocess.Popen[bytes], str] | None) -> Counter | None:
    if spy is None:
        return None
    proc, out = spy
    proc.wait(60)
    text = Path(out).read_text() if Path(out).exists() else ""
    os.unlink(out)
    if proc.returncode != 0 or not text:
        print(f"  (py-spy could not sample the gateway: {proc.stderr.read().decode()[-300:]})", flush=True)
        return None
    stacks: Counter = Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks[stack] += int(count)
    return stacks


FRAME = re.compile(r"(?P<fn>[^;]+?) \((?P<file>[^;]+?):(?P<line>\d+)\)")
#: Source lines where a sampled thread waits rather than works (py-spy --nonblocking counts some as active).
WAITING = ("work_queue.get(", "waiter.acquire(", "self._cond.wait(", "with self._cond")
NETWORK = ("rtcdtlstransport.py", "rtcicetransport.py", "aioice/", "pylibsrtp/", "aiortc/rtp.py", "rtcsctp",
           "asyncio/selector_events.py", "uvloop/")


def stage_of(stack: str) -> str | None:
    """The stage a sampled stack (root;...;leaf, py-spy raw format) worked for; None for a waiting thread."""
    frames = [(fn.rsplit(".", 1)[-1], file, int(line)) for fn, file, line in FRAME.findall(stack)]
    if not frames:
        return "event loop, other"
    leaf_text = linecache.getline(frames[-1][1], frames[-1][2])
    if any(w in leaf_text for w in WAITING):
        return None
    for fn, file, line in reversed(frames):
        text = linecache.getline(file, line)
        if any(k in text for k in ("to_ndarray", "from_ndarray", "reformat", "to_rgb(")):
            return "colour conversion"
        if "aiortc/codecs/" in file or file.endswith(("ooblex/webrtc/vp8.py", "ooblex/webrtc/encoders.py")):
            return "receive/decode" if fn == "decode" else "encode"
        if file.endswith("ooblex/jpeg.py") or "gateway/mjpeg.py" in file or "starlette/responses.py" in file:
            return "HTTP/MJPEG/JPEG"
    for _, file, _ in reversed(frames):
        if "ooblex/engine/" in file or "ooblex/broker/" in file or file.endswith("ooblex/stats.py"):
            return "engine"
        if "rtcrtpreceiver.py" in file or "jitterbuffer.py" in file or "ooblex/webrtc/jitter.py" in file:
            return "receive/decode"
        if "rtcrtpsender.py" in file:
            return "encode"
        if any(k in file for k in NETWORK):
            return "RTP/SRTP/ICE/DTLS"
        if any(k in file for k in ("uvicorn/protocols/", "starlette/", "fastapi/", "h11/", "httptools")):
            return "HTTP/MJPEG/JPEG"
    return "event loop, other"


def split(run: dict) -> dict[str, float] | None:
    """CPU ms per processed frame by stage: py-spy's shares of the /proc CPU time."""
    stacks = run.get("stacks")
    if not stacks or not run["frames"]:
        return None
    by: Counter = Counter()
    for stack, n in stacks.items():
        stage = stage_of(stack)
        if stage is not None:
            by[stage] += n
    total = sum(by.values())
    per_frame = run["server_cpu_s"] * 1e3 / run["frames"]
    return {s: round(per_frame * by[s] / total, 2) for s in STAGES}


# --- main ---------------------------------------------------------------------------------------
def profile_and_fan_out(args: argparse.Namespace, url: str, pid: int, secs: float) -> float:
    """Section 1: where the gateway's CPU goes with ``--profile-streams`` streams, and what a viewer adds;
    returns the gateway's CPU ms per frame."""
    s = args.profile_streams
    runs = {v: run_load(url, s, secs, pid, viewers=v, profile=(v == ""), codec=args.codec, picture=args.picture,
                         client_kind=args.clients)
            for v in ("", "mjpeg", "whep")}
    base = runs[""]
    print(f"## Where the gateway's CPU goes: {s} WHIP streams, 640x480@30 {args.codec.upper()}, identity, "
          f"video back "
          f"(load {base['load']})\n")
    stages = split(base)
    total_ms = base["server_cpu_s"] * 1e3 / max(1, base["frames"])
    print(f"{base['frames']} frames processed in {base['wall_s']:.0f} s; gateway CPU {total_ms:.2f} ms per frame, "
          f"{base['server_ms_per_stream_s']} ms per stream-second (p50 {base['p50']} ms, p99 {base['p99']} ms, "
          f"loss {base['loss_pct']} %)\n")
    if stages:
        print("| stage | CPU ms/frame | share |\n| --- | ---: | ---: |")
        for k, v in stages.items():
            print(f"| {k} | {v} | {100 * v / max(total_ms, 1e-9):.0f} % |")
    else:
        print("(no stage split: py-spy missing or not allowed to sample; pip install py-spy, run as root)")
    print("\n| fan-out, per stream | gateway CPU ms per stream-second | extra ms per viewer-frame |\n"
          "| --- | ---: | ---: |")
    print(f"| none (publisher gets video back) | {base['server_ms_per_stream_s']} | - |")
    for v, name in (("mjpeg", "+1 MJPEG viewer (JPEG encode, HTTP)"), ("whep", "+1 WHEP viewer (VP8 encode)")):
        r = runs[v]
        extra = (r["server_ms_per_stream_s"] - base["server_ms_per_stream_s"]) / 30
        print(f"| {name} | {r['server_ms_per_stream_s']} | {extra:.2f} |")
    print(flush=True)
    return total_ms


def run_all(args: argparse.Namespace) -> None:
    os.environ.setdefault("OOBLEX_SECRET", secrets.token_urlsafe(32))
    if args.pin != "none" and (args.pin or (os.cpu_count() or 1) >= 2) and shutil.which("taskset"):
        PIN["server"], _, PIN["clients"] = (args.pin or f"0:1-{os.cpu_count() - 1}").partition(":")
    root = Path(args.ooblex_root).resolve() if args.ooblex_root else ROOT
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
               f"gateway code from {root}, clients send {args.picture}"
               + (f", encoder_speed={args.encoder_speed}" if args.encoder_speed else "")
               + (f", server on CPU {PIN['server']}, clients on CPU {PIN['clients']}" if PIN["server"] else ""))
    print(f"# Gateway capacity ({machine})\n", flush=True)
    if not args.skip_encoders:
        rows = encoder_table(30 if args.quick else 90)
        print(f"## Video encoders, 640x480, this process (load {os.getloadavg()[0]:.1f})\n")
        print("| codec | encoder_speed | CPU ms/frame | wall ms/frame | kbit/s | PSNR dB |\n| --- | --- | ---: | ---: "
              "| ---: | ---: |")
        for r in rows:
            print(f"| {r['codec']} | {r['speed']} | {r['cpu_ms']} | {r['wall_ms']} | {r['kbps']} | {r['psnr']} |")
        print(flush=True)
    servers = Servers(root, args.encoder_speed)
    try:
        url = servers.start("ooblex")
        pid = servers.procs["ooblex"].pid
        secs = 6 if args.quick else args.seconds
        total_ms = profile_and_fan_out(args, url, pid, secs) if args.profile_streams > 0 else None
        servers.start("baseline")
        print(f"## Streams held: p99 <= {P99_MAX_MS:g} ms and loss < {LOSS_MAX_PCT:g} %, {secs:g} s per row\n")
        print("| server | streams | p50 ms | p99 ms | loss % | server CPU ms per frame "
              "| server CPU ms per stream-second | load generator CPU ms per stream-second | load average | holds |",
              flush=True)
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |", flush=True)
        held = {}
        for which in ("ooblex", "baseline"):
            held[which] = 0
            for n in range(1, args.max_streams + 1):
                r = run_load(servers.urls[which], n, secs, servers.procs[which].pid, codec=args.codec,
                             picture=args.picture, client_kind=args.clients)
                ok = r["p99"] <= P99_MAX_MS and r["loss_pct"] < LOSS_MAX_PCT and not r["refused"]
                verdict = ("yes" if ok else "no") + (f" ({r['refused']} refused)" if r["refused"] else "")
                print(f"| {which} | {n} | {r['p50']} | {r['p99']} | {r['loss_pct']} | {r['server_ms_per_frame']} | "
                      f"{r['server_ms_per_stream_s']} | "
                      f"{r['loadgen_ms_per_stream_s']} | {r['load']} | {verdict} |", flush=True)
                if ok:
                    held[which] = n
                elif n > held[which] + 1:
                    break  # two rows past the last that held
        print(f"\nLargest number of streams held: ooblex {held['ooblex']}, stock aiortc {held['baseline']} "
              f"(clients on the same machine; see the CPU columns for what one stream costs)")
        if total_ms is not None:
            per_second = total_ms * 30  # what a stream delivered at its full 30 fps costs
            per_core = 1000 / max(per_second, 1e-9)
            print(f"Sizing: {total_ms:.2f} ms per frame x 30 fps = {per_second:.0f} ms per stream-second: one "
                  f"gateway core carries ~{per_core:.1f} such streams at 100 %, {0.7 * per_core:.1f} at 70 %.")
    finally:
        servers.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    parser.add_argument("--max-streams", type=int, default=10)
    parser.add_argument("--profile-streams", type=int, default=2, help="streams in the profile row; 0 skips it")
    parser.add_argument("--quick", action="store_true", help="6 s rows, fewer encoder frames")
    parser.add_argument("--skip-encoders", action="store_true")
    parser.add_argument("--ooblex-root", help="run the gateway from this checkout (before/after comparisons)")
    parser.add_argument("--encoder-speed", choices=["stock", "fast", "fastest"], help="the gateway's encoder_speed")
    parser.add_argument("--no-netns", action="store_true", help="do not re-run inside unshare -n")
    parser.add_argument("--pin", help="SERVER_CPUS:CLIENT_CPUS for taskset -c (default 0:1-N with 2+ cores), or none")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8", help="what the clients send and receive")
    parser.add_argument("--picture", choices=sorted(PICTURES), default="noise",
                        help="what the clients send: panning noise (the default), a panning photo, or a fixed "
                             "camera's picture (a still scene, a part moving)")
    parser.add_argument("--clients", choices=["full", "replay"], default="full",
                        help="full: clients encode, decode and read frame numbers (~200 ms CPU per stream-second); "
                             "replay: pre-encoded VP8, returned frames timed by RTP timestamp undecoded (streams "
                             "held per gateway core on a machine with few cores)")
    parser.add_argument("--loadgen", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        url, n, seconds, viewers, token, out, codec, picture, client_kind = args.loadgen
        result = asyncio.run(loadgen(url, int(n), float(seconds), 3.0, viewers, token, codec, picture, client_kind))
        Path(out).write_text(json.dumps(result))
        return 0
    if not args.no_netns and os.environ.get("OOBLEX_IN_NETNS") != "1":
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in [sys.executable, *sys.argv])
        return subprocess.call(["unshare", "-n", "sh", "-c", cmd], env={**os.environ, "OOBLEX_IN_NETNS": "1"})
    run_all(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
