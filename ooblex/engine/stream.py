"""One stream's scheduler: what to send, what to drop, and in which order results come out.

Two modes:
- ``live`` (cameras, WebRTC): at most ``max_in_flight`` frames at the workers; while the window
  is full, only the newest waiting frame is kept (latest-frame-wins) and older ones are counted
  as dropped. Each task carries a deadline (``max_latency_ms`` after it arrived) past which a
  worker skips it. Outputs never go backwards in sequence.
- ``every`` (files, jobs): nothing is dropped; ``submit`` waits for room (backpressure) and
  outputs come out in input order.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from typing import Any, Literal

import numpy as np

from ..errors import BadRequest, NotFound
from ..frame import Frame
from ..stats import StreamStats
from ..thread import TensorThread

log = logging.getLogger("ooblex.stream")
Mode = Literal["live", "every"]
#: A live frame that has been at the workers this long past its deadline is presumed lost.
LOST_GRACE_S = 2.0


class StreamClosed(NotFound, RuntimeError):
    """The stream was closed (before or while waiting on it): it is gone."""


class Stream:
    """Submit frames, read processed frames. Created by ``Engine.open``."""

    def __init__(self, engine: Any, thread: TensorThread, *, params: dict[str, Any] | None = None,
                 mode: Mode = "live", max_in_flight: int = 2, max_latency_ms: float = 500.0,
                 stream_id: str | None = None, output_size: int = 2) -> None:
        if mode not in ("live", "every"):
            raise BadRequest(f"mode must be 'live' or 'every', got {mode!r}")
        if max_in_flight < 1:
            raise BadRequest(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.engine = engine
        self.thread = thread
        self.id = stream_id or secrets.token_urlsafe(12)
        self.mode: Mode = mode
        self.window = max_in_flight
        self.max_latency_ms = max_latency_ms
        self.params = thread.resolve_params(params or {})
        metrics = getattr(engine, "metrics", None)  # a gateway's Prometheus metrics (``ooblex.metrics``)
        self.stats = StreamStats(sink=metrics.stream(thread.name, self.id) if metrics is not None else None)
        self.created = time.time()
        self.closed = False
        self._seq = 0
        # seq -> (time after which it is presumed lost, its pixels: restored if a worker sends none back)
        self._in_flight: dict[int, tuple[float, np.ndarray | None]] = {}
        self._pending: Frame | None = None
        self._last_out = -1
        self._error_logged = False
        self._room = asyncio.Semaphore(max_in_flight)  # every-frame mode: frames anywhere in the system
        self._reorder: dict[int, Frame] = {}
        size = output_size if mode == "live" else max_in_flight + 1
        self._out: asyncio.Queue[Frame | None] = asyncio.Queue(size)
        self.latest: Frame | None = None
        #: Workers serving this thread, as last seen by the engine (-1: unknown).
        self.workers = -1
        self._listeners: list[asyncio.Queue[Frame | None]] = []

    # --- input --------------------------------------------------------------------------
    def make_frame(self, image: np.ndarray, captured: float | None = None) -> Frame:
        frame = Frame(image=image, stream_id=self.id, seq=self._seq, thread=self.thread.name)
        self._seq += 1
        now = time.time()
        if captured:
            frame.stamps["captured"] = captured
        frame.stamps["received"] = now
        return frame

    async def submit(self, image: np.ndarray | Frame, captured: float | None = None) -> Frame:
        """Hand a frame to the engine. Live mode never blocks; every-frame mode waits for room."""
        if self.closed:
            raise StreamClosed(f"stream {self.id} is closed")
        frame = image if isinstance(image, Frame) else self.make_frame(image, captured)
        frame.stream_id, frame.thread = self.id, self.thread.name
        frame.params = self.params
        frame.reply_to = self.engine.reply_to
        self.stats.received()
        if self.mode == "every":
            await self._room.acquire()
            if self.closed:
                raise StreamClosed(f"stream {self.id} is closed")
            await self._send(frame, live=False)
            return frame
        frame.deadline = frame.stamps["received"] + self.max_latency_ms / 1e3
        self._reclaim_lost()
        if len(self._in_flight) < self.window:
            await self._send(frame, live=True)
        else:
            if self._pending is not None:
                self.stats.count("dropped")
            self._pending = frame
        return frame

    async def _send(self, frame: Frame, live: bool) -> None:
        frame.stamp("queued")
        self._in_flight[frame.seq] = ((frame.deadline or time.time()) + LOST_GRACE_S, frame.image)
        await self.engine.broker.submit(frame, live=live)

    def _reclaim_lost(self) -> None:
        """Frames at the workers long past their deadline are presumed lost. Frames that waited for the thread's
        model to load for its first frame are not: they come back skipped (stale) once it has loaded."""
        now = time.time()
        loaded = self.engine.loaded_at(self.thread.name) + LOST_GRACE_S  # inf while loading
        lost = [s for s, (t, _) in self._in_flight.items() if max(t, loaded) < now]
        for s in lost:
            del self._in_flight[s]
        if lost:
            self.stats.count("lost", len(lost))

    # --- results ------------------------------------------------------------------------
    async def on_result(self, frame: Frame) -> None:
        """Called by the engine for each processed frame of this stream."""
        frame.stamp("returned")
        sent = self._in_flight.pop(frame.seq, None)
        if sent is None and self.mode == "live":
            return  # already presumed lost; a late duplicate
        if frame.image is None and not frame.skipped and sent is not None:
            frame.image = sent[1]  # the worker left the pixels unchanged and did not send them back
        if self.mode == "every":
            if frame.seq <= self._last_out or frame.seq in self._reorder:
                self.stats.count("duplicates")  # redelivered after a worker died: already have it
                return
            self._reorder[frame.seq] = frame
            while self._last_out + 1 in self._reorder:
                self._last_out += 1
                await self._emit(self._reorder.pop(self._last_out))
            return
        await self._live_result(frame)
        pending, self._pending = self._pending, None
        if pending is not None and not self.closed:
            if pending.expired():
                self.stats.count("stale")
            else:
                await self._send(pending, live=True)

    async def _live_result(self, frame: Frame) -> None:
        if frame.skipped:
            self.stats.count("stale")
        elif frame.seq < self._last_out:
            self.stats.count("dropped")
        else:
            self._last_out = frame.seq
            await self._emit(frame)

    async def _emit(self, frame: Frame) -> None:
        if frame.error is not None:
            self.stats.count("errors")
            if not self._error_logged:
                self._error_logged = True
                log.warning("stream %s: %s raised %s (frames pass through flagged)", self.id,
                            self.thread.name, frame.error)
        self.stats.record(frame)
        self.latest = frame
        _put_latest(self._out, frame, drop_oldest=self.mode == "live")
        for q in self._listeners:
            _put_latest(q, frame, drop_oldest=True)

    # --- output -------------------------------------------------------------------------
    async def get(self, timeout: float | None = None) -> Frame:
        """The next processed frame (live: the newest not yet read). ``timeout`` does not run out while the
        thread's model loads for its first frame (it counts from the end of the load): a slow first frame
        is not a stalled stream."""
        wait = timeout
        while True:
            try:
                frame = await asyncio.wait_for(self._out.get(), wait)
                break
            except asyncio.TimeoutError:
                wait = self._excused(timeout)
                if wait <= 0:
                    raise
        if frame is None:
            raise StreamClosed(f"stream {self.id} is closed")
        if self.mode == "every":
            self._room.release()
        frame.stamp("sent")
        return frame

    def _excused(self, timeout: float) -> float:
        """How much longer ``get(timeout)`` may wait: all of ``timeout`` while the model loads, what is left of
        it after the load ended (the frame that waited for it is still being computed), else nothing."""
        loaded = self.engine.loaded_at(self.thread.name)
        return timeout if loaded == math.inf else loaded + timeout - time.time()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Frame:
        try:
            return await self.get()
        except StreamClosed:
            raise StopAsyncIteration from None

    def listen(self, size: int = 2) -> asyncio.Queue[Frame | None]:
        """An extra bounded, latest-wins queue of outputs (MJPEG viewers, WHEP viewers)."""
        q: asyncio.Queue[Frame | None] = asyncio.Queue(size)
        self._listeners.append(q)
        return q

    def unlisten(self, q: asyncio.Queue[Frame | None]) -> None:
        if q in self._listeners:
            self._listeners.remove(q)

    # --- control ------------------------------------------------------------------------
    def set_params(self, /, **params: Any) -> dict[str, Any]:
        """Change the thread's keyword parameters for frames submitted from now on (``BadRequest``, a
        ``ValueError``, naming the parameter if one is unknown or its value does not fit).

        ``self`` is positional-only, so a parameter named "self" is refused by name like any other.
        """
        self.params = self.thread.resolve_params(params, base=self.params)
        return self.params

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def idle(self) -> bool:
        """Nothing at the workers, nothing waiting to be sent, nothing unread."""
        return not self._in_flight and self._pending is None and self._out.empty()

    @property
    def status(self) -> str:
        """``ok``, ``closed``, ``loading`` while the thread's model loads for its first frame, or ``no workers``
        when the broker knows nobody serves this thread."""
        if self.closed:
            return "closed"
        if self.engine.loading(self.thread.name):
            return "loading"
        return "no workers" if self.workers == 0 else "ok"

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "thread": self.thread.name, "mode": self.mode, "params": self.params,
                "status": self.status, "workers": self.workers, "in_flight": self.in_flight,
                "age_s": round(time.time() - self.created, 1), **self.stats.snapshot()}

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.engine.forget(self)
        self.stats.close()
        for q in [self._out, *self._listeners]:
            _put_latest(q, None, drop_oldest=True)
        self._room.release()


def _put_latest(q: asyncio.Queue[Any], item: Any, drop_oldest: bool) -> None:
    """Put without blocking; a full queue loses its oldest item (bounded, latest wins)."""
    if drop_oldest:
        while q.full():
            q.get_nowait()
    q.put_nowait(item)
