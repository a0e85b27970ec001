"""Jobs: every frame of a file or image set through a deployed thread, at least once, in order.

Frames go as job tasks (never dropped, acknowledged only after the result is published), so a
worker killed mid-job has its frames redelivered to another; the gateway-side stream drops
duplicates by sequence number and emits in input order. ``start_job`` is what a gateway wraps
as ``POST /api/v1/jobs``; ``ob.process`` is the one-call blocking form.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..broker.base import redact
from ..engine import Engine
from ..errors import NotFound, Unavailable
from ..media import Sink, open_sink, open_source
from ..run import feed_every
from ..secret import ENV
from ..thread import TensorThread

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


async def run_job(engine: Engine, thread: str | TensorThread, source: Any, sink: Any = None, *,
                  params: dict[str, Any] | None = None, max_in_flight: int = 8, progress: Progress | None = None,
                  no_workers_s: float = 10.0, max_results: int = 100_000) -> JobResult:
    """Process all of ``source`` through ``thread`` on ``engine``'s workers into ``sink``.

    Raises ``NoWorkers`` if nobody has served the thread for ``no_workers_s`` while frames wait.
    """
    loop = asyncio.get_running_loop()
    src = await loop.run_in_executor(None, open_source, source)
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
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
        out.duplicates = stream.stats.counters.get("duplicates", 0)
        out.stats = stream.stats.snapshot()
        await stream.close()
        await loop.run_in_executor(None, snk.close)
        src.close()
    out.seconds = round(time.monotonic() - started, 3)
    return out


@dataclass
class Job:
    """A job running in the background of a gateway: poll ``describe()``, ``cancel()`` it."""

    id: str
    thread: str
    total: int | None = None
    done: int = 0
    state: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    result: JobResult | None = None
    task: asyncio.Task[Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "thread": self.thread, "state": self.state, "done": self.done, "total": self.total,
                "error": self.error, "result": self.result.summary() if self.result else None}

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def start_job(engine: Engine, thread: str, source: Any, sink: Any = None, **options: Any) -> Job:
    """Start ``run_job`` as a task on the running loop; returns at once with an unguessable job id.

    Raises ``UnknownThread``/``ValueError`` synchronously for a bad thread name or parameters.
    """
    engine.resolve(thread)
    job = Job(secrets.token_urlsafe(12), thread)

    def progress(done: int, total: int | None) -> None:
        job.done, job.total = done, total

    async def go() -> None:
        try:
            job.result = await run_job(engine, thread, source, sink, progress=progress, **options)
            job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through describe()
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"

    job.task = asyncio.create_task(go(), name=f"job:{job.id}")
    return job


def process(thread: str | Any, source: Any, cluster: str | None = None, *, store: str | None = None,
            sink: Any = None, params: dict[str, Any] | None = None, max_in_flight: int = 8,
            progress: bool | Progress = True, no_workers_s: float = 10.0, secret: str | None = None) -> JobResult:
    """Process every frame of ``source`` (video file, image, folder, list of arrays) on the cluster.

    ``thread``: a deployed name (``"blur"`` or ``"blur@3"``) or a tensor thread, which is deployed
    first unless the cluster already serves that exact code. Blocks until done (safe in notebooks).
    ``secret``: the cluster secret (default ``$OOBLEX_SECRET``), to verify what the registry says.
    """
    from ..thread import as_thread
    from .deploy import code_digest, deploy, deployment
    from .engine import ClusterEngine

    if not isinstance(thread, str):
        t = as_thread(thread)
        try:
            current = deployment(t.name, cluster, store=store, secret=secret)
            same = current.manifest.get("code") == code_digest(t)
        except LookupError:
            same = False
        if not same:
            deploy(t, cluster, store=store, secret=secret)
        thread = t.name
    box: dict[str, Any] = {}

    async def main() -> None:
        bar = _bar() if progress is True else None
        cb = (lambda d, total: bar(d, total)) if bar else (progress if callable(progress) else None)
        async with ClusterEngine(cluster, store=store, secret=secret) as engine:
            await _wait_thread(engine, thread, no_workers_s)
            box["r"] = await run_job(engine, thread, source, sink, params=params, max_in_flight=max_in_flight,
                                     progress=cb, no_workers_s=no_workers_s)
        if bar:
            bar(None, None)

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = exc

    t_ = threading.Thread(target=target, name="ooblex-process")
    t_.start()
    t_.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


async def _wait_thread(engine: Any, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while name not in engine.threads:
        if time.monotonic() > deadline:
            unverifiable = "" if engine.registry.secret else f" (or cannot be verified: {ENV} is not set)"
            raise NotFound(f"{name!r} is not deployed on {redact(engine.config.broker)}{unverifiable}")
        await asyncio.sleep(0.1)
        await engine.sync()


def _bar() -> Callable[[int | None, int | None], None]:
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(done: int | None, total: int | None) -> None:
        if done is None:
            if "bar" in state:
                state["bar"].close()
            return
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="frame")
        state["bar"].n = done
        state["bar"].refresh()

    return update
