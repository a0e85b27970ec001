"""The embedded engine: live latest-frame-wins, lossless ordered mode, errors, batching, executors."""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time

import numpy as np
import pytest

import ooblex as ob
from ooblex import Engine
from ooblex.errors import TooManyRequests

from .media import numbered_frame


def tag(frame: ob.Frame) -> int:
    return int(frame.image[0, 0, 2])


async def feed_live(stream: ob.Stream, n: int, fps: float) -> None:
    for i in range(n):
        await stream.submit(numbered_frame(i))
        await asyncio.sleep(1 / fps)


async def drain(stream: ob.Stream, until_idle: float = 1.0) -> list[ob.Frame]:
    out = []
    while True:
        try:
            out.append(await stream.get(timeout=until_idle))
        except asyncio.TimeoutError:
            return out


async def test_slow_live_thread_keeps_latency_bounded_and_reports_drops() -> None:
    compute_s, fps, n = 0.1, 30, 60  # the thread is 3x slower than the frame rate

    @ob.tensor_thread
    def slow(frame):
        time.sleep(compute_s)
        return frame

    async with Engine(threads=[slow]) as engine:
        stream = engine.open("slow", mode="live", max_in_flight=1, max_latency_ms=300)
        feeder = asyncio.create_task(feed_live(stream, n, fps))
        outputs = []
        while not (feeder.done() and stream.idle):
            try:
                outputs.append(await stream.get(timeout=0.5))
            except asyncio.TimeoutError:
                pass
        snap = stream.describe()
    latencies = [(f.stamps["sent"] - f.stamps["received"]) * 1e3 for f in outputs]
    # Each output is at most one frame interval plus one computation old: it does not build up.
    assert max(latencies) < (compute_s + 2 / fps) * 1e3 + 50, latencies
    assert np.mean(latencies[-5:]) < np.mean(latencies[:5]) + 60  # no growth over the run
    assert snap["dropped"] + snap["stale"] >= n // 2  # most frames could not be computed in time
    assert snap["processed"] == len(outputs) and len(outputs) >= 10
    seqs = [f.seq for f in outputs]
    assert seqs == sorted(seqs)  # never goes backwards


async def test_every_frame_mode_loses_nothing_and_keeps_order() -> None:
    rng = random.Random(1)

    @ob.tensor_thread(concurrency=3)
    def jittery(frame):
        time.sleep(rng.random() * 0.004)
        return 255 - frame

    async with Engine(threads=[jittery]) as engine:
        stream = engine.open("jittery", mode="every", max_in_flight=4)
        n = 120

        async def feed() -> None:
            for i in range(n):
                await stream.submit(numbered_frame(i))

        feeder = asyncio.create_task(feed())
        outs = [await stream.get(timeout=5) for _ in range(n)]
        await feeder
        assert stream.in_flight == 0
    assert [f.seq for f in outs] == list(range(n))
    assert [255 - tag(f) for f in outs] == [i % 256 for i in range(n)]
    assert stream.stats.counters["dropped"] == 0


async def test_every_frame_mode_is_bounded_by_backpressure() -> None:
    gate = threading.Event()

    @ob.tensor_thread
    def blocked(frame):
        gate.wait(5)
        return frame

    async with Engine(threads=[blocked]) as engine:
        stream = engine.open("blocked", mode="every", max_in_flight=3)
        for i in range(3):
            await stream.submit(numbered_frame(i))
        fourth = asyncio.create_task(stream.submit(numbered_frame(3)))
        await asyncio.sleep(0.2)
        assert not fourth.done()  # the window is full: the producer waits instead of queueing more
        gate.set()
        got = [await stream.get(timeout=5) for _ in range(4)]
        await fourth
    assert [f.seq for f in got] == [0, 1, 2, 3]


async def test_raising_thread_does_not_stop_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    @ob.tensor_thread
    def flaky(frame):
        if int(frame[0, 0, 2]) % 2:
            raise ValueError("odd frame")
        return 255 - frame

    caplog.set_level(logging.WARNING)
    async with Engine(threads=[flaky]) as engine:
        stream = engine.open("flaky", mode="every", max_in_flight=6)
        for i in range(6):
            await stream.submit(numbered_frame(i))
        outs = [await stream.get(timeout=5) for _ in range(6)]
    for i, f in enumerate(outs):
        if i % 2:
            assert f.error == "ValueError: odd frame" and tag(f) == i  # passed through, flagged
        else:
            assert f.error is None and tag(f) == 255 - i
    assert stream.stats.counters["errors"] == 3
    tracebacks = [r for r in caplog.records if "Traceback" in r.getMessage()]
    assert len(tracebacks) == 1 and "odd frame" in tracebacks[0].getMessage()


async def test_bad_output_is_reported_not_crashing() -> None:
    @ob.tensor_thread
    def wrong(frame):
        return "not an image"

    async with Engine(threads=[wrong]) as engine:
        stream = engine.open("wrong", mode="every")
        await stream.submit(numbered_frame(1))
        f = await stream.get(timeout=5)
    assert f.error is not None and "expected a numpy HxWx3 uint8 image" in f.error
    assert tag(f) == 1


async def test_batched_thread_collects_frames_across_streams() -> None:
    sizes: list[int] = []

    @ob.tensor_thread(batch_size=4, max_wait_ms=50)
    def batched(frames):
        sizes.append(len(frames))
        return [{"n": int(f[0, 0, 2])} for f in frames]

    async with Engine(threads=[batched]) as engine:
        streams = [engine.open("batched", mode="every") for _ in range(4)]
        for i, s in enumerate(streams):
            await s.submit(numbered_frame(i))
        outs = [await s.get(timeout=5) for s in streams]
    assert [o.result for o in outs] == [{"n": i} for i in range(4)]
    assert max(sizes) > 1  # frames of different streams shared a call
    assert all(o.image is not None for o in outs)  # a dict-only result keeps the input pixels


async def test_batched_thread_must_return_one_output_per_frame() -> None:
    @ob.tensor_thread(batch_size=2, max_wait_ms=1)
    def short(frames):
        return []

    async with Engine(threads=[short]) as engine:
        stream = engine.open("short", mode="every")
        await stream.submit(numbered_frame(0))
        f = await stream.get(timeout=5)
    assert "one output per input frame" in f.error


async def test_async_batched_thread_must_return_one_output_per_frame() -> None:
    """The async path checks a batch's length as the sync path does (it used to lose the frames)."""
    @ob.tensor_thread(batch_size=2, max_wait_ms=1)
    async def short(frames):
        return frames[:-1]

    async with Engine(threads=[short]) as engine:
        stream = engine.open("short", mode="every")
        await stream.submit(numbered_frame(0))
        f = await stream.get(timeout=5)
    assert "is batched (batch_size=2): it is called with a list of frames" in f.error
    assert "one output per input frame (called with 1, got list of 0)" in f.error


async def test_params_change_per_stream_while_running() -> None:
    @ob.tensor_thread
    def add(frame, k: int = 0):
        return {"k": k}

    async with Engine(threads=[add]) as engine:
        a = engine.open("add", mode="every", params={"k": "3"})
        b = engine.open("add", mode="every")
        await a.submit(numbered_frame(0))
        await b.submit(numbered_frame(0))
        assert (await a.get(timeout=5)).result == {"k": 3}
        assert (await b.get(timeout=5)).result == {"k": 0}
        a.set_params(k=9)
        await a.submit(numbered_frame(1))
        assert (await a.get(timeout=5)).result == {"k": 9}
        with pytest.raises(ValueError, match="no parameter"):
            a.set_params(q=1)
        with pytest.raises(ValueError, match="no parameter 'self'"):
            a.set_params(**{"self": 1})


async def test_bgr_threads_see_bgr_and_return_rgb() -> None:
    @ob.tensor_thread(color="bgr")
    def first_channel(frame):
        return {"first": int(frame[0, 0, 0])}, frame

    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 2] = 200  # blue in RGB
    async with Engine(threads=[first_channel]) as engine:
        stream = engine.open(first_channel, mode="every")
        await stream.submit(img)
        f = await stream.get(timeout=5)
    # (dict, image) is not the documented order, so it is reported, not silently accepted
    assert f.error is not None

    @ob.tensor_thread(color="bgr", name="bgr_ok")
    def ok(frame):
        return frame, {"first": int(frame[0, 0, 0])}

    async with Engine(threads=[ok]) as engine:
        stream = engine.open("bgr_ok", mode="every")
        await stream.submit(img)
        f = await stream.get(timeout=5)
    assert f.result == {"first": 200} and int(f.image[0, 0, 2]) == 200


async def test_user_code_cannot_write_into_the_input_frame() -> None:
    @ob.tensor_thread
    def vandal(frame):
        frame[:] = 0
        return frame

    img = numbered_frame(5)
    async with Engine(threads=[vandal]) as engine:
        stream = engine.open("vandal", mode="every")
        await stream.submit(img)
        f = await stream.get(timeout=5)
    assert "read-only" in f.error and tag(f) == 5


async def test_user_code_runs_off_the_event_loop() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []

    @ob.tensor_thread
    def where(frame):
        seen.append(threading.get_ident())
        return frame

    @ob.tensor_thread
    async def where_async(frame):
        seen.append(threading.get_ident())
        return frame

    async with Engine(threads=[where, where_async]) as engine:
        for name in ("where", "where_async"):
            s = engine.open(name, mode="every")
            await s.submit(numbered_frame(0))
            await s.get(timeout=5)
    assert len(seen) == 2 and loop_thread not in seen


async def test_process_executor_runs_in_another_process() -> None:
    import os

    @ob.tensor_thread(executor="process")
    def pid(frame):
        import os

        return {"pid": os.getpid()}

    async with Engine(threads=[pid]) as engine:
        s = engine.open("pid", mode="every")
        await s.submit(numbered_frame(0))
        f = await s.get(timeout=60)
    assert f.error is None and f.result["pid"] != os.getpid()


async def test_expired_live_frames_are_skipped_by_the_worker() -> None:
    gate = threading.Event()

    @ob.tensor_thread
    def stuck(frame):
        gate.wait(5)
        return frame

    async with Engine(threads=[stuck]) as engine:
        s = engine.open("stuck", mode="live", max_in_flight=2, max_latency_ms=50)
        await s.submit(numbered_frame(0))  # occupies the thread
        await s.submit(numbered_frame(1))  # waits in the queue past its deadline
        await asyncio.sleep(0.2)
        gate.set()
        first = await s.get(timeout=5)
        await asyncio.sleep(0.2)
    assert first.seq == 0
    assert s.stats.counters["stale"] == 1 and s.stats.counters["processed"] == 1


async def test_unknown_thread_and_stream_limit() -> None:
    async with Engine(max_streams=1) as engine:
        with pytest.raises(ob.UnknownThread, match="available: identity"):
            engine.open("nope")
        engine.open("identity")
        with pytest.raises(TooManyRequests, match="too many streams") as info:
            engine.open("identity")
    assert isinstance(info.value, OverflowError)  # what it raised before TooManyRequests existed


def test_core_errors_carry_an_http_status_and_keep_their_builtin_base() -> None:
    from ooblex.broker import BrokerError
    from ooblex.errors import OoblexError, status
    from ooblex.wire import WireError

    for cls, code, builtin in [(ob.UnknownThread, 404, KeyError), (ob.StreamClosed, 404, RuntimeError),
                               (TooManyRequests, 429, OverflowError), (BrokerError, 503, RuntimeError),
                               (WireError, 400, ValueError), (ob.TensorThreadError, 400, TypeError)]:
        exc = cls("what went wrong")
        assert isinstance(exc, OoblexError) and isinstance(exc, builtin) and status(exc) == code, cls
        assert str(exc) == "what went wrong"


async def test_stats_report_stage_percentiles() -> None:
    async with Engine() as engine:
        s = engine.open("identity", mode="every")
        for i in range(20):
            await s.submit(numbered_frame(i), captured=time.time() - 0.01)
            await s.get(timeout=5)
        snap = ob.stats(s)
    for stage in ("queue", "compute", "return", "engine", "total"):
        assert set(snap["latency_ms"][stage]) == {"p50", "p95", "p99"}
    assert snap["latency_ms"]["total"]["p50"] >= 10  # includes the 10 ms before the engine saw it
    assert snap["processed"] == 20 and snap["received"] == 20


async def test_closed_stream_refuses_frames_and_wakes_readers() -> None:
    async with Engine() as engine:
        s = engine.open("identity")
        reader = asyncio.create_task(s.get())
        await asyncio.sleep(0.01)
        await s.close()
        with pytest.raises(ob.StreamClosed):
            await reader
        with pytest.raises(ob.StreamClosed):
            await s.submit(numbered_frame(0))
        assert s.id not in engine.streams


async def test_unchanged_pixels_are_not_sent_back_but_reach_the_reader() -> None:
    """A result-only or identity thread's reply carries no pixels; the stream restores its own."""
    from ooblex.broker import MemoryBroker

    replied_pixels: list[bool] = []

    class RecordingBroker(MemoryBroker):
        async def reply(self, frame: ob.Frame) -> None:
            replied_pixels.append(frame.image is not None)
            await super().reply(frame)

    @ob.tensor_thread
    def measure(frame):
        return {"mean": float(frame.mean())}

    @ob.tensor_thread(color="bgr")
    def same_bgr(frame):
        return frame

    @ob.tensor_thread(name="invert")
    def jittery_free_invert(frame):
        return 255 - frame

    async with Engine(RecordingBroker(), threads=[measure, same_bgr, jittery_free_invert]) as engine:
        outs = []
        for name in ("measure", "identity", "same_bgr", "invert"):
            s = engine.open(name, mode="every")
            img = numbered_frame(7)
            await s.submit(img)
            outs.append((img, await s.get(timeout=5)))
    assert replied_pixels == [False, False, False, True]  # only the thread that changed pixels sends them
    for img, f in outs[:3]:
        assert f.image is img
    assert tag(outs[3][1]) == 255 - 7
    assert outs[0][1].result["mean"] == pytest.approx(numbered_frame(7).mean())
