"""Network brokers against real servers: round trip, competing consumers, bounds, restarts."""

from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest

from ooblex import jpeg, wire
from ooblex.broker import connect
from ooblex.frame import Frame

from .cluster_fixtures import needs_rabbitmq, needs_redis, rabbit_server, redis_server  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def frame(seq: int, thread: str = "t", reply_to: str = "gw.test", deadline: float = 0.0) -> Frame:
    img = np.full((48, 64, 3), seq % 256, np.uint8)
    return Frame(img, stream_id="s", seq=seq, thread=thread, reply_to=reply_to, deadline=deadline,
                 params={"k": 1}, stamps={"received": time.time()})


def test_wire_round_trip_raw_jpeg_and_result_only() -> None:
    f = frame(7)
    f.result = {"n": np.int64(3), "v": np.arange(2)}
    raw = wire.decode(wire.encode(f, "raw"))
    assert np.array_equal(raw.image, f.image) and raw.seq == 7 and raw.result == {"n": 3, "v": [0, 1]}
    jp = wire.decode(wire.encode(f, "jpeg"))
    assert jp.image.shape == f.image.shape and np.abs(jp.image.astype(int) - 7).max() <= 3
    f.image = None
    assert wire.decode(wire.encode(f)).image is None
    with pytest.raises(wire.WireError):
        wire.decode(b"\x00\x00\x00\x09{nope")


async def _round_trip(url: str) -> None:
    broker = connect(url)
    await broker.start()
    try:
        results = broker.results("gw.test")
        got: list[Frame] = []

        async def read() -> None:
            async for f in results:
                got.append(f)
                if len(got) == 10:
                    return

        reader = asyncio.create_task(read())

        async def work() -> None:
            async for d in broker.tasks(["t"]):
                d.frame.result = {"seen": d.frame.seq}
                await broker.reply(d.frame)
                d.ack()

        worker = asyncio.create_task(work())
        for _ in range(50):
            if await broker.consumers("t") > 0:
                break
            await asyncio.sleep(0.1)
        assert await broker.consumers("t") == 1
        for i in range(5):
            await broker.submit(frame(i), live=True)
            await broker.submit(frame(100 + i), live=False)
        await asyncio.wait_for(reader, 10)
        assert sorted(f.seq for f in got) == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104]
        assert all(f.result == {"seen": f.seq} for f in got)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await results.aclose()
    finally:
        await broker.close()


@needs_redis
async def test_redis_round_trip(redis_server) -> None:  # noqa: F811
    await _round_trip(redis_server.url)


@needs_rabbitmq
async def test_rabbitmq_round_trip(rabbit_server) -> None:  # noqa: F811
    await _round_trip(rabbit_server.url)


async def _live_bounded(url: str) -> None:
    """With no consumer, a live queue keeps only its newest ``live_queue`` frames."""
    broker = connect(url, live_queue=4)
    await broker.start()
    try:
        for i in range(20):
            await broker.submit(frame(i, thread="bounded"), live=True)
        for i in range(3):
            await broker.submit(frame(1000 + i, thread="bounded"), live=False)
        seen = []

        async def work() -> None:
            async for d in broker.tasks(["bounded"]):
                seen.append(d.frame.seq)
                d.ack()

        w = asyncio.create_task(work())
        await asyncio.sleep(2.0)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert sorted(s for s in seen if s < 1000) == [16, 17, 18, 19]
        assert sorted(s for s in seen if s >= 1000) == [1000, 1001, 1002]
    finally:
        await broker.close()


@needs_redis
async def test_redis_live_queue_is_bounded(redis_server) -> None:  # noqa: F811
    await _live_bounded(redis_server.url)


@needs_rabbitmq
async def test_rabbitmq_live_queue_is_bounded(rabbit_server) -> None:  # noqa: F811
    await _live_bounded(rabbit_server.url)


@needs_rabbitmq
async def test_rabbitmq_expires_stale_live_frames(rabbit_server) -> None:  # noqa: F811
    broker = connect(rabbit_server.url)
    await broker.start()
    try:
        await broker.submit(frame(1, thread="stale", deadline=time.time() + 0.05), live=True)
        await asyncio.sleep(0.3)
        await broker.submit(frame(2, thread="stale", deadline=time.time() + 5), live=True)
        seen = []

        async def work() -> None:
            async for d in broker.tasks(["stale"]):
                seen.append(d.frame.seq)

        w = asyncio.create_task(work())
        await asyncio.sleep(1.0)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert seen == [2]
    finally:
        await broker.close()


@needs_redis
async def test_redis_unacked_job_is_reclaimed_from_a_dead_consumer(redis_server) -> None:  # noqa: F811
    """A consumer that takes a job frame and vanishes without ack: another one gets it."""
    a, b = connect(redis_server.url), connect(redis_server.url)
    await a.start()
    await b.start()
    try:
        await a.submit(frame(5, thread="jobs"), live=False)
        it = a.tasks(["jobs"])
        first = await asyncio.wait_for(it.__anext__(), 5)
        assert first.frame.seq == 5
        await it.aclose()  # leaves without ack: its heartbeat entry is removed
        got, seen = [], asyncio.Event()

        async def work() -> None:
            async for d in b.tasks(["jobs"]):
                got.append(d.frame.seq)
                d.ack()
                seen.set()

        w = asyncio.create_task(work())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(seen.wait(), 10)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert got == [5]
    finally:
        await a.close()
        await b.close()


HOLDER = """
import asyncio, sys
from ooblex.broker import connect

async def main():
    broker = connect(sys.argv[1])
    await broker.start()
    async for d in broker.tasks(["jobs"]):
        print("took", d.frame.seq, flush=True)  # and never acknowledges it
        await asyncio.sleep(3600)

asyncio.run(main())
"""


@needs_redis
async def test_redis_job_entries_of_a_killed_consumer_are_claimed_by_connection_loss(redis_server) -> None:  # noqa: F811
    """A worker killed while holding a job frame: its heartbeat would still look valid for an hour, but
    its connection is gone, so another consumer takes the frame. While it lived, nobody did."""
    import signal
    import subprocess
    import sys

    from ooblex.broker.redis import consumers_key

    b = connect(redis_server.url)
    await b.start()
    holder = await asyncio.to_thread(subprocess.Popen, [sys.executable, "-c", HOLDER, redis_server.url],
                                     stdout=subprocess.PIPE, text=True)
    got: list[int] = []
    try:
        await b.submit(frame(6, thread="jobs"), live=False)
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
        assert line.split() == ["took", "6"]

        async def work() -> None:
            async for d in b.tasks(["jobs"]):
                got.append(d.frame.seq)
                d.ack()

        w = asyncio.create_task(work())
        await asyncio.sleep(1.5)  # several reclaim rounds: a live holder keeps its frame
        assert got == []
        names = await b.redis.zrange(consumers_key("jobs"), 0, -1)
        holder.send_signal(signal.SIGKILL)
        await asyncio.to_thread(holder.wait, 10)
        # Its heartbeat says "alive for an hour": only the closed connection can tell it is dead.
        await b.redis.zadd(consumers_key("jobs"), {n: time.time() + 3600 for n in names})
        for _ in range(100):  # the bound only catches a hang
            if got:
                break
            await asyncio.sleep(0.1)
        w.cancel()
        await asyncio.gather(w, return_exceptions=True)
        assert got == [6]
    finally:
        if holder.poll() is None:
            holder.kill()
        await b.close()


def test_wire_can_leave_jpeg_pixels_coded_for_the_worker() -> None:
    data = wire.encode(frame(9), "jpeg")
    f = wire.decode(data, defer_jpeg=True)
    assert f.image is None and f.jpeg is not None and f.seq == 9
    assert np.abs(jpeg.decode(f.jpeg).astype(int) - 9).max() <= 3
    assert wire.decode(wire.encode(frame(9), "raw"), defer_jpeg=True).jpeg is None  # raw pixels are not coded
    head = data.index(b"\xff\xd8")
    with pytest.raises(wire.WireError, match="not a JPEG"):
        wire.decode(data[:head] + b"\xff\xd8 not a jpeg", defer_jpeg=True)  # the header is still checked


async def _worker_decodes_tasks(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker gets JPEG tasks still coded: it decodes them in its compute threads, hands bytes to a thread
    that decodes them itself, and returns a frame whose pixels do not decode with its error (others run)."""
    import ooblex as ob
    from ooblex import Worker

    @ob.tensor_thread(name="kinds", batch_size=4, max_wait_ms=200)
    def kinds(frames: list[np.ndarray], k: int = 1) -> list[dict]:
        return [{"type": type(f).__name__, "mean": float(f.mean())} for f in frames]

    class Coded:
        decodes_jpeg = True  # e.g. an adapter whose model, and nvJPEG, are on a GPU

        def __call__(self, frame: bytes, k: int = 1) -> dict:
            return {"type": type(frame).__name__}

    encode = wire.encode

    def truncating(f: Frame, *args: object, **kwargs: object) -> bytes:
        data = encode(f, *args, **kwargs)
        return data[:-2000] if f.seq == 2 and f.image is not None else data  # the task: its scan data cut short

    monkeypatch.setattr(wire, "encode", truncating)
    broker = connect(url)
    await broker.start()
    worker = Worker(broker, [kinds, ob.tensor_thread(Coded, name="coded")])
    await worker.start()
    results = broker.results("gw.test")
    got: dict[int, Frame] = {}

    async def read() -> None:
        async for f in results:
            got[f.seq] = f
            if len(got) == 5:
                return

    reader = asyncio.create_task(read())  # reading first: RabbitMQ drops replies to a queue not yet declared
    try:
        for _ in range(50):
            if await broker.consumers("kinds") > 0 and await broker.consumers("coded") > 0:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        noisy = frame(2, thread="kinds")
        noisy.image = np.random.default_rng(2).integers(0, 256, noisy.image.shape, dtype=np.uint8)  # ~7 KB coded
        for f in (frame(0, thread="kinds"), frame(40, thread="kinds"), noisy, frame(120, thread="kinds")):
            await broker.submit(f, live=False)
        await broker.submit(frame(7, thread="coded"), live=False)
        await asyncio.wait_for(reader, 20)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await results.aclose()
        await worker.stop()
        await broker.close()
    for seq in (0, 40, 120):
        assert got[seq].error is None and got[seq].result["type"] == "ndarray"
        assert abs(got[seq].result["mean"] - seq) < 3
    assert got[2].result is None and got[2].error.startswith("ImageDecodeError: not a valid JPEG")
    assert got[7].error is None and got[7].result == {"type": "bytes"}


@needs_redis
async def test_redis_worker_decodes_jpeg_off_the_event_loop(redis_server, monkeypatch) -> None:  # noqa: F811
    await _worker_decodes_tasks(redis_server.url, monkeypatch)


@needs_rabbitmq
async def test_rabbitmq_worker_decodes_jpeg_off_the_event_loop(rabbit_server, monkeypatch) -> None:  # noqa: F811
    await _worker_decodes_tasks(rabbit_server.url, monkeypatch)
