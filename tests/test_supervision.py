"""Poisoned messages and failing loops: one bad message or one crash must not stop the frames behind it.

Against the memory broker and real redis-server / rabbitmq-server: garbage on the result queue and on
the live and job task queues is dropped (counted, logged, acknowledged so it is never redelivered),
frames keep flowing, and ``close()`` returns cleanly. Loops that fail are restarted.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import ooblex as ob
from ooblex import Engine, Worker, wire
from ooblex.broker import Broker, Delivery, MemoryBroker, connect
from ooblex.frame import Frame
from ooblex.supervision import Background, Incidents, cancel, supervise

from .cluster_fixtures import needs_rabbitmq, needs_redis, rabbit_server, redis_server  # noqa: F401
from .media import numbered_frame

pytestmark = pytest.mark.timeout(90)


@ob.tensor_thread
def echo(frame, unsendable: bool = False):
    """Reports the frame's tag; with ``unsendable`` its result cannot be put on the wire (a set is not JSON)."""
    return {"tag": {1, 2}} if unsendable else {"tag": round(float(frame[..., 1].mean()) / 7)}  # survives JPEG


async def round_trip(stream: ob.Stream, n: int, timeout: float = 15) -> Frame:
    await stream.submit(numbered_frame(n))
    return await stream.get(timeout=timeout)


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


# --- the pieces ---------------------------------------------------------------------------
async def test_supervise_restarts_a_loop_that_fails_or_returns(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[int] = []

    async def loop() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise RuntimeError("boom")
        if len(runs) == 2:
            return
        await asyncio.sleep(3600)

    with caplog.at_level(logging.ERROR, "ooblex.supervision"):
        task = supervise(loop, "test:loop", backoff_s=0.01)
        await until(lambda: len(runs) == 3)
        await cancel(task)
    assert task.cancelled()
    messages = [r.getMessage() for r in caplog.records]
    assert any("test:loop failed; restarting" in m for m in messages)
    assert any("test:loop stopped unexpectedly" in m for m in messages)
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is Python 3.11+")
@pytest.mark.parametrize("swallow", ["return", "raise"])
async def test_a_loop_that_swallows_its_cancellation_still_stops(swallow: str) -> None:
    """A loop whose library turns the CancelledError into a return (or another error) must not be restarted:
    the task would outlive every cancel (seen: a test's event loop never closing after a RabbitMQ restart)."""
    runs: list[int] = []

    async def loop() -> None:
        runs.append(1)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            if swallow == "raise":
                raise ConnectionError("channel closed") from None

    task = supervise(loop, "test:swallower", backoff_s=0.01)
    await until(lambda: len(runs) == 1)
    task.cancel()
    await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
    assert task.cancelled() and len(runs) == 1


async def test_cancel_never_raises_what_a_task_raised(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise ValueError("died earlier")

    task = asyncio.create_task(fail())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, "ooblex.supervision"):
        await cancel(task, None)
    assert "died earlier" in caplog.text


async def test_background_keeps_tasks_and_logs_their_failures(caplog: pytest.LogCaptureFixture) -> None:
    bg = Background()

    async def fail() -> None:
        raise KeyError("lost ack")

    with caplog.at_level(logging.ERROR, "ooblex.supervision"):
        task = bg.spawn(fail())
        assert len(bg) == 1
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0)
    assert len(bg) == 0 and "lost ack" in caplog.text
    slow = bg.spawn(asyncio.sleep(3600))
    await bg.close(grace_s=0.01)
    assert slow.cancelled()


def test_incidents_are_counted_and_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    inc = Incidents(logging.getLogger("ooblex.test"), "dropped a poisoned message", every_s=3600)
    with caplog.at_level(logging.WARNING, "ooblex.test"):
        for i in range(500):
            inc.report(f"junk #{i}")
    assert inc.count == 500
    assert len(caplog.records) == 1 and "junk #0" in caplog.text


@pytest.mark.parametrize("data", [
    b"", b"\x00\x00\x00\x05[1,2]", b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x0b{\"seq\":\"x\"}",
    b"\x00\x00\x00\x1a{\"stamps\":{\"sent\":\"now\"}}",
    b"\x00\x00\x00\x10{\"codec\":\"jpeg\"}not a jpeg",
    b"\x00\x00\x00\x2b{\"codec\":\"raw\",\"shape\":[9,9,3],\"dtype\":\"|u1\"}short",
    b"\x00\x00\x00\x2a{\"codec\":\"raw\",\"shape\":[1],\"dtype\":\"nonsense\"}x",
    b"\x00\x00\x00\x14{\"codec\":\"none\",\"x\":1}",
])
def test_wire_decode_raises_only_wire_error(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(data)


def test_wire_encode_names_a_result_that_is_not_json() -> None:
    f = Frame(None, stream_id="s", seq=3, result={"x": {1, 2}})
    with pytest.raises(wire.WireError, match="s#3 cannot be sent"):
        wire.encode(f)


# --- the memory broker --------------------------------------------------------------------
async def test_memory_broker_poisoned_messages_are_dropped_and_frames_flow(
        caplog: pytest.LogCaptureFixture) -> None:
    engine = Engine(threads=[echo])
    await engine.start()
    try:
        stream = engine.open("echo", mode="every")
        assert (await round_trip(stream, 1)).result == {"tag": 1}
        with caplog.at_level(logging.WARNING, "ooblex"):
            # A result the router cannot even look up, and a task the worker cannot read a deadline from.
            await engine.broker.reply(Frame(None, stream_id=["not", "hashable"], reply_to=engine.reply_to))
            await engine.broker.submit(Frame(numbered_frame(0), thread="echo", deadline="soon"), live=False)
            for n in (2, 3, 4):
                assert (await round_trip(stream, n)).result == {"tag": n}
        assert engine.broker.poisoned.count == 2
        assert "poisoned message" in caplog.text
    finally:
        await engine.close()  # does not raise


class FlakyResults(MemoryBroker):
    """A broker whose result iterator fails once (a bug, a protocol error): the router must come back."""

    failed = False

    async def results(self, reply_to: str) -> AsyncIterator[Frame]:
        async for f in super().results(reply_to):
            if not self.failed:
                self.failed = True
                raise RuntimeError("result iterator broke")
            yield f


class FlakyTasks(MemoryBroker):
    """A broker whose task iterator fails once: the worker's feeder must come back."""

    failed = False

    async def tasks(self, threads: list[str], prefetch: int = 1) -> AsyncIterator[Delivery]:
        if threads == ["echo"] and not self.failed:
            self.failed = True
            raise RuntimeError("task iterator broke")
        async for d in super().tasks(threads, prefetch):
            yield d


@pytest.mark.parametrize(("broker", "task"), [(FlakyResults, "engine:router"), (FlakyTasks, "worker:echo:feed")])
async def test_a_loop_that_fails_is_logged_and_restarted(broker: type[Broker], task: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "ooblex"):
        async with Engine(broker(), threads=[echo]) as engine:
            stream = engine.open("echo", mode="live", max_latency_ms=200)
            got: Frame | None = None
            deadline = time.monotonic() + 20
            while got is None and time.monotonic() < deadline:  # the first frames may be lost with the loop
                await stream.submit(numbered_frame(5))
                try:
                    got = await stream.get(timeout=0.5)
                except asyncio.TimeoutError:
                    pass
            assert got is not None and got.result == {"tag": 5}
    assert f"{task} failed; restarting" in caplog.text


# --- real brokers -------------------------------------------------------------------------
async def _poison_does_not_stop_frames(url: str, inject: Callable[[str], Awaitable[None]],
                                       left_in_job_queue: Callable[[], Awaitable[int]]) -> None:
    engine = Engine(url, threads=[echo], embedded_worker=False)
    worker_broker = connect(url)
    worker = Worker(worker_broker, [echo])
    await engine.start()
    await worker_broker.start()
    await worker.start()
    try:
        stream = engine.open("echo", mode="every")
        assert (await round_trip(stream, 1)).result == {"tag": 1}
        await inject(engine.reply_to)
        for n in (2, 3, 4):
            assert (await round_trip(stream, n)).result == {"tag": n}
        # A result that cannot be sent comes back as an error, once, instead of being retried forever.
        bad = engine.open("echo", mode="every", params={"unsendable": True})
        f = await round_trip(bad, 6)
        assert f.result is None and "cannot be sent" in f.error
        await until(lambda: engine.broker.poisoned.count >= 2 and worker_broker.poisoned.count >= 2)
        assert (await round_trip(stream, 7)).result == {"tag": 7}
    finally:
        await worker.stop()
        await worker_broker.close()
        await engine.close()  # does not raise
    assert await left_in_job_queue() == 0  # the poisoned job entry was acknowledged, not left to come back


@needs_redis
async def test_redis_poisoned_messages_are_dropped_and_frames_flow(redis_server) -> None:  # noqa: F811
    import redis.asyncio as aioredis

    from ooblex.broker.redis import GROUP, result_key, task_key

    r = aioredis.from_url(redis_server.url)

    async def inject(reply_to: str) -> None:
        await r.xadd(result_key(reply_to), {"f": b"\x00\x00\x00\x05[1,2]"})
        await r.xadd(result_key(reply_to), {"not-a-frame": b"1"})
        await r.xadd(task_key("echo", True), {"f": b"junk"})
        await r.xadd(task_key("echo", False), {"f": b"\x00\x00\x00\x02{}"})

    async def left() -> int:
        job = task_key("echo", False)
        return await r.xlen(job) + (await r.xpending(job, GROUP))["pending"]

    try:
        await _poison_does_not_stop_frames(redis_server.url, inject, left)
    finally:
        await r.aclose()


@needs_rabbitmq
async def test_rabbitmq_poisoned_messages_are_dropped_and_frames_flow(rabbit_server) -> None:  # noqa: F811
    import aio_pika

    from ooblex.broker.rabbitmq import job_queue, live_queue, result_queue

    conn = await aio_pika.connect(rabbit_server.url)
    channel = await conn.channel()

    async def inject(reply_to: str) -> None:
        for name, body in [(result_queue(reply_to), b"\x00\x00\x00\x05[1,2]"), (result_queue(reply_to), b""),
                           (live_queue("echo"), b"junk"), (job_queue("echo"), b"\x00\x00\x00\x02{}")]:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=name)

    async def left() -> int:
        q = await channel.declare_queue(job_queue("echo"), passive=True)
        return q.declaration_result.message_count

    try:
        await _poison_does_not_stop_frames(rabbit_server.url, inject, left)
    finally:
        await conn.close()

