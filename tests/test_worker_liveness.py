"""Worker liveness does not depend on work: a worker computing a slow frame keeps its heartbeat, so
the gateway never reads "no workers" and no other worker claims (and computes again) its frames.

Before the fix, with Redis, heartbeats ran only inside the task generator, which stops while the
worker's one-slot inbox is full: a 5 s/frame thread with 8 frames in flight had most frames computed
twice and the worker count read 0 most of the time. Both real brokers, two worker processes.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from .cluster_fixtures import ROOT, SECRET, needs_rabbitmq, needs_redis, start_worker, stop, wait_for
from .slow_thread import slow

pytestmark = [pytest.mark.timeout(150), needs_redis]
SLOW_S = 4.0  # longer than a heartbeat's lifetime (3 s)
FRAMES = 8


@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=needs_rabbitmq)])
async def test_slow_frames_are_computed_once_and_workers_stay_counted(kind: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from ooblex.cluster.engine import ClusterEngine
    from ooblex.cluster.servers import RabbitMQServer, RedisServer
    from ooblex.jobs import run_job

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    log = tmp_path / "computed.log"
    redis = RedisServer().start()
    rabbit = RabbitMQServer().start() if kind == "rabbitmq" else None
    broker = rabbit.url if rabbit else redis.url
    spec = str(ROOT / "tests" / "slow_thread.py") + ":slow"
    workers = [start_worker(broker, redis.url, "--thread", spec, OOBLEX_TEST_SLOW_S=str(SLOW_S),
                            OOBLEX_TEST_SLOW_LOG=str(log)) for _ in range(2)]
    try:
        async with ClusterEngine(broker, store=redis.url) as engine:
            engine.add_thread(slow)

            async def both_serving() -> bool:
                return await engine.workers("slow") == 2

            await wait_for(both_serving, 30, "both workers to take the queue")
            counts: list[int] = []

            async def sample() -> None:
                while True:
                    counts.append(await engine.workers("slow"))
                    await asyncio.sleep(0.25)

            sampler = asyncio.create_task(sample())
            frames = [np.full((48, 64, 3), 10 * (i + 1), np.uint8) for i in range(FRAMES)]
            started = time.monotonic()
            result = await run_job(engine, "slow", frames, max_in_flight=FRAMES, no_workers_s=30)
            elapsed = time.monotonic() - started
            sampler.cancel()
        assert result.frames_out == FRAMES and not result.errors
        computed = [int(line) for line in log.read_text().split()]
        assert sorted(computed) == list(range(1, FRAMES + 1)), \
            f"each frame must be computed exactly once, got {sorted(computed)} in {elapsed:.1f} s"
        assert counts and min(counts) >= 1, f"the worker count read {counts.count(0)} zeros of {len(counts)}"
    finally:
        for w in workers:
            stop(w)
        if rabbit:
            rabbit.cleanup()
        redis.cleanup()


async def test_the_worker_record_stays_alive_while_a_deploy_loads_slowly(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    """Loading a version (requirements, weights) can take minutes; the worker's record must not lapse meanwhile."""
    import ooblex as ob
    from ooblex.cluster import artifacts
    from ooblex.cluster.node import WorkerNode
    from ooblex.cluster.registry import Registry
    from ooblex.cluster.servers import RedisServer

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    load = artifacts.load
    loading = {"now": False}

    def slow_load(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        loading["now"] = True
        time.sleep(4.0)  # > the record's lifetime (3 heartbeats of 0.5 s)
        return load(*args, **kwargs)

    monkeypatch.setattr(artifacts, "load", slow_load)
    redis = RedisServer().start()
    reg = Registry(redis.url)
    node = WorkerNode(redis.url, redis.url, cache=tmp_path, heartbeat_s=0.5)
    stop_node = asyncio.Event()
    task = asyncio.create_task(node.run(stop_node))
    try:
        await wait_for(lambda: reg.records("worker"), 20, "the worker's first record")
        ob.deploy(slow, cluster=redis.url)
        await wait_for(lambda: loading["now"], 20, "the load to start")
        seen = []
        while "slow" not in node.queues:
            seen.append(len(reg.records("worker")))
            await asyncio.sleep(0.25)
        assert seen and min(seen) == 1, f"the record lapsed while the deploy loaded: {seen}"
    finally:
        stop_node.set()
        await task
        reg.close()
        redis.cleanup()
