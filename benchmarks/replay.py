"""A cheap WHIP publisher for capacity runs: pre-encoded VP8 out, returned frames timed undecoded.

``capacity.py``'s full clients encode, decode and read a number out of every frame: ~200 ms of CPU per
stream-second, so one client core saturates at ~5 streams and "streams held per gateway core" cannot
be measured past that on a 2-core machine. This client does none of that per frame:

- ``loop_of_frames`` encodes 32 s of frames once (libvpx, keyframe first, none after), and
  ``ReplayTrack`` hands them to aiortc as ``av.Packet`` s, which aiortc packetizes without encoding
  (``RTCRtpSender`` "packs" pre-encoded data). The loop restarts on its keyframe, so the stream stays
  decodable; the gateway still decodes, converts, runs its thread and re-encodes every frame.
- The gateway is asked (``Prefer: return-timestamps=input``) to give each returned frame its input's
  RTP timestamp; the stock aiortc server does so anyway. ``undecoded_worker`` replaces aiortc's decoder
  thread in this process only and hands over each complete returned frame's RTP timestamp and arrival
  time instead of a picture. ``Offset`` learns the constant between sent and returned timestamps
  (each receiver counts from its first frame): frames are stamped, and sent, with a known irregular
  capture jitter, so only one offset makes every returned timestamp a sent one.

The round trip ends when the returned frame's last packet is in, not when it is decoded: it leaves out
the client's own encode and decode (a few ms), which are not the gateway's. Both ways run at 1 Mbit/s
(``BITRATE``): the loop is encoded at it, and the client's REMB never asks for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import queue
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ooblex.webrtc import hotpath, internals

VIDEO_CLOCK = 90_000
WRAP = 2**32
#: How many recently sent timestamps a first returned frame is tried against.
CANDIDATES = 300
#: The most a frame's timestamp is off its 30 fps slot (``stamp``), in 90 kHz ticks.
JITTER_TICKS = 250
#: What the loop is encoded at, and the most the returned video may use (REMB).
BITRATE = 1_000_000


def loop_of_frames(next_image: Callable[[], np.ndarray], frames: int = 960, warmup: int = 60,
                   bitrate: int = BITRATE) -> list[bytes]:
    """``frames`` VP8 frames of ``next_image`` as the full clients' encoder makes them at ``bitrate`` (REMB
    settles near 1 Mbit/s over loopback): a keyframe after ``warmup`` frames (so that the rate control has
    settled), then only inter frames.

    The pictures pan 4 px a frame across 640: after 160 frames they are back where they began, so a loop
    of a multiple of 160 is seamless and the gateway's encoder never sees a scene cut (one, on noise,
    costs it a 300 kB frame and seconds of catching up). 960 frames are longer than a row: the loop's
    keyframe comes round only between rows."""
    from aiortc.codecs import depayload
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from ooblex.webrtc.encoders import encoder_for

    params = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=VIDEO_CLOCK, payloadType=96)
    encoder = encoder_for(params.mimeType, "stock")
    encoder.target_bitrate = bitrate
    out = []
    for i in range(warmup + frames):
        frame = av.VideoFrame.from_ndarray(next_image(), format="rgb24")
        frame.pts, frame.time_base = i * 3000, fractions.Fraction(1, VIDEO_CLOCK)
        payloads, _ = encoder.encode(frame, i == warmup)
        if i >= warmup:
            out.append(b"".join(depayload(params, p) for p in payloads))
    keyframes = [i for i, data in enumerate(out) if data and not data[0] & 1]  # VP8: P bit 0 = keyframe
    if keyframes != [0]:
        raise RuntimeError(f"the encoder gave keyframes at {keyframes}: the loop would not start on one")
    return out


def stamp(n: int, fps: int = 30) -> int:
    """Frame ``n``'s capture time in RTP ticks: its place on the ``fps`` clock plus a fixed pseudo-random 0-2.7 ms
    (a camera's capture jitter). The jitter makes the timestamp offset learnable; kept under 10 % of a frame,
    it leaves a server encoder's rate control, which follows the time between frames, as a steady clock would."""
    return n * VIDEO_CLOCK // fps + zlib.crc32(n.to_bytes(8, "little")) % JITTER_TICKS


class ReplayTrack(MediaStreamTrack):
    """The loop's frames, each sent at its ``stamp`` and stamped with it; ``sent`` maps a stamp to (frame number,
    send time)."""

    kind = "video"

    def __init__(self, frames: list[bytes], fps: int = 30) -> None:
        super().__init__()
        self.frames, self.fps = frames, fps
        self.count = 0
        self.sent: dict[int, tuple[int, float]] = {}
        self._start: float | None = None

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = self._start if self._start is not None else now
        n = self.count
        delay = self._start + stamp(n, self.fps) / VIDEO_CLOCK - now
        if delay > 0:
            await asyncio.sleep(delay)
        packet = av.Packet(self.frames[n % len(self.frames)])
        packet.pts = stamp(n, self.fps)
        packet.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        self.sent[packet.pts % WRAP] = (n, time.monotonic())
        if len(self.sent) > 4 * CANDIDATES:
            self.sent.pop(next(iter(self.sent)))
        self.count += 1
        return packet


class Offset:
    """The constant between a returned frame's RTP timestamp and its sent stamp, learnt by elimination.

    A server may be off by a tick (stock aiortc converts timestamps through its encoder's time base and
    back, rounding down): matches allow ``TICKS`` either way."""

    TICKS = (0, -1, 1)

    def __init__(self) -> None:
        self.value: int | None = None
        self._candidates: set[int] | None = None

    def learn(self, timestamp: int, sent: dict[int, tuple[int, float]]) -> None:
        recent = list(sent)[-CANDIDATES:]
        fits = {(timestamp - s + t) % WRAP for s in recent for t in self.TICKS}
        self._candidates = fits if self._candidates is None else self._candidates & fits
        if not self._candidates:
            self._candidates = None  # a frame from before a restart: start over
            return
        first = next(iter(self._candidates))
        near = sorted((c - first + 2) % WRAP - 2 for c in self._candidates)  # around ``first``, across the wrap
        if near[-1] - near[0] <= 2:  # one offset, give or take a tick
            self.value = (first + near[len(near) // 2]) % WRAP

    def find(self, timestamp: int, sent: dict[int, tuple[int, float]]) -> tuple[int, float] | None:
        """The sent frame that ``timestamp`` returns (once the offset is known), if any."""
        assert self.value is not None
        for t in self.TICKS:
            hit = sent.get((timestamp - self.value + t) % WRAP)
            if hit is not None:
                return hit
        return None


class ReplayTrips:
    """Reads a returned track fed by ``undecoded_worker``: round trips, and which frame numbers came back."""

    def __init__(self, track: ReplayTrack) -> None:
        self.track = track
        self.received = 0
        self.rtts: list[float] = []
        self.numbers: set[int] = set()
        self.offset = Offset()

    async def consume(self, remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                timestamp, arrived = await remote.recv()
                self.received += 1
                if self.offset.value is None:
                    self.offset.learn(timestamp, self.track.sent)
                    continue
                hit = self.offset.find(timestamp, self.track.sent)
                if hit is not None and hit[0] & 0xFFFF not in self.numbers:
                    self.numbers.add(hit[0] & 0xFFFF)
                    self.rtts.append(arrived - hit[1])


def undecoded_worker(loop: asyncio.AbstractEventLoop, input_q: queue.Queue, output_q: asyncio.Queue,
                     decode_error: threading.Event) -> None:
    """In place of aiortc's decoder thread: each complete frame as (RTP timestamp, arrival time), not decoded."""
    while True:
        task = input_q.get()
        if task is None:
            loop.call_soon_threadsafe(output_q.put_nowait, None)
            return
        _, encoded_frame = task
        loop.call_soon_threadsafe(output_q.put_nowait, (encoded_frame.timestamp, time.monotonic()))


def capped_estimator(bitrate: int) -> type:
    """aiortc's receive-side bandwidth estimator, its REMB held to ``bitrate``: over loopback an idle client's
    estimate climbs to several Mbit/s within seconds, and a server encodes at what it is told, so the
    returned video is held to what the loop sends and every row encodes at the same rate."""
    from aiortc.rate import RemoteBitrateEstimator

    class Capped(RemoteBitrateEstimator):
        def add(self, *args: Any, **kwargs: Any) -> tuple[int, list[int]] | None:
            remb = super().add(*args, **kwargs)
            return None if remb is None else (min(remb[0], bitrate), remb[1])
    return Capped


def install(bitrate: int = BITRATE) -> None:
    """Returned video in this process arrives as timestamps, at most ``bitrate`` (call before any peer
    connection starts)."""
    import aiortc.rtcrtpreceiver

    hotpath.install()  # first: it replaces the same decoder thread
    internals.replace(aiortc.rtcrtpreceiver, "decoder_worker", undecoded_worker)
    internals.replace(aiortc.rtcrtpreceiver, "RemoteBitrateEstimator", capped_estimator(bitrate))
