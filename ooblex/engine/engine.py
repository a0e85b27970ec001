"""The engine: opens streams, routes results back to them, and (embedded) hosts a worker.

A gateway instance owns one ``Engine``. With the ``memory`` broker the engine also runs a
``Worker`` in-process, so ``ooblex demo`` is a whole system in one process; with ``redis`` or
``rabbitmq`` the workers are other processes, on any machines.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..broker import Broker, MemoryBroker, connect
from ..builtin import identity
from ..errors import NotFound, TooManyRequests
from ..supervision import cancel, supervise
from ..thread import TensorThread, as_thread
from .stream import Stream
from .worker import Worker

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("ooblex.engine")


class UnknownThread(NotFound, KeyError):
    """No tensor thread of that name is known to this engine."""


class Engine:
    """Owns streams and the reply queue for one gateway instance."""

    def __init__(self, broker: Broker | str = "memory://", threads: Iterable[Any] = (), *,
                 embedded_worker: bool | None = None, max_streams: int = 64, lazy: bool = False) -> None:
        """``lazy``: the embedded worker loads each thread's model when its first frame comes (see ``Worker``)."""
        self.broker = connect(broker) if isinstance(broker, str) else broker
        self.threads: dict[str, TensorThread] = {}
        self.worker: Worker | None = None
        self.lazy = lazy
        #: Prometheus metrics of streams and the embedded worker (a gateway sets them: ``ooblex.metrics``).
        self.metrics: Metrics | None = None
        for t in (identity, *threads):
            self.add_thread(t)
        self.embedded = isinstance(self.broker, MemoryBroker) if embedded_worker is None else embedded_worker
        self.reply_to = f"gateway.{secrets.token_hex(6)}"
        self.max_streams = max_streams
        self.streams: dict[str, Stream] = {}
        self._router: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None

    def add_thread(self, thread: Any) -> TensorThread:
        t = as_thread(thread)
        self.threads[t.name] = t
        if self.worker is not None and t.name not in self.worker.runners:
            self.worker.add(t)
        return t

    async def start(self) -> Engine:
        await self.broker.start()
        if self.embedded:
            self.worker = Worker(self.broker, self.threads.values(), lazy=self.lazy, metrics=self.metrics)
            await self.worker.start()
        self._router = supervise(self._route, "engine:router", logger=log)
        if not self.embedded:
            self._watcher = supervise(self._watch_workers, "engine:workers", logger=log)
        return self

    async def close(self) -> None:
        for s in list(self.streams.values()):
            await s.close()
        await cancel(self._router, self._watcher)
        if self.worker is not None:
            await self.worker.stop()
        await self.broker.close()

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def open(self, thread: str | Any, **options: Any) -> Stream:
        """Open a stream through ``thread`` (a name or a tensor thread). See ``Stream`` for options."""
        if len(self.streams) >= self.max_streams:
            raise TooManyRequests(f"too many streams (limit {self.max_streams}, OOBLEX_MAX_STREAMS)")
        t = self.resolve(thread)
        stream = Stream(self, t, **options)
        self.streams[stream.id] = stream
        return stream

    def resolve(self, thread: str | Any) -> TensorThread:
        if isinstance(thread, str):
            if thread not in self.threads:
                known = ", ".join(sorted(self.threads)) or "none"
                raise UnknownThread(f"unknown tensor thread {thread!r} (available: {known})")
            return self.threads[thread]
        t = as_thread(thread)
        if self.threads.get(t.name) is not t:
            self.add_thread(t)
        return t

    def loading(self, thread: str) -> bool:
        """The embedded worker is loading ``thread``'s model for its first frame."""
        return self.loaded_at(thread) == math.inf

    def loaded_at(self, thread: str) -> float:
        """When the embedded worker finished loading ``thread``'s model for its first frame: ``inf`` while
        it loads, 0 if it never had to (eager, or not embedded)."""
        runner = self.worker.runners.get(thread) if self.worker is not None else None
        if runner is None:
            return 0.0
        return math.inf if runner.loading else runner.loaded_at

    def forget(self, stream: Stream) -> None:
        self.streams.pop(stream.id, None)

    async def workers(self, thread: str) -> int:
        """How many workers serve ``thread`` now (-1 if the broker cannot tell)."""
        if self.embedded:
            return 1 if thread in self.threads else 0
        return await self.broker.consumers(thread)

    async def _watch_workers(self, every_s: float = 1.0) -> None:
        """Keep ``Stream.workers`` current, so a stream nobody serves says so instead of hanging."""
        while True:
            for name in {s.thread.name for s in self.streams.values()}:
                try:
                    n = await self.broker.consumers(name)
                except Exception:  # noqa: BLE001 - a broker outage only makes the count unknown
                    n = -1
                for s in list(self.streams.values()):
                    if s.thread.name == name:
                        s.workers = n
            await asyncio.sleep(every_s)

    async def _route(self) -> None:
        """Hand each result to its stream. One result that cannot be handled is dropped (counted in
        ``broker.poisoned``, logged rate-limited); the results behind it flow on."""
        async for frame in self.broker.results(self.reply_to):
            try:
                stream = self.streams.get(frame.stream_id)
                if stream is not None:
                    await stream.on_result(frame)
            except Exception as exc:  # noqa: BLE001 - one bad result (or stream bug) must not stop routing
                self.broker.poisoned.report(f"result for stream {getattr(frame, 'stream_id', '?')!r} not handled",
                                            exc)
