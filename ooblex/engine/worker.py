"""A worker: takes tasks for the tensor threads it hosts from a broker, runs them, replies.

Embedded in the demo process (memory broker) or run as ``ooblex worker`` on any machine
(redis/rabbitmq). Each served queue gets its own consumer, a batcher (up to ``batch_size`` frames,
across streams, formed from what is waiting: see ``batching``) and at most ``concurrency`` calls
in flight, so nothing it holds is unbounded. One runner (one loaded model) may serve several queue names, e.g. a
deployed thread's ``name`` and ``name@3``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..broker.base import Broker, Delivery
from ..frame import Frame
from ..stats import StreamStats
from ..supervision import cancel, supervise
from ..thread import TensorThread
from ..wire import WireError
from .batching import Batcher
from .runner import Runner

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("ooblex.worker")


@dataclass
class _Serving:
    """One queue being served: its consumer, its batcher and the calls in flight.

    ``slots`` bounds the calls in flight; it lives here, not in the batch loop, so that a restarted
    loop still counts the calls its predecessor started.
    """

    runner: Runner
    batcher: Batcher
    slots: asyncio.Semaphore
    loop: asyncio.Task[None] | None = None
    feeder: asyncio.Task[None] | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set)
    stats: StreamStats = field(default_factory=StreamStats)


class Worker:
    """Serves ``threads`` from ``broker`` until ``stop()``; with ``metrics``, each served queue reports there."""

    def __init__(self, broker: Broker, threads: Iterable[TensorThread], *, lazy: bool = False,
                 metrics: Metrics | None = None) -> None:
        """``lazy``: a thread's ``setup()`` (its model load) waits for its first frame instead of ``start()``,
        so serving starts at once and only the frameworks of threads in use are ever loaded."""
        self.broker = broker
        self.lazy = lazy
        self.metrics = metrics
        if metrics is not None:
            metrics.watch_worker(self.in_flight)
        broker.defer_jpeg = True  # pixels are decoded in the compute threads (or on the GPU), not on the loop
        self.runners: dict[str, Runner] = {t.name: Runner(t) for t in threads}
        self._serving: dict[str, _Serving] = {}
        self._started = False
        self.processed = 0
        self.skipped = 0
        self.errors = 0

    async def start(self) -> None:
        self._started = True
        for queue, runner in self.runners.items():
            runner.start()
            if not self.lazy:
                await runner.ready(strict=True)  # a model that cannot load stops the start
            self._serve(queue, runner)

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop serving. With ``drain_s``, calls in flight may finish and reply first (up to that long in all:
        the queues drain together, so a worker serving many threads still stops within ``drain_s``)."""
        await asyncio.gather(*(self.remove(queue, drain_s) for queue in list(self._serving)))
        for r in set(self.runners.values()):
            r.close()
        self.runners.clear()

    def add(self, thread: TensorThread, queue: str | None = None) -> None:
        """Serve ``thread`` on ``queue`` (default: its name) from now on, without a restart.

        The same thread object added under several queues shares one runner (one loaded model).
        """
        queue = queue or thread.name
        runner = next((r for r in self.runners.values() if r.thread is thread), None)
        if runner is None:
            runner = Runner(thread)
            if self._started:
                runner.start()
        self.runners[queue] = runner
        if self._started:
            self._serve(queue, runner)

    async def remove(self, queue: str, drain_s: float = 0.0) -> None:
        """Stop taking tasks from ``queue``; in-flight calls get ``drain_s`` to finish, the rest go back."""
        s = self._serving.pop(queue, None)
        runner = self.runners.pop(queue, None)
        if s is not None:
            await cancel(s.feeder, s.loop)
            if s.running and drain_s > 0:
                await asyncio.wait(s.running, timeout=drain_s)
            for t in list(s.running):
                t.cancel()
            await asyncio.gather(*s.running, return_exceptions=True)
            for d in s.batcher.drain():
                d.nack()
        if runner is not None and runner not in self.runners.values():
            runner.close()

    def stats(self) -> dict[str, dict]:
        """Per served queue: fps, compute/queue latency percentiles over recent frames, frames and batches run."""
        return {q: s.stats.snapshot() for q, s in self._serving.items()}

    def in_flight(self) -> list[tuple[str, int]]:
        """(thread name, calls in flight) per served queue. Safe from another thread (a metrics scrape)."""
        return [(s.runner.thread.name, len(s.running)) for s in list(self._serving.values())]

    @property
    def busy(self) -> int:
        """Calls in flight across all served queues."""
        return sum(len(s.running) for s in self._serving.values())

    def _serve(self, queue: str, runner: Runner) -> None:
        thread = runner.thread
        s = _Serving(runner, Batcher(thread.batch_size, thread.max_wait_ms / 1e3),
                     asyncio.Semaphore(thread.concurrency),
                     stats=StreamStats(sink=self.metrics.worker(thread.name) if self.metrics else None))
        s.feeder = supervise(lambda: self._feed(queue, s), f"worker:{queue}:feed", logger=log)
        s.loop = supervise(lambda: self._batches(s), f"worker:{queue}", logger=log)
        self._serving[queue] = s

    async def _batches(self, s: _Serving) -> None:
        """Wait for a frame, then for a free call slot (frames that arrive meanwhile join the batch), then run."""
        thread = s.runner.thread
        while True:
            first = await s.batcher.first()
            try:
                await s.slots.acquire()
            except asyncio.CancelledError:
                first[1].nack()
                raise
            try:
                await s.runner.ready()  # at once, unless this is a lazy worker's first batch of the thread
                batch = await self._drop_expired(s, await s.batcher.fill(first))
            except BaseException:
                s.slots.release()
                raise
            if not batch:
                s.slots.release()
                continue
            s.stats.count("batches")
            task = asyncio.create_task(self._run(s, batch), name=f"worker:{thread.name}:call")
            s.running.add(task)
            task.add_done_callback(s.running.discard)

    async def _feed(self, queue: str, s: _Serving) -> None:
        thread = s.runner.thread
        async for delivery in self.broker.tasks([queue], prefetch=thread.batch_size * thread.concurrency):
            try:
                await s.batcher.put(delivery)
            except asyncio.CancelledError:
                delivery.nack()
                raise

    async def _drop_expired(self, s: _Serving, batch: list[Delivery]) -> list[Delivery]:
        """Skip tasks whose deadline passed while they waited: tell the sender at once, run the rest.

        A task that is not a frame at all (poisoned) is dropped here, counted in ``broker.poisoned``.
        """
        keep: list[Delivery] = []
        for i, d in enumerate(batch):
            try:
                expired = d.frame.expired()
            except Exception as exc:  # noqa: BLE001 - not a frame: drop it, serve the others
                self.broker.poisoned.report(f"task is not a frame ({type(d.frame).__name__}: {exc})")
                d.ack()
                continue
            if not expired:
                keep.append(d)
                continue
            d.frame.skipped = True
            d.frame.image = d.frame.jpeg = None  # nothing to show; spare the reply path the pixels
            self.skipped += 1
            s.stats.count("skipped")
            try:
                await self._reply(d.frame)
            except asyncio.CancelledError:
                for rest in [*keep, *batch[i:]]:
                    rest.nack()
                raise
            except Exception as exc:  # noqa: BLE001 - the sender presumes the frame lost in time
                log.warning("could not report skipped frame %s#%s: %s", d.frame.stream_id, d.frame.seq, exc)
            d.ack()
        return keep

    async def _run(self, s: _Serving, batch: list[Delivery]) -> None:
        acked = 0
        try:
            frames = await s.runner.process([d.frame for d in batch])
            for f, d in zip(frames, batch, strict=True):
                self.processed += 1
                self.errors += f.error is not None
                await self._reply(f)
                d.ack()
                acked += 1
                s.stats.record(f)
                if f.error is not None:
                    s.stats.count("errors")
        except asyncio.CancelledError:
            for d in batch[acked:]:
                d.nack()
            raise
        except Exception:  # noqa: BLE001 - a broker hiccup must not kill the serving loop
            log.exception("%s: could not deliver a batch; returning it to the broker", s.runner.thread.name)
            for d in batch[acked:]:
                d.nack()
        finally:
            s.slots.release()

    async def _reply(self, f: Frame) -> None:
        """Send ``f`` back; a result the broker cannot carry (not JSON) goes back as the frame's error instead,
        so the sender learns why and the task is not retried forever."""
        try:
            await self.broker.reply(f)
        except WireError as exc:
            f.result, f.error = None, f"{type(exc).__name__}: {exc}"
            await self.broker.reply(f)

