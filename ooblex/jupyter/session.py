"""The engine side of a live widget: an ``Engine`` and a live ``Stream`` on the shared loop thread.

Frames come in as JPEG bytes (browser webcam, over the widget's comm) or arrays (a kernel-side
source), go through the stream (latest-frame-wins, bounded in flight) and come out as JPEG
messages for the widget plus numpy ``Shot``s for ``snapshot()`` and ``record()``. Every method
here runs on the loop thread; the widget reaches it only through ``LoopThread.call``/``run``.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import jpeg
from ..engine import Engine, Stream, StreamClosed
from ..frame import Frame
from ..thread import TensorThread

log = logging.getLogger("ooblex.live")

#: Browser frames being decoded at once before new ones are refused (the browser bounds its side too).
MAX_DECODING = 4
#: Stream-seq -> input entries kept for matching outputs; older ones were dropped by latest-frame-wins.
MAX_PENDING_INPUTS = 16

Send = Callable[[dict[str, Any], list[bytes]], None]


@dataclass(slots=True)
class Shot:
    """One processed frame handed back to Python: input and output pixels (RGB uint8) and the result."""

    input: np.ndarray | None
    output: np.ndarray | None
    result: dict[str, Any] | None
    error: str | None
    seq: int
    latency_ms: float | None


class Recording:
    """Processed frames collected for ``seconds`` (at most ``max_frames``); fills in the background."""

    def __init__(self, seconds: float, max_frames: int = 300) -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        self.seconds = seconds
        self.max_frames = max_frames
        self.started = time.time()
        self.ends = self.started + seconds
        self.shots: list[Shot] = []
        self._lock = threading.Lock()

    def add(self, shot: Shot) -> None:
        with self._lock:
            if time.time() <= self.ends and len(self.shots) < self.max_frames:
                self.shots.append(shot)

    @property
    def done(self) -> bool:
        return time.time() > self.ends or len(self.shots) >= self.max_frames

    def wait(self) -> Recording:
        """Block until the recording time is over (only useful while frames flow without this cell)."""
        while not self.done:
            time.sleep(min(0.05, max(self.ends - time.time(), 0.001)))
        return self

    @property
    def frames(self) -> list[np.ndarray]:
        """Processed output images, oldest first."""
        return [s.output for s in self._copy() if s.output is not None]

    @property
    def inputs(self) -> list[np.ndarray]:
        return [s.input for s in self._copy() if s.input is not None]

    @property
    def results(self) -> list[dict[str, Any] | None]:
        return [s.result for s in self._copy()]

    def array(self) -> np.ndarray:
        """Output frames stacked as an (N, H, W, 3) array (all frames must share one size)."""
        frames = self.frames
        if not frames:
            raise ValueError("the recording has no frames (was the widget running?)")
        return np.stack(frames)

    def _copy(self) -> list[Shot]:
        with self._lock:
            return list(self.shots)

    def __len__(self) -> int:
        return len(self.shots)

    def __repr__(self) -> str:
        state = "done" if self.done else f"{max(self.ends - time.time(), 0):.1f}s left"
        return f"<Recording {len(self.shots)} frames over {self.seconds}s, {state}>"


class LiveSession:
    """Owns the engine and stream of one live widget and the pump that turns outputs into messages."""

    def __init__(self, send: Send, *, max_in_flight: int = 2, max_latency_ms: float = 500.0,
                 quality: int = 80) -> None:
        self.send = send
        self.max_in_flight = max_in_flight
        self.max_latency_ms = max_latency_ms
        self.quality = quality
        self.engine: Engine | None = None
        self.stream: Stream | None = None
        self.latest: Shot | None = None
        self.recordings: list[Recording] = []
        self.rtt: deque[float] = deque(maxlen=256)
        self.counters = {"bad_messages": 0, "refused": 0}
        self._codec = cf.ThreadPoolExecutor(2, thread_name_prefix="ooblex-live-codec")
        self._inputs: dict[int, tuple[int | None, np.ndarray, bool]] = {}
        self._decoding = 0
        self._pump: asyncio.Task[None] | None = None
        self.got_shot = threading.Event()

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
        self._codec.shutdown(wait=False, cancel_futures=True)

    def set_params(self, params: dict[str, Any]) -> None:
        if self.stream is not None:
            self.stream.set_params(**params)

    # --- input -----------------------------------------------------------------------------
    def submit_jpeg(self, data: bytes, browser_seq: int | None, arrived: float) -> None:
        """A JPEG from the browser (``arrived``: when the comm delivered it): decoded off the loop,
        then into the stream (never blocks)."""
        if self.stream is None or self._decoding >= MAX_DECODING:
            self.counters["refused"] += 1
            self.send({"type": "ack", "ack": browser_seq}, [])
            return
        self._decoding += 1
        asyncio.ensure_future(self._submit_jpeg(data, browser_seq, arrived))

    async def _submit_jpeg(self, data: bytes, browser_seq: int | None, arrived: float) -> None:
        try:
            image = await asyncio.get_running_loop().run_in_executor(self._codec, jpeg.decode, data)
        except (jpeg.ImageDecodeError, ValueError) as exc:
            self.bad_message(f"frame {browser_seq} is not a decodable image ({exc})")
            self.send({"type": "ack", "ack": browser_seq}, [])
            return
        finally:
            self._decoding -= 1
        await self._submit(image, arrived, browser_seq, send_input=False)

    def submit_image(self, image: np.ndarray, captured: float) -> None:
        """A frame from a kernel-side source (file, URL, camera on the kernel's machine)."""
        if self.stream is not None:
            asyncio.ensure_future(self._submit(image, captured, None, send_input=True))

    async def _submit(self, image: np.ndarray, captured: float, browser_seq: int | None, send_input: bool) -> None:
        stream = self.stream
        if stream is None or stream.closed:
            return
        frame = stream.make_frame(image, captured)
        self._inputs[frame.seq] = (browser_seq, image, send_input)
        while len(self._inputs) > MAX_PENDING_INPUTS:
            del self._inputs[min(self._inputs)]
        with contextlib.suppress(StreamClosed):
            await stream.submit(frame)

    def bad_message(self, why: str) -> None:
        self.counters["bad_messages"] += 1
        log.warning("ooblex live widget: ignoring a bad message: %s", why)

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
            browser_seq, image, send_input = entry if entry is not None else (None, None, False)
            try:
                buffers = await loop.run_in_executor(self._codec, self._encode, frame, image, send_input)
            except Exception as exc:  # noqa: BLE001 - an unencodable output must not stop the pump
                log.warning("ooblex live widget: cannot encode output of frame %d: %s", frame.seq, exc)
                self.send({"type": "ack", "ack": browser_seq}, [])
                continue
            self._deliver(frame, image, browser_seq, buffers, send_input)

    def _encode(self, frame: Frame, image: np.ndarray | None, send_input: bool) -> list[bytes]:
        out = [jpeg.encode(frame.image, self.quality)] if frame.image is not None else []
        if send_input and image is not None:
            out.insert(0, jpeg.encode(image, self.quality))
        return out

    def _deliver(self, frame: Frame, image: np.ndarray | None, browser_seq: int | None, buffers: list[bytes],
                 send_input: bool) -> None:
        total = frame.durations().get("total")
        shot = Shot(image, frame.image, frame.result, frame.error, frame.seq, total)
        self.latest = shot
        self.got_shot.set()
        for rec in list(self.recordings):
            rec.add(shot)
            if rec.done:
                self.recordings.remove(rec)
        content = {"type": "frame", "ack": browser_seq, "seq": frame.seq, "error": frame.error,
                   "result": _jsonable(frame.result), "input": send_input and image is not None,
                   "latency_ms": None if total is None else round(total, 2),
                   "kernel_ms": round((time.time() - frame.stamps.get("captured", time.time())) * 1e3, 2)}
        self.send(content, buffers)

    # --- stats -----------------------------------------------------------------------------
    def add_rtt(self, samples: list[float]) -> None:
        self.rtt.extend(float(s) for s in samples[-64:] if isinstance(s, (int, float)) and 0 <= s < 60_000)

    def describe(self) -> dict[str, Any]:
        if self.stream is None:
            return {}
        d = self.stream.describe()
        if self.rtt:
            p = np.percentile(np.fromiter(self.rtt, float), [50, 95])
            d["round_trip_ms"] = {"p50": round(float(p[0]), 2), "p95": round(float(p[1]), 2), "n": len(self.rtt)}
        return {**d, **self.counters}


def _jsonable(result: dict[str, Any] | None) -> Any:
    """Results travel as JSON to the browser; anything json cannot encode is shown as its repr."""
    if result is None:
        return None
    try:
        json.dumps(result)
        return result
    except (TypeError, ValueError):
        return {k: repr(v) for k, v in result.items()}
