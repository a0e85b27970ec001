"""Cluster end to end with real servers and workers in separate processes."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

import ooblex as ob
from ooblex.cluster.engine import ClusterEngine
from ooblex.cluster.registry import CHUNK, Registry
from ooblex.jobs import NoWorkers

from .cluster_fixtures import (  # noqa: F401
    SECRET,
    needs_rabbitmq,
    needs_redis,
    rabbit_server,
    redis_server,
    start_worker,
    stop,
    wait_for,
)

pytestmark = [pytest.mark.timeout(120), needs_redis]


@ob.tensor_thread(name="invert")
def invert(frame: np.ndarray, amount: int = 255) -> np.ndarray:
    """Deployed by value: this module is not importable on the worker."""
    return (amount - frame.astype(np.int16)).clip(0, 255).astype(np.uint8)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)


async def stream_some(engine: ClusterEngine, thread: str, n: int = 10, **params) -> list:  # noqa: ANN003
    stream = engine.open(thread, mode="every", max_in_flight=4, params=params)
    img = np.full((96, 128, 3), 40, np.uint8)
    out = []

    async def feed() -> None:
        for _ in range(n):
            await stream.submit(img)

    feeder = asyncio.create_task(feed())
    for _ in range(n):
        out.append(await stream.get(timeout=20))
    await feeder
    await stream.close()
    return out


@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=needs_rabbitmq)])
async def test_deploy_and_stream_through_a_worker_process(kind, request) -> None:  # noqa: ANN001
    store = request.getfixturevalue("redis_server").url
    broker = store if kind == "redis" else request.getfixturevalue("rabbit_server").url
    worker = start_worker(broker, store)
    try:
        dep = ob.deploy(invert, cluster=broker, store=store, wait=20)
        assert dep.version >= 1 and dep.status()["serving"] == 1
        async with ClusterEngine(broker, store=store) as engine:
            await wait_for(lambda: "invert" in engine.threads, what="thread in engine")
            frames = await stream_some(engine, "invert", 8, amount=200)
        assert [f.seq for f in frames] == list(range(8))
        assert all(f.error is None for f in frames)
        assert abs(int(frames[0].image.mean()) - 160) <= 3  # 200 - 40, through JPEG
        st = dep.status()
        assert st["workers"][0]["host"] and st["refused"] == {}
    finally:
        stop(worker)


async def test_new_version_and_rollback_without_restart(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    worker = start_worker(url)
    try:
        v1 = ob.deploy(invert, cluster=url, wait=20)

        @ob.tensor_thread(name="invert")
        def invert2(frame: np.ndarray, amount: int = 255) -> np.ndarray:
            return np.full_like(frame, 7)

        t0 = time.monotonic()
        v2 = ob.deploy(invert2, cluster=url, wait=20)
        assert time.monotonic() - t0 < 2.5, "a worker should pick up a new version within ~2 s"
        async with ClusterEngine(url) as engine:
            await wait_for(lambda: "invert" in engine.threads)
            assert int((await stream_some(engine, "invert", 2))[-1].image.mean()) in range(5, 10)
            back = v2.rollback()
            assert back.version == v1.version
            await wait_for(lambda: back.status()["serving"] == 1, what="rollback served")
            await asyncio.sleep(0.6)  # the worker switches the plain name to v1
            assert int((await stream_some(engine, "invert", 2))[-1].image.mean()) in range(210, 220)
        ob.undeploy("invert", cluster=url)
        await wait_for(lambda: not any(q.startswith("invert") for q in Registry(url).records("worker")[0]["threads"]),
                       what="undeploy served")
    finally:
        stop(worker)


async def test_tampered_and_unsigned_artifacts_are_refused(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    worker = start_worker(url)
    reg = Registry(url)
    try:
        v1 = ob.deploy(invert, cluster=url, wait=20)
        dep = ob.deploy(invert, cluster=url, keep_versions=True, wait=20)
        manifest = dict(dep.manifest)
        manifest["requirements"] = ["evil-package"]  # changed after signing
        reg.r.hset("ooblex:reg:invert", str(dep.version), json.dumps(manifest))
        reg.r.incr("ooblex:reg:rev")
        unsigned = {k: v for k, v in v1.manifest.items() if k != "signature"}
        reg.r.hset("ooblex:reg:invert", str(v1.version), json.dumps(unsigned))
        reg.r.incr("ooblex:reg:rev")
        refused = await wait_for(lambda: len(dep.status()["refused"]) == 2 and dep.status()["refused"],
                                 what="refusals")
        reasons = " | ".join(refused.values())
        assert "bad signature" in reasons and "unsigned" in reasons
        assert dep.status()["serving"] == 0
    finally:
        reg.close()
        stop(worker)


async def test_a_thread_nobody_serves_says_no_workers(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    ob.deploy(invert, cluster=url)  # deployed, but no worker runs
    async with ClusterEngine(url) as engine:
        await wait_for(lambda: "invert" in engine.threads)
        stream = engine.open("invert", mode="live")
        await stream.submit(np.zeros((32, 32, 3), np.uint8))
        await wait_for(lambda: stream.status == "no workers", timeout=5, what="no workers status")
        assert stream.describe()["status"] == "no workers"


def test_deploy_without_a_secret_is_a_clear_error(redis_server, monkeypatch) -> None:  # noqa: F811, ANN001
    monkeypatch.delenv("OOBLEX_SECRET")
    with pytest.raises(PermissionError, match="OOBLEX_SECRET"):
        ob.deploy(invert, cluster=redis_server.url)


@ob.tensor_thread(name="stamp")
def stamp(frame: np.ndarray, delay_ms: float = 0.0) -> tuple[np.ndarray, dict]:
    """Slow enough that a job is still running when a worker is killed; reports who did it."""
    import os

    time.sleep(delay_ms / 1e3)
    return frame, {"pid": os.getpid(), "mean": float(frame.mean())}


def numbered_frames(n: int) -> list[np.ndarray]:
    """Frame i is uniformly 3*i: identifiable after JPEG (which may move a flat value by 1)."""
    assert n <= 85
    return [np.full((32, 32, 3), 3 * i, np.uint8) for i in range(n)]


@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=needs_rabbitmq)])
def test_job_survives_a_worker_killed_with_sigkill(kind, request) -> None:  # noqa: ANN001
    import signal
    import threading

    store = request.getfixturevalue("redis_server").url
    broker = store if kind == "redis" else request.getfixturevalue("rabbit_server").url
    a, b = start_worker(broker, store), start_worker(broker, store)
    try:
        ob.deploy(stamp, cluster=broker, store=store, wait=20).wait_ready(20, workers=2)
        n, killed = 80, threading.Event()

        def progress(done: int, total: int | None) -> None:
            if done >= 20 and not killed.is_set():
                killed.set()
                a.send_signal(signal.SIGKILL)

        result = ob.process("stamp", numbered_frames(n), cluster=broker, store=store, params={"delay_ms": 15},
                            progress=progress, max_in_flight=6)
        assert killed.is_set() and a.wait(5) == -signal.SIGKILL
        assert result.frames_in == result.frames_out == n
        assert [s for s, _ in result.results] == list(range(n))  # every frame once, in order
        assert [round(r["mean"] / 3) for _, r in result.results] == list(range(n))
        pids = {r["pid"] for _, r in result.results}
        assert pids == {a.pid, b.pid}, "both workers took part"
        assert result.errors == 0
    finally:
        stop(a)
        stop(b)


def test_two_workers_share_a_stream(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    a, b = start_worker(url), start_worker(url)
    try:
        ob.deploy(stamp, cluster=url).wait_ready(20, workers=2)
        result = ob.process("stamp", numbered_frames(60), cluster=url, params={"delay_ms": 20}, progress=False)
        per = {}
        for _, r in result.results:
            per[r["pid"]] = per.get(r["pid"], 0) + 1
        assert set(per) == {a.pid, b.pid} and min(per.values()) >= 15, per
    finally:
        stop(a)
        stop(b)


def test_process_with_nobody_serving_fails_clearly(redis_server) -> None:  # noqa: F811
    ob.deploy(stamp, cluster=redis_server.url)
    with pytest.raises(NoWorkers, match="no workers serve 'stamp'"):
        ob.process("stamp", numbered_frames(3), cluster=redis_server.url, progress=False, no_workers_s=2)


@pytest.mark.timeout(300)  # a RabbitMQ node starting twice takes a minute or more on a loaded 2-core machine
@pytest.mark.parametrize("kind", ["redis", pytest.param("rabbitmq", marks=needs_rabbitmq)])
async def test_streams_resume_after_a_broker_restart(kind) -> None:  # noqa: ANN001
    from ooblex.cluster.servers import RabbitMQServer, RedisServer

    store = RedisServer(persist=True).start()
    rabbit = RabbitMQServer().start() if kind == "rabbitmq" else None
    server = rabbit or store
    broker = server.url
    worker = start_worker(broker, store.url)
    try:
        ob.deploy(invert, cluster=broker, store=store.url, wait=20)
        async with ClusterEngine(broker, store=store.url) as engine:
            await wait_for(lambda: "invert" in engine.threads)
            stream = engine.open("invert", mode="live", max_latency_ms=300)
            arrivals: list[float] = []

            async def feed() -> None:
                img = np.zeros((48, 64, 3), np.uint8)
                while True:
                    await stream.submit(img)
                    await asyncio.sleep(0.03)

            async def read() -> None:
                while True:
                    await stream.get()
                    arrivals.append(time.monotonic())

            tasks = [asyncio.create_task(feed()), asyncio.create_task(read())]
            await wait_for(lambda: len(arrivals) > 10, what="frames before the restart")
            await asyncio.to_thread(server.restart)
            back = time.monotonic()
            await wait_for(lambda: arrivals[-1] > back, timeout=10, what="frames after the restart")
            resumed = arrivals[-1] - back
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert resumed < 5.0, f"stream resumed {resumed:.1f} s after the broker came back"
    finally:
        stop(worker)
        if rabbit is not None:
            rabbit.cleanup()
        store.cleanup()


@ob.tensor_thread(name="weighted")
def weighted(frame: np.ndarray) -> dict:
    """Reads a deployed weight file through ob.weight."""
    data = ob.weight("w.bin").read_bytes()
    return {"n": len(data), "sum": int(sum(data[:1000]))}


def test_weights_requirements_and_worker_record(redis_server, tmp_path) -> None:  # noqa: F811, ANN001
    url = redis_server.url
    blob = bytes(range(256)) * 9000  # ~2.3 MB: three chunks
    (tmp_path / "w.bin").write_bytes(blob)
    worker = start_worker(url, OOBLEX_CACHE=str(tmp_path / "cache"))
    try:
        dep = ob.deploy(weighted, cluster=url, weights=[tmp_path / "w.bin"], requirements=["numpy>=1.0"], wait=20)
        assert dep.manifest["weights"][0]["size"] == len(blob)
        out = ob.process("weighted", numbered_frames(2), cluster=url, progress=False)
        assert out.results[0][1] == {"n": len(blob), "sum": sum(blob[:1000])}
        assert len(list((tmp_path / "cache" / "blobs").iterdir())) == 2  # code + weights, cached by hash
        deadline = time.monotonic() + 5
        while (rec := Registry(url).records("worker")[0])["processed"] < 2 and time.monotonic() < deadline:
            time.sleep(0.2)  # the record is refreshed with each heartbeat (1 s)
        assert rec["processed"] == 2
        assert rec["threads"]["weighted"]["version"] == dep.version and rec["pid"] == worker.pid
        assert {"host", "load", "fps", "errors", "busy"} <= set(rec)
        bad = ob.deploy(weighted, cluster=url, requirements=["ooblex-no-such-package-xyz==9.9"])
        reason = await_refusal(bad)
        assert "pip install ooblex-no-such-package-xyz==9.9 failed" in reason
    finally:
        stop(worker)


def await_refusal(dep, timeout: float = 60.0) -> str:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        refused = dep.status()["refused"]
        if refused:
            return " | ".join(refused.values())
        time.sleep(0.2)
    raise AssertionError("no refusal reported")


def test_sigterm_finishes_in_flight_work(redis_server) -> None:  # noqa: F811
    """A worker told to stop mid-job finishes what it holds; another takes the rest; nothing is lost."""
    import signal
    import threading

    url = redis_server.url
    a = start_worker(url)
    b = None
    try:
        ob.deploy(stamp, cluster=url, wait=20)
        stopped = threading.Event()

        def progress(done: int, total: int | None) -> None:
            nonlocal b
            if done >= 5 and not stopped.is_set():
                stopped.set()
                a.send_signal(signal.SIGTERM)
                b = start_worker(url)

        out = ob.process("stamp", numbered_frames(30), cluster=url, params={"delay_ms": 100}, progress=progress,
                         max_in_flight=3)
        assert a.wait(20) == 0, "graceful exit"
        assert [s for s, _ in out.results] == list(range(30))
        assert [round(r["mean"] / 3) for _, r in out.results] == list(range(30))
        assert out.duplicates == 0, "in-flight frames were finished, not redelivered"
        assert {r["pid"] for _, r in out.results} == {a.pid, b.pid}
    finally:
        stop(a)
        if b is not None:
            stop(b)


def test_process_a_thread_object_deploys_it_once(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    worker = start_worker(url)
    try:
        first = ob.process(stamp, numbered_frames(4), cluster=url, progress=False)
        second = ob.process(stamp, numbered_frames(4), cluster=url, progress=False)
        assert first.frames_out == second.frames_out == 4
        assert ob.deployment("stamp", url).version == 1, "same code: no new version"
    finally:
        stop(worker)


async def test_workers_serve_identity_like_every_engine(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    worker = start_worker(url)
    try:
        async with ClusterEngine(url) as engine:
            async def served() -> bool:
                return await engine.broker.consumers("identity") > 0

            await wait_for(served, what="identity served")
            frames = await stream_some(engine, "identity", 3)
        assert [f.seq for f in frames] == [0, 1, 2] and all(f.error is None for f in frames)
    finally:
        stop(worker)


def test_deploy_cli_replaces_a_local_thread(redis_server, tmp_path) -> None:  # noqa: F811, ANN001
    """`ooblex deploy` publishes like ob.deploy; a deployed name shadows the worker's local thread."""
    import subprocess
    import sys

    from .cluster_fixtures import ROOT, env

    url = redis_server.url
    (tmp_path / "mythreads.py").write_text(
        "import ooblex as ob\n\n"
        "@ob.tensor_thread(name='identity')\n"
        "def tagged(frame):\n"
        "    return frame, {'deployed': True}\n")
    spec = f"{tmp_path / 'mythreads.py'}:tagged"
    worker = start_worker(url)
    try:
        out = subprocess.run([sys.executable, "-m", "ooblex", "deploy", spec, "--cluster", url, "--wait", "20"],
                             env=env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"version": 1' in out.stdout
        bad = subprocess.run([sys.executable, "-m", "ooblex", "deploy", spec, "--cluster", url],
                             env=env(OOBLEX_SECRET=""), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert bad.returncode == 2 and "OOBLEX_SECRET" in bad.stderr
        time.sleep(0.6)
        result = ob.process("identity", numbered_frames(3), cluster=url, progress=False)
        assert [r for _, r in result.results] == [{"deployed": True}] * 3
    finally:
        stop(worker)


def test_undeploy_collects_blobs_only_it_used(redis_server, tmp_path) -> None:  # noqa: F811
    """Weights shared with another deployment stay; the undeployed thread's own code and files go."""
    url = redis_server.url
    shared, own = tmp_path / "shared.bin", tmp_path / "own.bin"
    shared.write_bytes(b"s" * 3000)
    own.write_bytes(b"o" * (CHUNK + 10))  # two chunks

    @ob.tensor_thread(name="keeper")
    def keeper(frame):
        return frame

    reg = Registry(url)
    try:
        ob.deploy(keeper, cluster=url, weights=[shared])
        dep = ob.deploy(invert, cluster=url, weights=[shared, own])
        blobs = {k.decode().rsplit(":", 1)[1] for k in reg.r.scan_iter(match="ooblex:blob:*")}
        own_digest = next(w["sha256"] for w in dep.manifest["weights"] if w["name"] == "own.bin")
        assert {dep.manifest["code"], own_digest} <= blobs
        reg.remove("invert", gc_grace_s=3600)  # too young to collect: a deploy may be uploading
        assert reg.r.exists(f"ooblex:blob:{own_digest}")
        assert reg.collect_garbage(grace_s=0) == 2  # invert's code and own.bin
        left = {k.decode().rsplit(":", 1)[1] for k in reg.r.scan_iter(match="ooblex:blob:*")}
        keeper_manifest = reg.versions("keeper")[1]
        assert left == {keeper_manifest["code"], keeper_manifest["weights"][0]["sha256"]}
    finally:
        reg.close()


def test_one_broker_url_from_the_environment_everywhere(monkeypatch) -> None:
    """OOBLEX_BROKER wins over its alias OOBLEX_CLUSTER for the SDK, the CLI and the Jupyter extension alike."""
    from ooblex.broker import kind
    from ooblex.cli import build_parser
    from ooblex.cluster.config import resolve
    from ooblex_server_ext.cluster import Settings

    monkeypatch.setenv("OOBLEX_CLUSTER", "redis://alias:6379/0")
    monkeypatch.setenv("OOBLEX_BROKER", "redis://broker:6379/0")
    assert resolve().broker == Settings.from_env().cluster == "redis://broker:6379/0"
    assert build_parser().parse_args(["gateway"]).broker == "redis://broker:6379/0"
    monkeypatch.delenv("OOBLEX_BROKER")
    assert resolve().broker == Settings.from_env().cluster == "redis://alias:6379/0"
    assert [kind(u) for u in ("memory://", "rediss://h", "AMQP://h")] == ["memory", "redis", "rabbitmq"]
    with pytest.raises(ValueError, match="unknown broker URL 'kafka://u:\\*\\*\\*@h/'"):
        kind("kafka://u:pw@h/")
    with pytest.raises(ValueError, match="needs a network broker"):
        resolve("memory://")
