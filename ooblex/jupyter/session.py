"""The engine side of a live widget, on the shared loop thread.

``LiveSession``: one lane (one tensor thread; compare mode has several): an ``Engine`` and a live
``Stream`` (latest-frame-wins, bounded in flight), and a pump that turns outputs into messages for
the browser plus ``Shot``s for ``snapshot()`` and ``record()``. ``Intake``: browser frames decoded
once, bounded, then handed to every lane. Every method runs on the loop thread; the widget reaches
them only through ``LoopThread.call``/``run``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np

from ..engine import Engine, Stream, StreamClosed
from ..frame import Frame, result_json
from ..thread import TensorThread
from . import frames
from .channel import Peer
from .overlay import overlay
from .recording import Recording, Shot

log = logging.getLogger("ooblex.live")

#: Browser frames being decoded at once before new ones are refused (the browser bounds its side too).
MAX_DECODING = 4
#: Stream-seq -> input entries kept for matching outputs; older ones were dropped by latest-frame-wins.
MAX_PENDING_INPUTS = 16
#: A result whose JSON is longer than this reaches the browser as a short note (the overlay still does).
MAX_RESULT_CHARS = 32_768


class LiveSession:
    """One lane: owns the engine and stream of one thread and the pump that sends its outputs."""

    def __init__(self, lane: int, broadcast: Peer, pool: cf.Executor, *, max_in_flight: int = 1,
                 max_latency_ms: float = 500.0, codec: str = "jpeg", quality: int = 80) -> None:
        self.lane = lane
        self.broadcast = broadcast
        self.pool = pool
        self.max_in_flight = max_in_flight
        self.max_latency_ms = max_latency_ms
        self.codec = codec
        self.quality = quality
        self.engine: Engine | None = None
        self.stream: Stream | None = None
        self.latest: Shot | None = None
        self.recordings: list[Recording] = []
        self.notes: set[str] = set()
        self.rtt: deque[float] = deque(maxlen=256)
        self.delivered = 0
        self.arrived = threading.Condition()
        self._inputs: dict[int, tuple[int | None, np.ndarray, bool, Peer | None]] = {}
        self._pump: asyncio.Task[None] | None = None

    # --- lifecycle (coroutines: run with LoopThread.run) -----------------------------------
    async def start(self, thread: TensorThread, params: dict[str, Any]) -> None:
        """Open a fresh engine and stream for ``thread``; replaces (swaps) any running one."""
        engine = Engine(threads=[thread])
        try:
            await engine.start()  # runs the thread's setup(): a model that fails to load raises here
            stream = engine.open(thread.name, params=params, mode="live", max_in_flight=self.max_in_flight,
                                 max_latency_ms=self.max_latency_ms)
        except BaseException:
            await engine.close()
            raise
        old_engine, old_pump = self.engine, self._pump
        self.engine, self.stream = engine, stream
        self._inputs.clear()
        self._pump = asyncio.create_task(self._run_pump(stream), name=f"ooblex-live:{thread.name}")
        if old_pump is not None:
            old_pump.cancel()
        if old_engine is not None:
            await old_engine.close()

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        if self.engine is not None:
            await self.engine.close()
        self.engine = self.stream = None

    def set_params(self, params: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.set_params(**params)

    # --- input -----------------------------------------------------------------------------
    async def submit(self, image: np.ndarray, captured: float, browser_seq: int | None = None,
                     origin: Peer | None = None) -> None:
        """A decoded frame (from the browser: ``browser_seq`` and the ``origin`` to answer; else a
        kernel-side source, whose input is shown too). Never blocks: the live stream keeps the newest."""
        stream = self.stream
        if stream is None or stream.closed:
            if origin is not None:
                origin.send({"type": "ack", "ack": browser_seq, "lane": self.lane}, [])
            return
        frame = stream.make_frame(image, captured)
        self._inputs[frame.seq] = (browser_seq, image, browser_seq is None, origin)
        while len(self._inputs) > MAX_PENDING_INPUTS:
            del self._inputs[min(self._inputs)]
        with contextlib.suppress(StreamClosed):
            await stream.submit(frame)

    # --- output ----------------------------------------------------------------------------
    async def _run_pump(self, stream: Stream) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                frame = await stream.get()
            except StreamClosed:
                return
            entry = self._inputs.pop(frame.seq, None)
            for seq in [s for s in self._inputs if s < frame.seq]:
                del self._inputs[seq]
            browser_seq, image, send_input, origin = entry if entry is not None else (None, None, False, None)
            try:
                images, buffers = await loop.run_in_executor(self.pool, self._encode, frame, image, send_input)
            except Exception as exc:  # noqa: BLE001 - an unencodable output must not stop the pump
                log.warning("ooblex live widget: cannot encode output of frame %d: %s", frame.seq, exc)
                (origin or self.broadcast).send({"type": "ack", "ack": browser_seq, "lane": self.lane}, [])
                continue
            self._deliver(frame, image, browser_seq, images, buffers, origin)

    def _encode(self, frame: Frame, image: np.ndarray | None,
                send_input: bool) -> tuple[list[dict[str, Any]], list[bytes]]:
        """The images for the browser (the input only for kernel-side sources) and their descriptions."""
        pairs = [("input", image)] if send_input and image is not None else []
        pairs += [("output", frame.image)] if frame.image is not None else []
        metas, buffers = [], []
        for role, img in pairs:
            meta, data = frames.encode(img, self.codec, self.quality)
            metas.append({"role": role, **meta})
            buffers.append(data)
        return metas, buffers

    def _deliver(self, frame: Frame, image: np.ndarray | None, browser_seq: int | None,
                 images: list[dict[str, Any]], buffers: list[bytes], origin: Peer | None) -> None:
        total = frame.durations().get("total")
        shot = Shot(image, frame.image, frame.result, frame.error, frame.seq, total, frame.stamps.get("captured"))
        self.latest = shot
        for rec in list(self.recordings):
            rec.add(shot)
            if rec.done:
                self.recordings.remove(rec)
        with self.arrived:
            self.delivered += 1
            self.arrived.notify_all()
        content = {"type": "frame", "lane": self.lane, "ack": browser_seq, "seq": frame.seq, "error": frame.error,
                   "result": _jsonable(frame.result), "overlay": overlay(frame.result),
                   "images": images,
                   "latency_ms": None if total is None else round(total, 2),
                   "kernel_ms": round((time.time() - frame.stamps.get("captured", time.time())) * 1e3, 2)}
        (origin or self.broadcast).send(content, buffers)
        if frame.note and frame.note not in self.notes:  # once per lane: "float pixels scaled to uint8"
            self.notes.add(frame.note)
            self.broadcast.send({"type": "note", "text": frame.note}, [])

    def wait_frame(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Block (any thread but the loop's) until ``ready()``, checked after each delivered frame."""
        with self.arrived:
            return self.arrived.wait_for(ready, timeout)

    # --- stats -----------------------------------------------------------------------------
    def add_rtt(self, samples: list[Any]) -> None:
        self.rtt.extend(float(s) for s in samples[-64:] if isinstance(s, (int, float)) and 0 <= s < 60_000)

    def describe(self) -> dict[str, Any]:
        if self.stream is None:
            return {}
        d = self.stream.describe()
        if self.rtt:
            p = np.percentile(np.fromiter(self.rtt, float), [50, 95])
            d["round_trip_ms"] = {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "n": len(self.rtt)}
        return d


class Intake:
    """Browser frames: decoded once off the loop (at most ``MAX_DECODING`` at a time), then into every lane."""

    def __init__(self, pool: cf.Executor, lanes: Callable[[], list[LiveSession]],
                 counters: dict[str, int], on_bad: Callable[[str], None]) -> None:
        self.pool = pool
        self.lanes = lanes
        self.counters = counters
        self.on_bad = on_bad
        self.decoding = 0

    def submit(self, msg: frames.Incoming, arrived: float, origin: Peer) -> None:
        if self.decoding >= MAX_DECODING:
            self.counters["refused"] += 1
            origin.send({"type": "ack", "ack": msg.seq, "lane": None}, [])
            return
        self.decoding += 1
        asyncio.ensure_future(self._decode(msg, arrived, origin))

    async def _decode(self, msg: frames.Incoming, arrived: float, origin: Peer) -> None:
        try:
            image = await asyncio.get_running_loop().run_in_executor(self.pool, frames.decode, msg)
        except frames.BadMessage as exc:
            self.on_bad(str(exc))
            origin.send({"type": "ack", "ack": msg.seq, "lane": None}, [])
            return
        finally:
            self.decoding -= 1
        for lane in self.lanes():
            asyncio.ensure_future(lane.submit(image, arrived, msg.seq, origin))


def _jsonable(result: dict[str, Any] | None) -> Any:
    """Results travel as JSON to the browser; anything json cannot encode is shown as its repr."""
    if result is None:
        return None
    text = result_json(result, lenient=True)
    if len(text) > MAX_RESULT_CHARS:
        return {"note": f"result of {len(text)} characters not shown"}
    return json.loads(text)
