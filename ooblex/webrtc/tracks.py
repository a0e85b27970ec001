"""Bridges between aiortc tracks and engine streams, latest-frame-wins in both directions.

``Ingest`` reads a remote video track as fast as it decodes and keeps only the newest frame,
so a slow consumer never works through a backlog of stale pictures; colour conversion of large
frames runs in a worker thread. ``ProcessedTrack`` is a local track that sends processed frames
as soon as they exist.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from collections.abc import Awaitable, Callable

import av
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

    def __init__(self, track: MediaStreamTrack, stream: Stream) -> None:
        self.track = track
        self.stream = stream
        self.pts: dict[int, int] = {}
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
                captured = time.time()
                if vf.width * vf.height <= INLINE_PIXELS:
                    image = vf.to_ndarray(format="rgb24")
                else:
                    image = await asyncio.to_thread(vf.to_ndarray, format="rgb24")
                frame = await self.stream.submit(image, captured=captured)
                self._remember(frame.seq, vf)
        finally:
            await cancel(reader)

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

    def _remember(self, seq: int, vf: av.VideoFrame) -> None:
        if vf.pts is not None and vf.time_base is not None:
            self.pts[seq] = int(vf.pts * vf.time_base * VIDEO_CLOCK)
        if len(self.pts) > PTS_MEMORY:
            for old in sorted(self.pts)[: len(self.pts) - PTS_MEMORY]:
                del self.pts[old]

    def pts_of(self, frame: Frame) -> int | None:
        return self.pts.pop(frame.seq, None)


class ProcessedTrack(MediaStreamTrack):
    """A video track fed by ``next_frame`` (stream.get or a listen queue); ends when it returns None.

    Timestamps are the time each frame is sent, unless ``pts_of`` gives the input frame's own.
    Send times keep the receiver's jitter buffer small: a browser buffers by how much arrival
    times vary against RTP timestamps, and with input timestamps that variation is the thread's
    compute-time variation (``benchmarks/browser_playout.py``, Chromium, a thread taking 5-50 ms:
    about 30 ms of jitter buffer per frame with input timestamps, about 10 ms with send times).
    """

    kind = "video"

    def __init__(self, next_frame: Callable[[], Awaitable[Frame | None]],
                 pts_of: Callable[[Frame], int | None] | None = None) -> None:
        super().__init__()
        self._next = next_frame
        self._pts_of = pts_of
        self._last_pts = -1
        self._t0 = time.time()
        self.sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._next()
        if frame is None or frame.image is None:
            self.stop()
            raise MediaStreamError
        out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        out.pts = self._pts(frame)
        out.time_base = TIME_BASE
        self.sent += 1
        return out

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
