"""The embedded broker: bounded asyncio queues in one process, frames passed by reference.

This is what ``ooblex demo``, ``ob.run`` and ``ob.live`` use: no servers, no serialization,
so the engine's own overhead is all that is measured.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from ..frame import Frame
from .base import Broker, Delivery

TASK_QUEUE_SIZE = 64
RESULT_QUEUE_SIZE = 256


class MemoryBroker(Broker):
    url = "memory://"

    def __init__(self, task_queue_size: int = TASK_QUEUE_SIZE, result_queue_size: int = RESULT_QUEUE_SIZE) -> None:
        self._tasks: defaultdict[str, asyncio.Queue[Frame]] = defaultdict(lambda: asyncio.Queue(task_queue_size))
        self._results: defaultdict[str, asyncio.Queue[Frame]] = defaultdict(
            lambda: asyncio.Queue(result_queue_size))
        self._consumers: defaultdict[str, int] = defaultdict(int)
        self._signal = asyncio.Event()
        self.discarded = 0

    async def submit(self, frame: Frame, *, live: bool = True) -> None:
        q = self._tasks[frame.thread]
        if live:
            while q.full():  # latest wins: the oldest queued live task makes room
                q.get_nowait()
                self.discarded += 1
            q.put_nowait(frame)
        else:
            await q.put(frame)
        self._signal.set()

    async def tasks(self, threads: list[str], prefetch: int = 1) -> AsyncIterator[Delivery]:
        for t in threads:
            self._consumers[t] += 1
        try:
            while True:
                frame = self._next(threads)
                if frame is None:
                    self._signal.clear()
                    await self._signal.wait()
                    continue
                yield Delivery(frame)
        finally:
            for t in threads:
                self._consumers[t] -= 1

    def _next(self, threads: list[str]) -> Frame | None:
        for t in threads:
            q = self._tasks.get(t)
            if q is not None and not q.empty():
                return q.get_nowait()
        return None

    async def reply(self, frame: Frame) -> None:
        await self._results[frame.reply_to].put(frame)

    async def results(self, reply_to: str) -> AsyncIterator[Frame]:
        q = self._results[reply_to]
        try:
            while True:
                yield await q.get()
        finally:
            self._results.pop(reply_to, None)

    async def consumers(self, thread: str) -> int:
        return self._consumers.get(thread, 0)
