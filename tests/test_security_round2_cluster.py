"""Issue 21, points 5 and 7, against a real redis-server, real worker processes and a real gateway.

5. An ONNX model that names external data (to read another deployment's blob from the worker's
   cache) is refused at upload and again on the worker; errors name no path on the worker.
7. Rollback by replay: an old signed state (and an old high-water mark) written back to the store
   is refused by running workers, restarted ones, and fresh ones while a live peer vouches for the
   newer mark.
"""

from __future__ import annotations

import hashlib
import json
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
