"""Jobs: every frame of a file or image set through a thread on an engine's workers, at least once, in order.

Frames go as job tasks (never dropped, acknowledged only after the result is published), so a
worker killed mid-job has its frames redelivered to another; the receiving stream drops
duplicates by sequence number and emits in input order. Any engine runs jobs: the embedded one
of ``ooblex demo`` or a ``ClusterEngine``. The gateway runs them in the background
(``ooblex.gateway.jobs``: ``POST /api/v1/jobs``); ``ob.process`` is the one-call blocking form.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .engine import Engine
from .errors import Unavailable
from .media import Sink, Source, open_sink, open_source
from .run import feed_every
from .thread import TensorThread

Progress = Callable[[int, "int | None"], Any]


class NoWorkers(Unavailable, RuntimeError):
    """Nobody serves the thread a job needs."""


@dataclass
class JobResult:
    """What a finished job did: counts, per-frame JSON results, latency stats."""

    thread: str
    frames_in: int = 0
    frames_out: int = 0
    errors: int = 0
    duplicates: int = 0
    results: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "results"}


class Serialised(Source):
    """A source whose reads and close never overlap: a cancelled job's last read can still be running in
    an executor thread, and FFmpeg must not free a decoder that a thread is in. ``close`` waits for it."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.fps, self.frame_count, self.audio, self.live = source.fps, source.frame_count, source.audio, source.live
        self._lock = threading.Lock()
        self._closed = False

    def __iter__(self) -> Iterator[tuple[Any, float]]:
        for image, captured, _ in self.timed():
            yield image, captured

    def timed(self) -> Iterator[tuple[Any, float, float | None]]:
        frames = self.source.timed()
        while True:
            with self._lock:
                item = None if self._closed else next(frames, None)
            if item is None:
                return
            yield item

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.source.close()


async def run_job(engine: Engine, thread: str | TensorThread, source: Any, sink: Any = None, *,
                  params: dict[str, Any] | None = None, max_in_flight: int = 8, progress: Progress | None = None,
                  no_workers_s: float = 10.0, max_results: int = 100_000) -> JobResult:
    """Process all of ``source`` through ``thread`` on ``engine``'s workers into ``sink``.

    Raises ``NoWorkers`` if nobody has served the thread for ``no_workers_s`` while frames wait.
    """
    loop = asyncio.get_running_loop()
    src = Serialised(await loop.run_in_executor(None, open_source, source))
    try:
        snk: Sink = await loop.run_in_executor(None, open_sink, sink, src.fps, src.audio)
    except BaseException:
        src.close()
        raise
    stream = engine.open(thread, params=params, mode="every", max_in_flight=max_in_flight)
    out = JobResult(stream.thread.name)
    started = time.monotonic()
    feeder = asyncio.create_task(feed_every(stream, src, out))
    idle_since = time.monotonic()
    try:
        while not (feeder.done() and out.frames_out >= out.frames_in):
            try:
                frame = await stream.get(timeout=0.25)
            except asyncio.TimeoutError:
                if feeder.done() and feeder.exception() is not None:
                    raise feeder.exception() from None  # type: ignore[misc]
                if stream.workers == 0 and time.monotonic() - idle_since > no_workers_s:
                    raise NoWorkers(f"no workers serve {stream.thread.name!r} (waited {no_workers_s:.0f} s with "
                                    f"{out.frames_in - out.frames_out} frame(s) pending)") from None
                continue
            idle_since = time.monotonic()
            await loop.run_in_executor(None, snk.write, frame)
            out.frames_out += 1
            out.errors += frame.error is not None
            if frame.result is not None and len(out.results) < max_results:
                out.results.append((frame.seq, frame.result))
            if progress is not None:
                progress(out.frames_out, src.frame_count)
        if feeder.exception() is not None:  # the source failed after its last frame came back
            raise feeder.exception()  # type: ignore[misc]
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        out.duplicates = stream.stats.counters.get("duplicates", 0)
        out.stats = stream.stats.snapshot()
        await stream.close()
        await loop.run_in_executor(None, snk.close)
        await loop.run_in_executor(None, src.close)  # after a read still running in the executor
    out.seconds = round(time.monotonic() - started, 3)
    return out
