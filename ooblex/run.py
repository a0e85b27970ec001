"""``ob.run``: push a source through a tensor thread into a sink, in this process.

Files run in every-frame mode (nothing lost, output in order); cameras and URLs run live
(latest-frame-wins). Reading and writing happen on helper threads, user code on the
engine's pool, so the event loop only schedules.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine, Stream
from .frame import Frame
from .media import Sink, Source, open_sink, open_source
from .media.sources import LatestFrameReader
from .stats import StreamStats
from .thread import as_thread


@dataclass
class RunHandle:
    """The outcome of (or a window into) a run: stats, counts and the JSON results per frame."""

    mode: str = "every"
    stats: StreamStats = field(default_factory=StreamStats)
    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    frames_in: int = 0
    frames_out: int = 0
    error: BaseException | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def stop(self) -> None:
        """Ask a background run to finish after the current frame."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> RunHandle:
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def summary(self) -> dict[str, Any]:
        return {"frames_in": self.frames_in, "frames_out": self.frames_out, **self.stats.snapshot()}


def run(thread: Any, source: Any, sink: Any = None, *, params: dict[str, Any] | None = None,
        mode: str | None = None, max_latency_ms: float = 500.0, max_in_flight: int = 2,
        max_results: int = 100_000, progress: bool = False, background: bool = False) -> RunHandle:
    """Process ``source`` with ``thread`` into ``sink``; see the module docstring.

    ``source``: video path, webcam index, ``rtsp://``/``http://`` URL, image or folder, list of arrays.
    ``sink``: ``None`` (stats only), a video path, ``"mjpeg://host:port"``, or a callable taking a Frame.
    Returns when the source ends (or, with ``background=True``, at once: ``handle.stop()``/``wait()``).
    """
    t = as_thread(thread)
    src = open_source(source)
    try:
        snk = open_sink(sink, src.fps, audio=src.audio)
    except BaseException:
        src.close()
        raise
    handle = RunHandle(mode=mode or ("live" if src.live else "every"))
    opts = dict(params=params, mode=handle.mode, max_latency_ms=max_latency_ms, max_in_flight=max_in_flight)

    def target() -> None:
        try:
            asyncio.run(_run(t, src, snk, opts, handle, max_results, progress))
        except BaseException as exc:  # noqa: BLE001 - surfaced by wait() or re-raised below
            handle.error = exc

    handle._thread = threading.Thread(target=target, name="ooblex-run", daemon=True)
    handle._thread.start()
    if background:
        return handle
    try:
        return handle.wait()
    except KeyboardInterrupt:
        handle.stop()
        return handle.wait()


async def _run(thread: Any, src: Source, snk: Sink, opts: dict[str, Any], handle: RunHandle,
               max_results: int, progress: bool) -> None:
    loop = asyncio.get_running_loop()
    bar = _progress(src) if progress else None
    async with Engine(threads=[thread]) as engine:
        stream = engine.open(thread, **opts)
        handle.stats = stream.stats
        reader = LatestFrameReader(src) if src.live else None
        feeder = asyncio.create_task(_feed(stream, reader or src, handle))
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(stream.get(), 0.1)
                except asyncio.TimeoutError:
                    if feeder.done():
                        feeder.result()  # re-raises a source error
                        if stream.idle and handle.frames_out >= handle.frames_in or stream.mode == "live" \
                                and stream.idle:
                            break
                    continue
                await loop.run_in_executor(None, _write, snk, frame, handle, max_results)
                if bar is not None:
                    bar.update(1)
        finally:
            feeder.cancel()
            if bar is not None:
                bar.close()
            await loop.run_in_executor(None, snk.close)
            if reader is not None:
                reader.close()  # the reader thread closes the source when it stops
            else:
                src.close()


async def _feed(stream: Stream, src: Source | LatestFrameReader, handle: RunHandle) -> None:
    if not isinstance(src, LatestFrameReader):
        await feed_every(stream, src, handle, handle._stop)
        return
    loop = asyncio.get_running_loop()
    while not handle._stop.is_set():
        item = await loop.run_in_executor(None, src.get)
        if item is None:
            if src.done:
                return
            continue
        handle.frames_in += 1
        await stream.submit(item[0], captured=item[1])


async def feed_every(stream: Stream, src: Source, counts: Any, stop: threading.Event | None = None) -> None:
    """Submit every frame of a finite source, reading it off the loop; ``counts.frames_in`` counts them.

    In every-frame mode ``submit`` waits for room, so this is also the backpressure on reading.
    Each frame carries its media time (``Frame.pts``), so a file sink keeps the input's timing.
    """
    loop = asyncio.get_running_loop()
    frames = src.timed()
    while stop is None or not stop.is_set():
        item = await loop.run_in_executor(None, next, frames, None)
        if item is None:
            return
        counts.frames_in += 1
        frame = stream.make_frame(item[0], captured=item[1])
        frame.pts = item[2]
        await stream.submit(frame)


def _write(snk: Sink, frame: Frame, handle: RunHandle, max_results: int) -> None:
    snk.write(frame)
    handle.frames_out += 1
    if frame.result is not None and len(handle.results) < max_results:
        handle.results.append((frame.seq, frame.result))


def _progress(src: Source) -> Any:
    from tqdm import tqdm

    return tqdm(total=src.frame_count, unit="frame", disable=src.live)
