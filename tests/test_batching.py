"""Batches follow load: taken from what waits when the model is free, never held for frames that are not coming.

Behaviour is asserted (batch sizes formed, whether a frame waited ``max_wait_ms``), not speed: the time
bounds here are far from what the code takes and only catch a frame held for ``max_wait_ms``.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import pytest

import ooblex as ob
from ooblex import Engine
from ooblex.broker.base import Delivery
from ooblex.engine.batching import Arrivals, Batcher
from ooblex.frame import Frame

pytestmark = pytest.mark.timeout(120)
FRAME = np.zeros((24, 32, 3), np.uint8)


def recording(batch_size: int, max_wait_ms: float, hold_s: float = 0.0):  # noqa: ANN201
    sizes: list[int] = []

    @ob.tensor_thread(name=f"rec{batch_size}", batch_size=batch_size, max_wait_ms=max_wait_ms)
    def rec(frames: list[np.ndarray]) -> list[dict[str, int]]:
        sizes.append(len(frames))
        time.sleep(hold_s)
        return [{"n": len(frames)} for _ in frames]

    return rec, sizes


async def test_one_stream_at_30_fps_is_not_held_for_a_batch() -> None:
    """batch_size 16, max_wait_ms 1000: a lone camera's frames each run at once, alone, as if unbatched."""
    rec, sizes = recording(16, 1000)
    async with Engine(threads=[rec]) as engine:
        stream = engine.open(rec.name, mode="live")
        waited = []
        for _ in range(15):
            await stream.submit(FRAME, captured=time.time())
            out = await stream.get(timeout=10)
            waited.append(out.stamps["started"] - out.stamps["queued"])
            await asyncio.sleep(1 / 30)
        stats = engine.worker.stats()[rec.name]
    assert sizes == [1] * 15
    assert max(waited) < 0.5, waited  # a batcher that waited for company would hold each frame 1 s
    assert stats["batches"] == 15 and stats["processed"] == 15


async def test_frames_that_pile_up_while_the_model_is_busy_form_the_next_batch() -> None:
    """No waiting at all (max_wait_ms 0), yet batches grow under load: what queued during a call runs next."""
    rec, sizes = recording(8, 0, hold_s=0.3)
    async with Engine(threads=[rec], max_streams=16) as engine:
        streams = [engine.open(rec.name, mode="every") for _ in range(16)]
        for s in streams:
            await s.submit(FRAME)
        outs = [await s.get(timeout=30) for s in streams]
    assert all(o.error is None for o in outs)
    assert sum(sizes) == 16 and max(sizes) == 8, sizes


async def test_a_batch_waits_for_frames_that_other_streams_are_sending() -> None:
    """16 streams taking turns, a frame every few ms, max_wait_ms 2000: batches fill to batch_size."""
    rec, sizes = recording(8, 2000)
    async with Engine(threads=[rec], max_streams=16) as engine:
        streams = [engine.open(rec.name, mode="every", max_in_flight=4) for _ in range(16)]

        async def read(s: ob.Stream) -> None:
            for _ in range(3):
                assert (await s.get(timeout=30)).error is None

        readers = [asyncio.create_task(read(s)) for s in streams]
        for _ in range(3):
            for s in streams:
                await s.submit(FRAME)
                await asyncio.sleep(0.003)
        await asyncio.gather(*readers)
    assert sum(sizes) == 48
    assert sizes.count(8) >= 3, sizes


class Recorded:
    def __init__(self, n: int) -> None:
        self.nacked: list[int] = []
        self.deliveries = [Delivery(Frame(FRAME, stream_id=f"s{i}", seq=i), nack=lambda i=i: self.nacked.append(i))
                           for i in range(n)]


async def test_batcher_does_not_wait_without_a_known_rate_or_for_a_stream_already_in_the_batch() -> None:
    batcher = Batcher(size=8, max_wait_s=10.0)
    d = Recorded(1).deliveries[0]
    await batcher.put(d)
    t = time.monotonic()
    assert await batcher.fill(await batcher.first()) == [d]
    batcher.arrivals.gap = 0.001  # a busy rate, but only this one stream sends: its next frame waits for this one
    await batcher.put(d)
    assert await batcher.fill(await batcher.first()) == [d]
    assert time.monotonic() - t < 5  # neither waited out the 10 s


async def test_batcher_takes_what_is_queued_up_to_its_size_and_gives_back_what_it_took_when_cancelled() -> None:
    batcher = Batcher(size=3, max_wait_s=0.0)
    rec = Recorded(6)
    for d in rec.deliveries[:3]:
        await batcher.put(d)
    assert [d.frame.seq for d in await batcher.fill(await batcher.first())] == [0, 1, 2]

    slow = Batcher(size=3, max_wait_s=30.0)
    slow.arrivals.note(time.monotonic(), "s5")  # another stream is active and frames come often:
    slow.arrivals.gap = 0.001                   # the batch waits for it
    await slow.put(rec.deliveries[4])
    task = asyncio.create_task(slow.fill(await slow.first()))
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rec.nacked == [4]


def test_arrivals_mean_gap_and_active_streams() -> None:
    a = Arrivals()
    assert math.isinf(a.gap)
    for t, s in ((0.0, "a"), (0.01, "b"), (0.02, "a"), (0.03, "c")):
        a.note(t, s)
    assert a.gap == pytest.approx(0.01)
    assert a.others({"a"}, 0.03) == 2 and a.others({"a", "b", "c"}, 0.03) == 0
    a.note(1.02, "a")  # one long gap moves the mean by an eighth of the difference; b went quiet
    assert a.gap == pytest.approx(0.01 + (1.0 - 0.02) / 8)
    assert a.others(set(), 1.02) == 2  # a, and c (seen 0.99 s ago)
    assert a.others(set(), 1.5) == 1
