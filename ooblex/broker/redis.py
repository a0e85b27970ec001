"""The Redis broker: Redis streams alone carry tasks and results.

- Live tasks: stream ``ooblex:q:live:<thread>`` trimmed to ``live_queue`` entries on every add
  (oldest go first) and skipped by workers past the frame's deadline.
- Job tasks: stream ``ooblex:q:job:<thread>``, never trimmed; a consumer group hands each entry
  to one worker and keeps it pending until acknowledged. Entries held by a dead consumer are
  claimed by the others within ``RECLAIM_S``, so nothing is lost and a job barely stalls. Dead
  means: its heartbeat connection is gone (a killed process's sockets close at once, and Redis
  drops the client) or, for a machine that vanished without closing it, its heartbeat lapsed.
- Results: stream ``ooblex:r:<reply_to>``, one per gateway instance, bounded and expiring.

Every loop survives a Redis restart: it backs off, reconnects, and recreates its group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import wire
from ..frame import Frame
from ..supervision import Background, cancel
from .base import Broker, BrokerError, Delivery, redact

log = logging.getLogger("ooblex.broker.redis")

GROUP = "workers"
PREFIX = "ooblex"
#: A consumer that has not refreshed its heartbeat for this long is presumed dead.
HEARTBEAT_S = 3.0
#: How often a consumer refreshes it (independently of the work it does).
BEAT_S = 1.0
#: Pending job entries idle this long are claimed even from a live consumer (a stuck worker).
STUCK_S = 120.0
#: How often an idle consumer looks for a dead one's job entries (also its longest blocking read).
RECLAIM_S = 0.2
#: XCLAIM's minimum idle time (ms): entries another worker claimed this recently are left to it.
CLAIM_IDLE_MS = 100
DOWN = (RedisConnectionError, RedisTimeoutError, OSError)


def task_key(thread: str, live: bool) -> str:
    return f"{PREFIX}:q:{'live' if live else 'job'}:{thread}"


def result_key(reply_to: str) -> str:
    return f"{PREFIX}:r:{reply_to}"


def consumers_key(thread: str) -> str:
    return f"{PREFIX}:c:{thread}"


#: consumer -> the Redis client id of its heartbeat connection (``CLIENT ID``): gone from
#: ``CLIENT LIST`` means the consumer's process is gone.
CONNECTIONS = f"{PREFIX}:cid"


class RedisBroker(Broker):
    """Tasks and results over Redis streams. ``url``: ``redis://host:port/db``."""

    def __init__(self, url: str, *, codec: wire.Codec = "jpeg", quality: int = 85, live_queue: int = 64,
                 result_queue: int = 1024, block_ms: int = 1000) -> None:
        self.url = redact(url)
        self._dial = url
        self.codec: wire.Codec = codec
        self.quality = quality
        self.live_queue = live_queue
        self.result_queue = result_queue
        self.block_ms = block_ms
        self.discarded = 0
        self._redis: aioredis.Redis | None = None
        self._background = Background(log)

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            raise BrokerError("RedisBroker used before start()")
        return self._redis

    async def start(self) -> None:
        self._redis = aioredis.from_url(self._dial, socket_keepalive=True, socket_connect_timeout=2,
                                        retry_on_timeout=False)
        try:
            await self._redis.ping()
        except DOWN as exc:
            log.warning("redis at %s is not reachable yet (%s); will keep trying", self.url, exc)

    async def close(self) -> None:
        await self._background.close(grace_s=2.0)  # acks in flight: else redelivered
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    # --- gateway side --------------------------------------------------------------------
    async def submit(self, frame: Frame, *, live: bool = True) -> None:
        data = wire.encode(frame, self.codec, self.quality)
        if live:
            try:
                await _blocking(self.redis.xadd(task_key(frame.thread, True), {"f": data}, maxlen=self.live_queue,
                                                approximate=False))
            except DOWN:
                self.discarded += 1  # a live frame is worth nothing later; the stream reclaims its slot
            return
        await self._retry(lambda: self.redis.xadd(task_key(frame.thread, False), {"f": data}), "submit a job frame")

    async def results(self, reply_to: str) -> AsyncIterator[Frame]:
        key, last = result_key(reply_to), "0"
        try:
            while True:
                try:
                    got = await _blocking(self.redis.xread({key: last}, count=64, block=self.block_ms))
                except DOWN:
                    _reraise_cancel()
                    await asyncio.sleep(0.2)
                    continue
                for _, entries in got or ():
                    for entry_id, fields in entries:
                        last = entry_id
                        frame = self._decode(key, entry_id, fields, task=False)
                        if frame is not None:
                            yield frame
        finally:
            with contextlib.suppress(RedisError, OSError, BrokerError, asyncio.TimeoutError):
                await asyncio.wait_for(_blocking(self.redis.delete(key)), 2.0)

    async def consumers(self, thread: str) -> int:
        try:
            return int(await _blocking(self.redis.zcount(consumers_key(thread), time.time(), "+inf")))
        except DOWN:
            return -1

    # --- worker side ---------------------------------------------------------------------
    async def reply(self, frame: Frame) -> None:
        data = wire.encode(frame, self.codec, self.quality)
        key = result_key(frame.reply_to)

        async def send() -> None:
            async with self.redis.pipeline(transaction=False) as p:
                p.xadd(key, {"f": data}, maxlen=self.result_queue, approximate=True)
                p.expire(key, 300)
                await p.execute()

        await self._retry(send, "reply")

    async def tasks(self, threads: list[str], prefetch: int = 1) -> AsyncIterator[Delivery]:
        """Tasks for ``threads``. The consumer's heartbeat runs in its own task for as long as this
        generator exists, so a worker busy with a slow frame (not asking for the next one) still
        counts as alive: its pending job entries are not claimed by others and computed twice."""
        consumer = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        streams = {task_key(t, live): ">" for t in threads for live in (True, False)}
        live_done: dict[str, list[bytes]] = {}
        beating = asyncio.Event()
        # Its own connection: while this process lives the connection does, so others can tell a
        # killed worker from a busy one at once (``_dead``) instead of waiting out a heartbeat.
        heart = aioredis.from_url(self._dial, single_connection_client=True, socket_keepalive=True,
                                  socket_connect_timeout=2, retry_on_timeout=False)
        beat = asyncio.create_task(self._keep_alive(heart, threads, consumer, streams, live_done, beating),
                                   name=f"redis:heartbeat:{consumer}")
        next_reclaim = 0.0
        try:
            await beating.wait()  # counted as a consumer before the first task arrives
            while True:
                try:
                    if time.monotonic() >= next_reclaim:
                        next_reclaim = time.monotonic() + RECLAIM_S
                        for d in await _blocking(self._reclaim(threads, consumer)):
                            yield d
                    got = await _blocking(self.redis.xreadgroup(GROUP, consumer, streams, count=prefetch,
                                                                block=min(self.block_ms, int(RECLAIM_S * 1e3))))
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    await _blocking(self._groups(streams))  # first use, or Redis restarted empty
                    continue
                except DOWN as exc:
                    _reraise_cancel()
                    log.warning("redis unreachable (%s); retrying", exc)
                    await asyncio.sleep(0.5)
                    continue
                for key, entries in got or ():
                    for entry_id, fields in entries:
                        d = self._delivery(key.decode(), entry_id, fields, live_done)
                        if d is not None:
                            yield d
        finally:
            await cancel(beat)
            # Best effort: a heartbeat that is not removed lapses by itself within HEARTBEAT_S.
            with contextlib.suppress(RedisError, OSError, BrokerError, asyncio.TimeoutError):
                await asyncio.wait_for(_blocking(self._leave(threads, consumer)), 2.0)
            with contextlib.suppress(RedisError, OSError):
                await heart.aclose()

    async def _keep_alive(self, heart: aioredis.Redis, threads: list[str], consumer: str,
                          streams: dict[str, str], live_done: dict[str, list[bytes]],
                          beating: asyncio.Event) -> None:
        """Beat every second until cancelled, through Redis outages and restarts (groups recreated)."""
        while True:
            try:
                await _blocking(self._beat(heart, threads, consumer, live_done))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    log.warning("heartbeat of %s failed: %s", consumer, exc)
                else:  # first use, or Redis restarted empty
                    with contextlib.suppress(*DOWN, ResponseError):
                        await _blocking(self._groups(streams))
            except DOWN as exc:
                _reraise_cancel()
                log.debug("heartbeat of %s: redis unreachable (%s)", consumer, exc)
            beating.set()
            await asyncio.sleep(BEAT_S)

    async def _leave(self, threads: list[str], consumer: str) -> None:
        async with self.redis.pipeline(transaction=False) as p:
            for t in threads:
                p.zrem(consumers_key(t), consumer)
            p.hdel(CONNECTIONS, consumer)
            await p.execute()

    def _decode(self, key: str, entry_id: bytes, fields: dict[bytes, bytes], task: bool = True) -> Frame | None:
        """The entry's frame, or None (counted, logged) for an entry that is not one."""
        try:
            if b"f" not in fields:
                raise wire.WireError(f"no frame field (fields: {sorted(k.decode(errors='replace') for k in fields)})")
            return wire.decode(fields[b"f"], defer_jpeg=task and self.defer_jpeg)
        except wire.WireError as exc:
            self.poisoned.report(f"{key} entry {entry_id.decode()}: {exc}")
            return None

    def _delivery(self, key: str, entry_id: bytes, fields: dict[bytes, bytes],
                  live_done: dict[str, list[bytes]]) -> Delivery | None:
        """The task in an entry; None for a poisoned entry, which is acknowledged (never redelivered)."""
        frame = self._decode(key, entry_id, fields)
        if ":q:live:" in key:
            # Live frames are never redelivered: acknowledged in bulk with the next heartbeat (no
            # extra round trip per frame); MAXLEN trims the entries themselves.
            live_done.setdefault(key, []).append(entry_id)
            return None if frame is None else Delivery(frame)
        if frame is None:
            self._background.spawn(self._done(key, entry_id))
            return None
        data = fields[b"f"]
        return Delivery(frame, ack=lambda: self._background.spawn(self._done(key, entry_id)),
                        nack=lambda: self._background.spawn(self._requeue(key, entry_id, data)))

    async def _groups(self, streams: dict[str, str]) -> None:
        for key in streams:
            try:
                await self.redis.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def _beat(self, heart: aioredis.Redis, threads: list[str], consumer: str,
                    live_done: dict[str, list[bytes]]) -> None:
        """Refresh this consumer's heartbeat (over ``heart``, its own connection, whose id it records),
        acknowledge delivered live frames, forget dead consumers."""
        now = time.time()
        dead = {t: await self.redis.zrangebyscore(consumers_key(t), "-inf", now - 30) for t in threads}
        done = dict(live_done)
        live_done.clear()
        connection = await heart.client_id()  # a new one after a reconnect
        async with heart.pipeline(transaction=False) as p:
            p.hset(CONNECTIONS, consumer, connection)
            for t in threads:
                p.zadd(consumers_key(t), {consumer: now + HEARTBEAT_S})
                for name in dead[t]:  # drops their pending live entries too; job entries were claimed
                    p.xgroup_delconsumer(task_key(t, True), GROUP, name)
                    p.zrem(consumers_key(t), name)
                    p.hdel(CONNECTIONS, name)
            for key, ids in done.items():
                p.xack(key, GROUP, *ids)
            await p.execute()

    async def _reclaim(self, threads: list[str], consumer: str) -> list[Delivery]:
        """Take over job entries held by consumers that stopped beating (or are stuck)."""
        out: list[Delivery] = []
        now = time.time()
        for t in threads:
            key = task_key(t, False)
            try:
                pending = await self.redis.xpending_range(key, GROUP, min="-", max="+", count=100)
            except ResponseError:
                continue  # no group yet
            pending = [p for p in pending if p["consumer"].decode() != consumer]
            if not pending:
                continue
            dead = await self._dead(t, {p["consumer"].decode() for p in pending}, now)
            ids = [p["message_id"] for p in pending
                   if p["consumer"].decode() in dead or p["time_since_delivered"] > STUCK_S * 1e3]
            if not ids:
                continue
            # A minimum idle time: of two workers claiming at once, the second finds the entry just
            # claimed (its idle time reset) and leaves it.
            claimed = await self.redis.xclaim(key, GROUP, consumer, CLAIM_IDLE_MS, ids)
            for entry_id, fields in claimed:
                if fields:  # deleted entries come back empty
                    log.info("reclaimed job frame %s from a dead worker", entry_id)
                    d = self._delivery(key, entry_id, fields, {})
                    if d is not None:
                        out.append(d)
        return out

    async def _dead(self, thread: str, consumers: set[str], now: float) -> set[str]:
        """Those of ``consumers`` whose heartbeat connection is closed or whose heartbeat lapsed."""
        names = sorted(consumers)
        beats = await self.redis.zmscore(consumers_key(thread), names)
        connections = await self.redis.hmget(CONNECTIONS, names)
        known = [int(c) for c in connections if c is not None]
        open_ = {int(c["id"]) for c in await self.redis.client_list(client_id=known)} if known else set()
        return {name for name, beat, c in zip(names, beats, connections, strict=True)
                if (beat or 0) < now or (c is not None and int(c) not in open_)}

    async def _done(self, key: str, entry_id: bytes) -> None:
        async def ack() -> None:
            async with self.redis.pipeline(transaction=False) as p:
                p.xack(key, GROUP, entry_id)
                p.xdel(key, entry_id)
                await p.execute()

        await self._retry(ack, "acknowledge", attempts=20)

    async def _requeue(self, key: str, entry_id: bytes, data: bytes) -> None:
        async def requeue() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.xadd(key, {"f": data})
                p.xack(key, GROUP, entry_id)
                p.xdel(key, entry_id)
                await p.execute()

        await self._retry(requeue, "return a job frame", attempts=20)

    async def _retry(self, op: Any, what: str, attempts: int = 0) -> Any:
        """Run ``op()`` until Redis answers; ``attempts=0`` means forever (job frames are never dropped)."""
        delay, n = 0.1, 0
        while True:
            try:
                return await _blocking(op())
            except DOWN as exc:
                _reraise_cancel()
                n += 1
                if attempts and n >= attempts:
                    raise BrokerError(f"redis at {self.url}: could not {what}: {exc}") from exc
                if n == 1:
                    log.warning("redis at %s unreachable while trying to %s (%s); retrying", self.url, what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


def _reraise_cancel() -> None:
    """redis-py may turn a cancelled read into a TimeoutError (an OSError): do not retry then."""
    task = asyncio.current_task()
    if task is not None and getattr(task, "cancelling", lambda: 0)():
        raise asyncio.CancelledError


async def _blocking(coro: Any) -> Any:
    """Await a Redis call so that cancelling the caller takes effect at once.

    redis-py (8.1) can lose a cancellation that lands while it sets up a connection (the caller
    then loops on, or waits forever on a half-read reply); shielded, the call finishes or fails on
    its own (a blocking read within ``BLOCK``) and our task is cancelled cleanly.
    """
    read = asyncio.ensure_future(coro)
    read.add_done_callback(lambda t: t.cancelled() or t.exception())  # an abandoned read's error is moot
    try:
        return await asyncio.shield(read)
    except asyncio.CancelledError:
        read.cancel()
        raise
