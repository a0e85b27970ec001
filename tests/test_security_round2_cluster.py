"""Issue 21, points 5 and 7, against a real redis-server, real worker processes and a real gateway.

5. An ONNX model that names external data (to read another deployment's blob from the worker's
   cache) is refused at upload and again on the worker; errors name no path on the worker.
7. Rollback by replay: an old signed state (and an old high-water mark) written back to the store
   is refused by running workers, restarted ones, and fresh ones while a live peer vouches for the
   newer mark.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

import ooblex as ob
from ooblex import jpeg
from ooblex.cluster.deploy import describe, pickle_thread, thread_status
from ooblex.cluster.registry import Registry
from ooblex.gateway import Settings
from ooblex.tokens import mint

from .cluster_fixtures import SECRET, needs_redis, redis_server, start_worker, stop, wait_for  # noqa: F401
from .gateway_server import running_gateway

pytestmark = [pytest.mark.timeout(240), needs_redis]
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from ooblex.adapters.onnx import from_weight  # noqa: E402

SHAPE = ["N", 3, "H", "W"]
#: What the victim deployment's weight file holds: it must never come back to anyone.
SECRET_BYTES = b"TOPSECRET-" * 400


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)


@ob.tensor_thread(name="victim")
def victim(frame: np.ndarray) -> np.ndarray:
    return frame


def external(name: str, location: str, n: int = 4) -> TensorProto:
    """A float tensor whose data onnxruntime would read from ``location`` (relative to the model's folder)."""
    t = helper.make_tensor(name, TensorProto.FLOAT, [n], [0.0] * n)
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * n))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def model(nodes: list, inits: list = (), sparse: list = (), functions: list = ()) -> bytes:  # type: ignore[assignment]
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, SHAPE)], list(inits),
                              sparse_initializer=list(sparse))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)],
                          functions=list(functions))
    m.ir_version = 9
    return m.SerializeToString()


def attacks(location: str) -> dict[str, bytes]:
    """Every place a tensor can hide in an ONNX model, each naming ``location`` as its external data."""
    add = helper.make_node("Add", ["x", "w"], ["y"])
    branch = helper.make_graph([helper.make_node("Constant", [], ["w"], value=external("deep", location))], "then",
                               [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])])
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c_out"]),
                              helper.make_node("Identity", ["k"], ["scan"])], "body",
                             [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                              helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
                              helper.make_tensor_value_info("scan", TensorProto.FLOAT, [4])],
                             [external("k", location)])
    one = helper.make_tensor("one", TensorProto.BOOL, [], [True])
    func = helper.make_function("local", "leak", ["a"], ["b"], [
        helper.make_node("Constant", [], ["k"], value=external("fk", location)),
        helper.make_node("Add", ["a", "k"], ["b"])], [helper.make_opsetid("", 18)])
    return {
        "initializer": model([add], [external("w", location)]),
        "Constant node": model([helper.make_node("Constant", [], ["w"], value=external("c", location)), add]),
        "sparse initializer": model([add], sparse=[helper.make_sparse_tensor(
            external("w", location), helper.make_tensor("i", TensorProto.INT64, [4], [0, 1, 2, 3]), [4])]),
        "If branch": model([helper.make_node("If", ["one"], ["w"], then_branch=branch, else_branch=branch), add],
                           [one]),
        "Loop body": model([helper.make_node("Loop", ["", "one"], ["w"], body=body), add], [one]),
        "local function": model([helper.make_node("leak", ["x"], ["y"], domain="local")], functions=[func]),
    }


async def frame_of(http: httpx.AsyncClient, thread: str, headers: dict) -> dict[str, Any]:
    img = np.full((16, 16, 3), 100, np.uint8)
    r = await http.post(f"/api/v1/frames/{thread}?output=json", content=jpeg.encode(img),
                        headers={**headers, "Content-Type": "image/jpeg"})
    assert r.status_code == 200, r.text
    return r.json()


@needs_redis
async def test_onnx_models_cannot_read_files_on_workers(redis_server, tmp_path: Path) -> None:  # noqa: F811
    url = redis_server.url
    cache = tmp_path / "worker-cache"
    (tmp_path / "secret.bin").write_bytes(SECRET_BYTES)
    digest = hashlib.sha256(SECRET_BYTES).hexdigest()
    ob.deploy(victim, cluster=url, weights=[tmp_path / "secret.bin"])
    control = {"Authorization": f"Bearer {mint('control', secret=SECRET)}"}
    reg = Registry(url, SECRET)
    worker = start_worker(url, OOBLEX_CACHE=str(cache))
    try:
        with running_gateway(broker=url, settings=Settings(secret=SECRET, max_upload_bytes=4 << 20)) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                # 1. the console refuses each of them, and stores nothing
                for where, body in attacks(digest).items():
                    r = await http.post("/api/v1/cluster/deployments/onnx", headers=control, data={"name": "leak"},
                                        files={"model": ("leak.onnx", body, "application/octet-stream")})
                    assert r.status_code == 400 and "external data" in r.json()["detail"], (where, r.text)
                ep = model([helper.make_node("EPContext", ["x"], ["y"], domain="com.microsoft", embed_mode=0,
                                             ep_cache_context=f"../blobs/{digest}")])
                r = await http.post("/api/v1/cluster/deployments/onnx", headers=control, data={"name": "leak"},
                                    files={"model": ("leak.onnx", ep, "application/octet-stream")})
                assert r.status_code == 400 and "EPContext" in r.json()["detail"], r.text
                assert reg.versions("leak") == {}

                # 2. signed by a secret holder (or a gateway from before the check): the worker refuses the weight
                body = attacks(digest)["initializer"]
                for name, weight in (("leak", "leak.onnx"), ("leak2", "leak.bin")):
                    thread = from_weight(weight, name=name, warmup=None)
                    reg.publish_code(name, describe(thread), pickle_thread(thread),
                                     weights=[{"name": weight, "sha256": reg.put_blob(body), "size": len(body)}])

                async def refusal() -> str | None:
                    return next(iter(thread_status(reg, "leak")["refused"].values()), None)

                why = await wait_for(refusal, timeout=60, what="the worker refusing leak.onnx")
                assert "external data" in why and str(tmp_path) not in why and "/blobs/" not in why, why
                # named otherwise, the weight is loaded, but the model is checked where it is opened (from bytes)
                await wait_for(lambda: thread_status(reg, "leak2")["serving"], timeout=60, what="leak2 served")
                out = await frame_of(http, "leak2", control)
                assert "external data" in out["error"] and str(tmp_path) not in out["error"], out
                assert "TOPSECRET" not in json.dumps(out)

                # 3. a model onnxruntime cannot load: the error names no path on the worker
                bogus = model([helper.make_node("NoSuchOp", ["x"], ["y"])])
                r = await http.post("/api/v1/cluster/deployments/onnx", headers=control, data={"name": "bogus"},
                                    files={"model": ("bogus.onnx", bogus, "application/octet-stream")})
                assert r.status_code == 201, r.text
                await wait_for(lambda: thread_status(reg, "bogus")["serving"], timeout=60, what="bogus served")
                out = await frame_of(http, "bogus", control)
                assert "onnxruntime cannot load" in out["error"] and str(tmp_path) not in out["error"], out
                assert "/blobs/" not in out["error"], out
    finally:
        reg.close()
        stop(worker)


# --- 7. rollback by replay -------------------------------------------------------------------

STATE_KEY, MARK_KEY, REV = "ooblex:reg:roll:state", "ooblex:reg:mark", "ooblex:reg:rev"


@ob.tensor_thread(name="roll")
def roll_v1(frame: np.ndarray) -> np.ndarray:
    return frame


@ob.tensor_thread(name="roll")
def roll_v2(frame: np.ndarray) -> tuple[np.ndarray, dict]:
    return frame, {"v": 2}


def record(reg: Registry, pid: int, timeout: float = 60.0) -> dict:
    """Worker ``pid``'s record once it has certainly synced after now: the second one written from now on."""
    deadline, seen = time.monotonic() + timeout, time.time()
    for _ in range(2):
        while True:
            rec = next((r for r in reg.records("worker") if r["pid"] == pid), None)
            if rec is not None and rec["heartbeat"] > seen:
                seen = rec["heartbeat"]
                break
            assert time.monotonic() < deadline, f"no fresh record of worker {pid}"
            time.sleep(0.1)
    return rec


def served(reg: Registry, pid: int) -> int | None:
    """The version worker ``pid`` serves under the plain name ``roll`` (None: none)."""
    t = record(reg, pid)["threads"].get("roll")
    return t and t["version"]


def replay(reg: Registry, old: dict[str, bytes]) -> None:
    """What someone who can write to the store does: write old signed documents back."""
    reg.r.mset({k: v for k, v in old.items() if v is not None})
    reg.r.incr(REV)


def test_a_worker_or_gateway_started_after_a_replay_refuses_the_old_state(redis_server, tmp_path: Path) -> None:  # noqa: F811
    url = redis_server.url
    reg = Registry(url, SECRET)
    a = start_worker(url, OOBLEX_CACHE=str(tmp_path / "a"))
    b = None
    try:
        ob.deploy(roll_v1, cluster=url, wait=60)
        old = {STATE_KEY: reg.r.get(STATE_KEY), MARK_KEY: reg.r.get(MARK_KEY)}
        ob.deploy(roll_v2, cluster=url, wait=60)
        current = {STATE_KEY: reg.r.get(STATE_KEY), MARK_KEY: reg.r.get(MARK_KEY)}
        assert served(reg, a.pid) == 2
        replay(reg, old)
        assert served(reg, a.pid) == 2, "a running worker ignores it"

        b = start_worker(url, OOBLEX_CACHE=str(tmp_path / "b"))  # started afterwards: it has only the store
        rec = record(reg, b.pid)
        assert "roll" not in rec["threads"] and "roll@1" not in rec["threads"], rec["threads"]
        assert "a live worker or gateway reports" in rec["mark_refused"], rec
        assert rec["mark"] == record(reg, a.pid)["mark"], "it took the floor its live peer vouched for"

        async def fresh_gateway() -> set[str]:
            from ooblex.cluster.engine import ClusterEngine

            async with ClusterEngine(url) as engine:
                await engine.sync()
                return {q for q in engine.threads if q.startswith("roll")}

        assert asyncio.run(fresh_gateway()) == set(), "a gateway started afterwards offers no old version either"
        assert Registry(url, SECRET).active("roll") is None, "nor does a fresh deployer's view"
        with pytest.raises(PermissionError, match="cannot tell which version of 'roll' is deployed: .*written back"):
            ob.deployment("roll", url)

        replay(reg, {STATE_KEY: old[STATE_KEY], MARK_KEY: current[MARK_KEY]})  # the old state under today's mark
        assert served(reg, b.pid) is None, "a state older than the mark names is refused"
        assert asyncio.run(fresh_gateway()) == set()
        replay(reg, current)  # the store put right: the new worker serves the newest version
        assert served(reg, b.pid) == 2 and served(reg, a.pid) == 2
    finally:
        reg.close()
        for w in (a, b):
            if w is not None:
                stop(w)


def test_a_restarted_worker_keeps_its_floor_and_deploys_never_build_on_a_replay(redis_server, tmp_path: Path) -> None:  # noqa: F811
    url = redis_server.url
    reg = Registry(url, SECRET)
    cache = str(tmp_path / "a")
    a = start_worker(url, OOBLEX_CACHE=cache)
    try:
        ob.deploy(roll_v1, cluster=url, wait=60)
        old = {STATE_KEY: reg.r.get(STATE_KEY), MARK_KEY: reg.r.get(MARK_KEY)}
        ob.deploy(roll_v2, cluster=url, wait=60)
        assert served(reg, a.pid) == 2
        floors = list((tmp_path / "a" / "floors").glob("*.json"))
        assert len(floors) == 1 and json.loads(floors[0].read_text())["counter"] == record(reg, a.pid)["mark"]

        replay(reg, old)
        with pytest.raises(PermissionError, match="cannot change 'roll': .*a live worker or gateway reports"):
            ob.deploy(roll_v1, cluster=url)  # a deployer never signs a replayed mark as current
        assert reg.r.mget([STATE_KEY, MARK_KEY]) == [old[STATE_KEY], old[MARK_KEY]], "nothing was written"
        stop(a)  # no live peer left to vouch for the newer mark
        a = start_worker(url, OOBLEX_CACHE=cache)  # the same machine, restarted
        rec = record(reg, a.pid)
        assert "roll" not in rec["threads"] and "the newest this machine has seen" in rec["mark_refused"], rec

        reg.r.delete(MARK_KEY)  # the documented way out: drop the mark, deploy again
        v3 = ob.deploy(roll_v2, cluster=url, wait=60)
        assert v3.version > 2 and served(reg, a.pid) == v3.version
        assert record(reg, a.pid)["mark_refused"] is None
    finally:
        reg.close()
        stop(a)


async def test_a_gateways_record_vouches_for_the_mark_too(redis_server) -> None:  # noqa: F811
    """No worker at all: the one live gateway's signed record is what makes a new reader refuse the replay."""
    from ooblex.cluster.engine import ClusterEngine

    url = redis_server.url
    ob.deploy(roll_v1, cluster=url)
    reg = Registry(url, SECRET)
    old = {STATE_KEY: reg.r.get(STATE_KEY), MARK_KEY: reg.r.get(MARK_KEY)}
    ob.deploy(roll_v2, cluster=url)
    try:
        async with ClusterEngine(url, public_url="http://gateway.test:8800", poll_s=0.1) as engine:
            await wait_for(lambda: "roll" in engine.threads, what="the gateway offering roll")
            counter = engine.registry.marks.floor
            await wait_for(lambda: [g["mark"] for g in reg.records("gateway")] == [counter], what="its record")
            replay(reg, old)
            fresh = Registry(url, SECRET)
            assert fresh.active("roll") is None and "a live worker or gateway reports" in fresh.marks.refused
            assert fresh.marks.floor == counter
            await asyncio.sleep(0.3)
            assert engine.threads["roll"].version == 2, "the running gateway ignores it"
    finally:
        reg.close()
