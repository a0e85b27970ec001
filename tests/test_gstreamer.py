"""Interop with an independent WebRTC stack: GStreamer 1.22 ``webrtcbin`` from Debian, default settings.

The peer (``tests/gst_peer.py``) runs under Debian's Python with ``python3-gi``, in its own process:
its own ICE (libnice), DTLS (an RSA-2048 certificate), RTP and RTCP timing (reports every ~5 s).
libnice offers no loopback candidates, so each test gives its namespace a veth address.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .media import moving_picture
from .netns import in_netns

GST_PYTHON = "/usr/bin/python3"
PEER = Path(__file__).with_name("gst_peer.py")
ELEMENTS = ("webrtcbin", "nicesrc", "vp8enc", "vp8dec", "x264enc", "rtph264pay", "videotestsrc")
#: SMPTE colour bars (videotestsrc pattern=smpte), top row, left to right: which of R, G, B are lit.
BARS = [(1, 1, 1), (1, 1, 0), (0, 1, 1), (0, 1, 0), (1, 0, 1), (1, 0, 0), (0, 0, 1)]


def gstreamer_problem() -> str | None:
    """Why the GStreamer peer cannot run here (packages from .ci/system-deps), or None."""
    if shutil.which(GST_PYTHON) is None:
        return f"{GST_PYTHON} not found"
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0');"
             "from gi.repository import Gst, GstWebRTC; Gst.init(None);"
             f"missing = [e for e in {ELEMENTS!r} if Gst.ElementFactory.find(e) is None];"
             "print(' '.join(missing))")
    done = subprocess.run([GST_PYTHON, "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"python3-gi with GStreamer is not usable: {done.stderr.strip()[-300:]}"
    if done.stdout.strip():
        return f"GStreamer elements missing: {done.stdout.strip()}"
    return None


def needs_gstreamer() -> None:
    problem = gstreamer_problem()
    if problem:
        pytest.skip(f"needs GStreamer webrtcbin ({problem}; see .ci/system-deps)")


def give_namespace_an_address(address: str = "10.77.0.1/24") -> None:
    """Inside a test namespace: a veth with a routable address, since libnice skips loopback."""
    for cmd in (["ip", "link", "add", "gst0", "type", "veth", "peer", "name", "gst1"],
                ["ip", "addr", "add", address, "dev", "gst0"],
                ["ip", "link", "set", "gst0", "up"], ["ip", "link", "set", "gst1", "up"]):
        subprocess.run(cmd, check=True)


async def start_peer(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(GST_PYTHON, str(PEER), *args, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE)


async def until_answered(proc: asyncio.subprocess.Process) -> dict:
    """The peer's "answered" event (it POSTs once ICE gathering completes); fails on an error."""
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line, f"GStreamer peer exited: {(await proc.stderr.read()).decode()[-2000:]}"
        event = json.loads(line)
        assert event["event"] != "error", event
        if event["event"] == "answered":
            return event


async def events(proc: asyncio.subprocess.Process, timeout: float) -> list[dict]:
    """Every event the peer prints until it exits (it exits on its own after --seconds)."""
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    errors = [e["message"] for e in lines if e["event"] == "error"]
    assert not errors, f"GStreamer peer failed: {errors}\n{err.decode()[-2000:]}"
    assert proc.returncode == 0, err.decode()[-2000:]
    return lines


async def one_mjpeg_frame(url: str):
    import httpx

    from ooblex import jpeg

    async with httpx.AsyncClient(timeout=10) as http, http.stream("GET", url) as r:
        buf = b""
        async for chunk in r.aiter_bytes():
            buf += chunk
            if buf.count(b"\xff\xd9") >= 2:
                break
    start = buf.index(b"\xff\xd8")
    return jpeg.decode(buf[start:buf.index(b"\xff\xd9", start) + 2])


@in_netns
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_webrtcbin_publishes_over_whip(codec: str) -> None:
    """A stock webrtcbin (RSA DTLS certificate) publishes VP8, or H.264 as OBS sends it; the gateway decodes it."""
    needs_gstreamer()
    give_namespace_an_address()
    from .gateway_server import running_gateway

    with running_gateway() as gw:
        proc = await start_peer("whip", gw.url + "/whip/identity", "--codec", codec, "--seconds", "8")
        answered = await until_answered(proc)
        stream = gw.state.engine.streams[answered["stream"]]
        await asyncio.sleep(4)
        image = await one_mjpeg_frame(f"{gw.url}/mjpeg/{answered['stream']}")
        processed = stream.stats.counters["processed"]
        rest = await events(proc, 30)
        assert rest[-1]["state"] == "connected", rest[-1]
    assert image.shape == (240, 320, 3)
    width = image.shape[1] / 7
    for i, lit in enumerate(BARS):  # decoded right: each bar has its colour
        pixel = image[60, int(width * (i + 0.5))]
        ok = all(v > 150 if on else v < 60 for v, on in zip(pixel, lit, strict=True))
        assert ok, f"bar {i}: {pixel.tolist()}, lit {lit}"
    print(f"{codec}: {processed} frames processed in the first ~5 s")
    assert processed > 60, f"only {processed} frames arrived from webrtcbin"


@in_netns
@pytest.mark.timeout(150)
async def test_webrtcbin_watches_over_whep_past_30_s() -> None:
    """A stock webrtcbin viewer (RTCP every ~5 s) keeps receiving for 40 s with default gateway settings."""
    needs_gstreamer()
    give_namespace_an_address()
    from ooblex.webrtc.client import ImageTrack, WhipClient

    from .gateway_server import running_gateway

    seconds = 40
    with running_gateway() as gw:
        track = ImageTrack(moving_picture(320, 240), fps=30)
        async with WhipClient(gw.url + "/whip/identity", track, receive=False) as pub:
            await pub.wait_connected()
            t0 = time.monotonic()
            proc = await start_peer("whep", f"{gw.url}/whep/{pub.stream_id}", "--seconds", str(seconds))
            ticks = [e for e in await events(proc, seconds + 40) if e["event"] == "tick"]
            assert time.monotonic() - t0 >= seconds
            sessions = gw.state.sessions.count("whep")
    counts = [t["frames"] for t in ticks]
    print(f"webrtcbin viewer: frames decoded per second: {[b - a for a, b in zip(counts, counts[1:], strict=False)]}")
    assert ticks[-1]["state"] == "connected", ticks[-1]
    assert sessions == 1, "the gateway closed the WHEP session of a live viewer"
    assert counts[-1] > 20 * seconds * 0.5, f"only {counts[-1]} frames in {seconds} s"
    late = [t for t in ticks if t["t"] > 10]
    for a, b in zip(late, late[4:], strict=False):  # every ~4 s window after the start, well past 30 s, has new frames
        assert b["frames"] - a["frames"] > 20, f"the viewer stalled between {a['t']} s and {b['t']} s: {ticks}"
