"""Bridges between aiortc tracks and engine streams, latest-frame-wins in both directions.

``Ingest`` reads a remote video track as fast as it decodes and keeps only the newest frame,
so a slow consumer never works through a backlog of stale pictures; colour conversion of large
frames runs in a worker thread. Past the gateway's capacity a ``Pace`` (the gateway's governor)
skips frames over its frame-rate cap before any conversion and scales the rest down.
``ProcessedTrack`` is a local track that sends processed frames as soon as they exist; a frame
whose pixels the thread left as they were goes out as the decoded input frame itself (no RGB ->
YUV conversion).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ..engine import Stream
from ..frame import Frame
from ..supervision import cancel

log = logging.getLogger("ooblex.webrtc")
VIDEO_CLOCK = 90000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
#: How many input timestamps to remember for frames still in flight.
PTS_MEMORY = 64
#: Frames up to this size are converted to RGB on the event loop: ~0.4 ms, cheaper than a thread hop.
INLINE_PIXELS = 640 * 480
#: Decoded input frames kept for reuse as output (frames in flight: the stream's window plus one waiting).
DECODED_MEMORY = 4


class Pace(Protocol):
    """What ``Ingest`` asks before taking a frame (``ooblex.gateway.admission.Governor``)."""

    scale: float

    def allow(self, stream_id: str) -> bool: ...

    def forget(self, stream_id: str) -> None: ...


def to_rgb(vf: av.VideoFrame, scale: float = 1.0) -> np.ndarray:
    """``vf`` as an RGB array, scaled by ``scale`` (even sizes) in the same pass."""
    if scale == 1.0:
        return vf.to_ndarray(format="rgb24")
    width, height = max(2, int(vf.width * scale) & ~1), max(2, int(vf.height * scale) & ~1)
    return vf.reformat(width=width, height=height, format="rgb24").to_ndarray()


class LatestSlot:
    """A one-item mailbox: ``put`` replaces what is unread; ``get`` waits for the next item."""

    def __init__(self) -> None:
        self._item: object = None
        self._ready = asyncio.Event()
        self.replaced = 0

    def put(self, item: object) -> None:
        self.replaced += self._ready.is_set()
        self._item = item
        self._ready.set()

    async def get(self) -> object:
        await self._ready.wait()
        self._ready.clear()
        item, self._item = self._item, None
        return item


class Ingest:
    """Feeds one remote video track into ``stream`` until the track ends."""

    def __init__(self, track: MediaStreamTrack, stream: Stream, pace: Pace | None = None) -> None:
        self.track = track
        self.stream = stream
        #: Past capacity: which frames to take and at what scale (``ooblex.gateway.admission.Governor``).
        self.pace = pace
        self.pts: dict[int, int] = {}
        #: seq -> (the RGB array submitted, the decoded frame it came from), for the newest few frames.
        self.decoded: dict[int, tuple[object, av.VideoFrame]] = {}
        self.frames = 0

    async def run(self) -> None:
        slot = LatestSlot()
        reader = asyncio.create_task(self._read(slot), name=f"ingest-read:{self.stream.id}")
        try:
            while True:
                vf = await slot.get()
                if vf is None or self.stream.closed:
                    return
                assert isinstance(vf, av.VideoFrame)
                if self.pace is not None and not self.pace.allow(self.stream.id):
                    continue  # over the frame-rate cap: skipped before any conversion
                captured = time.time()
                scale = self.pace.scale if self.pace is not None else 1.0
                if vf.width * vf.height * scale * scale <= INLINE_PIXELS:
                    image = to_rgb(vf, scale)
                else:
                    image = await asyncio.to_thread(to_rgb, vf, scale)
                frame = await self.stream.submit(image, captured=captured)
                self._remember(frame.seq, vf, image if scale == 1.0 else None)
        finally:
            await cancel(reader)
            if self.pace is not None:
                self.pace.forget(self.stream.id)

    async def _read(self, slot: LatestSlot) -> None:
        """Decode into ``slot``; whatever ends the track (its end, or a failure: logged) ends ``run``."""
        try:
            while True:
                vf = await self.track.recv()
                self.frames += 1
                slot.put(vf)
        except MediaStreamError:
            pass
        except Exception:  # noqa: BLE001 - a decoder failure must end the ingest, not leave it waiting forever
            log.exception("stream %s: reading the incoming track failed", self.stream.id)
        slot.put(None)

    def _remember(self, seq: int, vf: av.VideoFrame, image: object) -> None:
        base = vf.time_base
        if vf.pts is not None and base is not None:
            self.pts[seq] = vf.pts * VIDEO_CLOCK * base.numerator // base.denominator  # integers: no Fraction
        while len(self.pts) > PTS_MEMORY:  # the oldest: seqs are added in order
            del self.pts[next(iter(self.pts))]
        if image is not None:
            self.decoded[seq] = (image, vf)
            while len(self.decoded) > DECODED_MEMORY:
                del self.decoded[next(iter(self.decoded))]

    def pts_of(self, frame: Frame) -> int | None:
        return self.pts.pop(frame.seq, None)

    def original(self, frame: Frame) -> av.VideoFrame | None:
        """The decoded frame ``frame`` came from, if its pixels are still the ones submitted (the thread
        left them as they were: identity, detectors): sending it spares an RGB -> YUV conversion."""
        kept = self.decoded.pop(frame.seq, None)
        return kept[1] if kept is not None and kept[0] is frame.image else None


class ProcessedTrack(MediaStreamTrack):
    """A video track fed by ``next_frame`` (stream.get or a listen queue); ends when it returns None.

    Timestamps are the time each frame is sent, unless ``pts_of`` gives the input frame's own.
    ``on_sent(frame, seconds)`` learns how long each frame took from decoded to sent (aiortc asks
    for the next frame once the previous one is encoded and on the wire): audio is held by that.
    Send times keep the receiver's jitter buffer small: a browser buffers by how much arrival
    times vary against RTP timestamps, and with input timestamps that variation is the thread's
    compute-time variation (``benchmarks/browser_playout.py``, Chromium, a thread taking 5-50 ms:
    about 30 ms of jitter buffer per frame with input timestamps, about 10 ms with send times).
    """

    kind = "video"

    def __init__(self, next_frame: Callable[[], Awaitable[Frame | None]],
                 pts_of: Callable[[Frame], int | None] | None = None,
                 original: Callable[[Frame], av.VideoFrame | None] | None = None,
                 on_sent: Callable[[Frame, float], None] | None = None) -> None:
        super().__init__()
        self._next = next_frame
        self._pts_of = pts_of
        self._original = original  # the decoded input frame, when the output's pixels are unchanged
        self._on_sent = on_sent
        self._previous: Frame | None = None
        self._last_pts = -1
        self._t0 = time.time()
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        self._report_sent()
        frame = await self._next()
        if frame is None or frame.image is None:
            self.stop()
            raise MediaStreamError
        out = self._original(frame) if self._original is not None else None
        if out is None:
            out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        out.pts = self._pts(frame)
        out.time_base = TIME_BASE
        self.sent += 1
        self._previous = frame
        return out

    def _report_sent(self) -> None:
        """The previous frame is on the wire now: tell ``on_sent`` its delay since it was decoded."""
        frame, self._previous = self._previous, None
        if self._on_sent is not None and frame is not None and "captured" in frame.stamps:
            self._on_sent(frame, time.time() - frame.stamps["captured"])

    def _pts(self, frame: Frame) -> int:
        if self._pts_of is None:  # the time it is sent: see the class docstring
            pts: int | None = int((time.time() - self._t0) * VIDEO_CLOCK)
        else:
            pts = self._pts_of(frame)
            if pts is None:
                pts = self._last_pts + VIDEO_CLOCK // 30
        if pts <= self._last_pts:  # RTP timestamps must not go backwards
            pts = self._last_pts + 1
        self._last_pts = pts
        return pts
