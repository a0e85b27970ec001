"""The RabbitMQ broker (aio-pika): a task queue per tensor thread, a result queue per gateway.

- Live tasks: ``ooblex.live.<thread>``, ``x-max-length`` with ``drop-head`` (latest wins) and a
  per-message TTL equal to the time left before the frame's deadline: stale frames expire in the
  broker, never reach a worker.
- Job tasks: ``ooblex.job.<thread>``, durable, persistent messages, manual ack: a worker that dies
  (even by SIGKILL) has its unacknowledged frames redelivered to the others.
- Results: ``ooblex.results.<reply_to>``, bounded, deleted when the gateway instance goes away.

Connections are "robust": after a broker restart aio-pika reconnects and redeclares queues and
consumers by itself; sends made meanwhile wait (jobs) or are discarded (live frames).
Cluster state and deploy artifacts live in Redis (``ooblex worker --store redis://...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection
from aiormq.exceptions import AMQPError

from .. import wire
from ..frame import Frame
from ..supervision import Background
from .base import Broker, BrokerError, Delivery, redact

log = logging.getLogger("ooblex.broker.rabbitmq")
DOWN = (AMQPError, ConnectionError, OSError, asyncio.TimeoutError, RuntimeError)


def live_queue(thread: str) -> str:
    return f"ooblex.live.{thread}"


def job_queue(thread: str) -> str:
    return f"ooblex.job.{thread}"


def result_queue(reply_to: str) -> str:
    return f"ooblex.results.{reply_to}"


class RabbitMQBroker(Broker):
    """Tasks and results over AMQP 0-9-1. ``url``: ``amqp://user:password@host:port/vhost``."""

    def __init__(self, url: str, *, codec: wire.Codec = "jpeg", quality: int = 85, live_queue: int = 64,
                 result_queue: int = 1024) -> None:
        self.url = redact(url)
        self._dial = url
        self.codec: wire.Codec = codec
        self.quality = quality
        self.live_length = live_queue
        self.result_length = result_queue
        self.discarded = 0
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._declared: set[str] = set()
        self._background = Background(log)

    async def start(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self._conn = await aio_pika.connect_robust(self._dial, reconnect_interval=0.5, timeout=5)
                break
            except DOWN as exc:
                if time.monotonic() > deadline:
                    raise BrokerError(f"cannot connect to RabbitMQ at {self.url}: {exc}") from exc
                await asyncio.sleep(0.5)
        self._pub = await self._conn.channel()  # type: ignore[assignment]

    async def close(self) -> None:
        await self._background.close(grace_s=2.0)  # acks in flight: else redelivered
        if self._conn is not None:
            with contextlib.suppress(*DOWN):
                await self._conn.close()
            self._conn = None

    @property
    def channel(self) -> AbstractRobustChannel:
        if self._pub is None:
            raise BrokerError("RabbitMQBroker used before start()")
        return self._pub

    async def _declare(self, channel: AbstractRobustChannel, name: str) -> aio_pika.abc.AbstractQueue:
        if name.startswith("ooblex.live."):
            args = {"x-max-length": self.live_length, "x-overflow": "drop-head"}
            return await channel.declare_queue(name, durable=False, arguments=args)
        if name.startswith("ooblex.job."):
            return await channel.declare_queue(name, durable=True)
        args = {"x-max-length": self.result_length, "x-overflow": "drop-head", "x-expires": 300_000}
        return await channel.declare_queue(name, durable=False, arguments=args)

    async def _ensure(self, name: str) -> None:
        if name not in self._declared:
            await self._declare(self.channel, name)
            self._declared.add(name)

    # --- gateway side --------------------------------------------------------------------
    async def submit(self, frame: Frame, *, live: bool = True) -> None:
        body = wire.encode(frame, self.codec, self.quality)
        if live:
            ttl = max(frame.deadline - time.time(), 0.001) if frame.deadline else None
            msg = aio_pika.Message(body, expiration=ttl)
            try:
                await self._ensure(live_queue(frame.thread))
                await asyncio.wait_for(self.channel.default_exchange.publish(msg, live_queue(frame.thread)), 1.0)
            except DOWN:
                self.discarded += 1
            return
        msg = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        await self._forever(lambda: self._publish(job_queue(frame.thread), msg), "submit a job frame")

    async def _publish(self, queue: str, msg: aio_pika.Message) -> None:
        await self._ensure(queue)
        await self.channel.default_exchange.publish(msg, queue)

    async def results(self, reply_to: str) -> AsyncIterator[Frame]:
        name = result_queue(reply_to)
        channel = await self._conn.channel()  # type: ignore[union-attr]
        queue = await self._declare(channel, name)
        try:
            async with queue.iterator(no_ack=True) as it:
                async for msg in it:
                    frame = self._decode(msg, task=False)
                    if frame is not None:
                        yield frame
        finally:
            await _quiet(_cleanup(queue.delete(if_unused=False, if_empty=False), channel.close()))

    async def consumers(self, thread: str) -> int:
        try:
            channel = await self._conn.channel()  # type: ignore[union-attr]
            try:
                q = await channel.declare_queue(live_queue(thread), passive=True)
                return int(q.declaration_result.consumer_count)
            finally:
                with contextlib.suppress(*DOWN):
                    await channel.close()
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return 0
        except DOWN:
            return -1

    # --- worker side ---------------------------------------------------------------------
    async def reply(self, frame: Frame) -> None:
        body = wire.encode(frame, self.codec, self.quality)
        msg = aio_pika.Message(body)
        # The gateway declared its result queue; publishing to a vanished one just drops the frame.
        await self._forever(lambda: self.channel.default_exchange.publish(msg, result_queue(frame.reply_to)),
                            "reply", attempts=50)

    async def tasks(self, threads: list[str], prefetch: int = 1) -> AsyncIterator[Delivery]:
        channel: AbstractRobustChannel = await self._conn.channel()  # type: ignore[union-attr,assignment]
        await channel.set_qos(prefetch_count=prefetch)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        tags = []
        try:
            for t in threads:
                for name in (live_queue(t), job_queue(t)):
                    queue = await self._declare(channel, name)
                    tags.append((queue, await queue.consume(inbox.put)))
            while True:
                d = self._delivery(await inbox.get())
                if d is not None:
                    yield d
        finally:
            await _quiet(_cleanup(*(queue.cancel(tag) for queue, tag in tags), channel.close()))

    def _decode(self, msg: AbstractIncomingMessage, task: bool = True) -> Frame | None:
        """The message's frame, or None (counted, logged) for a message that is not one."""
        try:
            return wire.decode(msg.body, defer_jpeg=task and self.defer_jpeg)
        except wire.WireError as exc:
            self.poisoned.report(f"{msg.routing_key} message: {exc}")
            return None

    def _delivery(self, msg: AbstractIncomingMessage) -> Delivery | None:
        """The task in ``msg``; None for a poisoned message, which is rejected without requeueing."""
        frame = self._decode(msg)
        if frame is None:
            self._background.spawn(_quiet(msg.reject(requeue=False)))
            return None
        if msg.routing_key and msg.routing_key.startswith("ooblex.live."):
            self._background.spawn(_quiet(msg.ack()))
            return Delivery(frame)
        return Delivery(frame, ack=lambda: self._background.spawn(_quiet(msg.ack())),
                        nack=lambda: self._background.spawn(_quiet(msg.nack(requeue=True))))

    async def _forever(self, op: Any, what: str, attempts: int = 0) -> Any:
        delay, n = 0.1, 0
        while True:
            try:
                return await asyncio.wait_for(op(), 5.0)
            except DOWN as exc:
                n += 1
                if attempts and n >= attempts:
                    raise BrokerError(f"rabbitmq at {self.url}: could not {what}: {exc}") from exc
                if n == 1:
                    log.warning("rabbitmq unreachable while trying to %s (%s); retrying", what, exc)
                self._declared.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


async def _quiet(coro: Any) -> None:
    """Acks on a channel that died are moot: the broker requeues what was not acked."""
    with contextlib.suppress(*DOWN):
        await asyncio.wait_for(coro, 2.0)


async def _cleanup(*steps: Any) -> None:
    """Run clean-up steps in order; a closed connection makes them moot, not fatal."""
    for step in steps:
        try:
            await step
        except DOWN:
            for rest in steps:
                if asyncio.iscoroutine(rest):
                    rest.close()
            return
