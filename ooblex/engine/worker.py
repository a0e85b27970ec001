"""A worker: takes tasks for the tensor threads it hosts from a broker, runs them, replies.

Embedded in the demo process (memory broker) or run as ``ooblex worker`` on any machine
(redis/rabbitmq). Each thread gets its own consumer, a batcher (``batch_size`` frames within
``max_wait_ms``, across streams) and at most ``concurrency`` calls in flight, so nothing
it holds is unbounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

from ..broker.base import Broker, Delivery
from ..thread import TensorThread
from .runner import Runner

log = logging.getLogger("ooblex.worker")


class Worker:
    """Serves ``threads`` from ``broker`` until ``stop()``."""

    def __init__(self, broker: Broker, threads: Iterable[TensorThread]) -> None:
        self.broker = broker
        self.runners = {t.name: Runner(t) for t in threads}
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.skipped = 0
        self.errors = 0

    async def start(self) -> None:
        for name, runner in self.runners.items():
            runner.start()
            await runner.setup()
            self._tasks.append(asyncio.create_task(self._serve(runner), name=f"worker:{name}"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for r in self.runners.values():
            r.close()

    def add(self, thread: TensorThread) -> None:
        """Serve another thread from now on (used by hot deploys)."""
        runner = Runner(thread)
        runner.start()
        self.runners[thread.name] = runner
        self._tasks.append(asyncio.create_task(self._serve(runner), name=f"worker:{thread.name}"))

    async def _serve(self, runner: Runner) -> None:
        thread = runner.thread
        inbox: asyncio.Queue[Delivery] = asyncio.Queue(thread.batch_size)
        slots = asyncio.Semaphore(thread.concurrency)
        running: set[asyncio.Task[None]] = set()
        feeder = asyncio.create_task(self._feed(thread, inbox))
        try:
            while True:
                batch = await _collect(inbox, thread.batch_size, thread.max_wait_ms / 1e3)
                await slots.acquire()
                batch = await self._drop_expired(batch)
                if not batch:
                    slots.release()
                    continue
                task = asyncio.create_task(self._run(runner, batch, slots))
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            feeder.cancel()
            for t in list(running):
                t.cancel()

    async def _feed(self, thread: TensorThread, inbox: asyncio.Queue[Delivery]) -> None:
        async for delivery in self.broker.tasks([thread.name]):
            await inbox.put(delivery)

    async def _drop_expired(self, batch: list[Delivery]) -> list[Delivery]:
        """Skip tasks whose deadline passed while they waited: tell the sender at once, run the rest."""
        keep = []
        for d in batch:
            if d.frame.expired():
                d.frame.skipped = True
                d.frame.image = None  # nothing to show; spare the reply path the pixels
                self.skipped += 1
                await self.broker.reply(d.frame)
                d.ack()
            else:
                keep.append(d)
        return keep

    async def _run(self, runner: Runner, batch: list[Delivery], slots: asyncio.Semaphore) -> None:
        try:
            frames = await runner.process([d.frame for d in batch])
            for f, d in zip(frames, batch, strict=False):
                self.processed += 1
                self.errors += f.error is not None
                await self.broker.reply(f)
                d.ack()
        except Exception:  # noqa: BLE001 - a broker hiccup must not kill the serving loop
            log.exception("%s: could not deliver a batch; returning it to the broker", runner.thread.name)
            for d in batch:
                d.nack()
        finally:
            slots.release()


async def _collect(inbox: asyncio.Queue[Delivery], size: int, wait_s: float) -> list[Delivery]:
    """The next batch: waits for one delivery, then up to ``wait_s`` for the batch to fill."""
    batch = [await inbox.get()]
    deadline = time.monotonic() + wait_s
    while len(batch) < size:
        if not inbox.empty():
            batch.append(inbox.get_nowait())
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(inbox.get(), remaining))
        except asyncio.TimeoutError:
            break
    return batch
