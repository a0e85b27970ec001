"""The console's JSON endpoints and uploads against a real cluster: redis-server, an ``ooblex worker``
process and a gateway (uvicorn) in front of them; artifact files and their checks; stream history."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

import ooblex as ob
from ooblex import jpeg
from ooblex.cluster import bundle
from ooblex.cluster.registry import Registry
from ooblex.cluster.signing import SignatureError, sign
from ooblex.errors import PayloadTooLarge
from ooblex.gateway import Settings
from ooblex.gateway.history import History
from ooblex.tokens import mint

from .cluster_fixtures import SECRET, needs_redis, redis_server, start_worker, stop  # noqa: F401
from .gateway_server import running_gateway

pytestmark = [pytest.mark.timeout(180)]


@ob.tensor_thread(name="shade", params={"amount": {"min": 0, "max": 255}})
def shade(frame: np.ndarray, amount: int = 255) -> np.ndarray:
    """v1: a negative (deployed by value: this module is not importable on the worker)."""
    return (amount - frame.astype(np.int16)).clip(0, 255).astype(np.uint8)


@ob.tensor_thread(name="shade")
def shade_v2(frame: np.ndarray) -> np.ndarray:
    """v2: darker."""
    return frame // 2


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    weights = tmp_path / "table.bin"
    weights.write_bytes(bytes(range(256)) * 10)
    return ob.deploy(shade, export=tmp_path / "shade.ooblex", weights=[weights], requirements=["numpy"],
                     license="Apache-2.0", secret=SECRET)


@pytest.fixture
def files(artifact: Path, tmp_path: Path) -> dict[str, bytes]:
    """The uploads the API test sends, read here (not in the async test)."""
    def unsign(name: str, data: bytes) -> bytes:
        return json.dumps({k: v for k, v in json.loads(data).items() if k != "signature"}).encode() \
            if name == "manifest.json" else data

    return {"artifact": artifact.read_bytes(),
            "unsigned": _rezip(artifact, tmp_path / "u.ooblex", unsign).read_bytes(),
            "other": ob.deploy(shade, export=tmp_path / "other.ooblex", secret="another-secret-123456789").read_bytes(),
            "other_python": _rezip(artifact, tmp_path / "py.ooblex", _from_python_3_99).read_bytes(),
            "model": tiny_onnx(tmp_path / "invert.onnx").read_bytes(),
            "fixed": tiny_onnx(tmp_path / "fixed.onnx", (1, 3, 64, 64)).read_bytes()}


def _from_python_3_99(name: str, data: bytes) -> bytes:
    """The artifact's manifest as another Python would have exported it (signed again with the secret)."""
    if name != "manifest.json":
        return data
    doc = {k: v for k, v in json.loads(data).items() if k != "signature"}
    return json.dumps(sign({**doc, "name": "oldpy", "python": "3.99"}, SECRET.encode(), bundle.BUNDLE)).encode()


def _rezip(src: Path, dst: Path, change) -> Path:  # noqa: ANN001
    """A copy of the artifact with ``change(name, data) -> data | None`` applied to each member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


def test_an_exported_artifact_verifies_and_says_what_it_is(artifact: Path) -> None:
    with artifact.open("rb") as f:
        b = bundle.read(f, SECRET, max_unpacked_bytes=1 << 20)
        m = b.manifest
        assert m["name"] == "shade" and m["license"] == "Apache-2.0" and m["requirements"] == ["numpy"]
        assert m["weights"][0]["name"] == "table.bin" and m["weights"][0]["size"] == 2560
        assert m["deployed_by"]["via"] == "export" and m["deployed_by"]["host"]
        assert [p["name"] for p in m["meta"]["params"]] == ["amount"]


def test_artifacts_that_are_forged_damaged_or_too_big_are_refused(artifact: Path, tmp_path: Path) -> None:
    def opened(path: Path, secret: str = SECRET, limit: int = 1 << 20):  # noqa: ANN202
        with path.open("rb") as f:
            return bundle.read(f, secret, max_unpacked_bytes=limit)

    with pytest.raises(SignatureError, match="bad signature"):
        opened(artifact, secret="another-secret-0123456789")
    with pytest.raises(SignatureError, match="no OOBLEX_SECRET"):
        opened(artifact, secret="")

    def unsign(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        doc = json.loads(data)
        doc.pop("signature")
        return json.dumps(doc).encode()

    with pytest.raises(SignatureError, match="unsigned"):
        opened(_rezip(artifact, tmp_path / "unsigned.ooblex", unsign))

    def more_requirements(name: str, data: bytes) -> bytes:
        if name != "manifest.json":
            return data
        doc = json.loads(data)
        doc["requirements"].append("evil-package")
        return json.dumps(doc).encode()

    with pytest.raises(SignatureError, match="bad signature"):
        opened(_rezip(artifact, tmp_path / "edited.ooblex", more_requirements))
    with pytest.raises(bundle.NotAnArtifact, match="does not match the hash"):
        opened(_rezip(artifact, tmp_path / "code.ooblex", lambda n, d: d + b"x" if n == "code.pkl" else d))
    with pytest.raises(bundle.NotAnArtifact, match="do not match its manifest"):
        opened(_rezip(artifact, tmp_path / "noweights.ooblex", lambda n, d: None if n.startswith("weights/") else d))
    with pytest.raises(bundle.NotAnArtifact, match="not a zip"):
        (tmp_path / "text.ooblex").write_text("hello")
        opened(tmp_path / "text.ooblex")
    with pytest.raises(PayloadTooLarge, match="unpacks to"):
        opened(artifact, limit=1000)


def test_history_has_one_point_per_second_no_spikes_and_nulls_for_missing_seconds() -> None:
    """The console's charts: a timer firing early adds no second point (nor a 1000 fps one), a new stream's
    first partial second and a counter reset make no spike, and a second nobody sampled is a gap."""
    async def main() -> None:
        async with ob.Engine("memory://", threads=[shade]) as engine:
            stream = engine.open("shade", mode="every", max_in_flight=2)
            history = History(seconds=60)
            img = np.zeros((48, 64, 3), np.uint8)

            async def frames(n: int) -> None:
                for _ in range(n):
                    await stream.submit(img, captured=time.time())
                    await stream.get(timeout=10)

            t0 = round(time.time()) + 1
            await frames(3)
            history.sample(engine.streams.values(), now=stream.created + 0.001)  # a stream 1 ms old, 3 frames
            first = history.since()[stream.id]
            assert first["fps"] == [3.0] and first["fps_in"] == [3.0]
            await frames(5)
            history.sample(engine.streams.values(), now=t0 + 0.9995)  # woke just before the second...
            await frames(1)
            history.sample(engine.streams.values(), now=t0 + 1.0001)  # ...and again just after it
            cols = history.since(t0)[stream.id]
            assert cols["t"] == [t0 + 1] and cols["fps"][0] <= 5.0, cols
            stream.stats.counters["processed"] = 0  # as a restarted stream's counters are
            await frames(2)
            history.sample(engine.streams.values(), now=t0 + 4)  # seconds t0+2 and t0+3 were never sampled
            cols = history.since(t0 + 1)[stream.id]
            assert cols["t"] == [t0 + 2, t0 + 3, t0 + 4]
            assert cols["fps"][:2] == [None, None] and cols["compute"][:2] == [None, None]
            assert 0 <= cols["fps"][2] <= 3.0  # counted from the reset: no negative rate, no spike
            everything = history.since()[stream.id]["t"]
            assert len(everything) == len(set(everything)) and everything == sorted(everything)

    asyncio.run(main())


def test_history_keeps_per_second_aggregates_in_a_ring() -> None:
    async def main() -> None:
        async with ob.Engine("memory://", threads=[shade]) as engine:
            stream = engine.open("shade", mode="every", max_in_flight=2)
            history = History(seconds=3)
            img = np.zeros((48, 64, 3), np.uint8)
            t0 = round(time.time())
            for second in range(5):
                for _ in range(4):
                    await stream.submit(img, captured=time.time())
                    await stream.get(timeout=10)
                history.sample(engine.streams.values(), now=t0 + second + 1)
            cols = history.since()[stream.id]
            assert cols["thread"] == "shade" and len(cols["t"]) == 3  # the ring holds history_s samples
            assert cols["t"] == [t0 + 3, t0 + 4, t0 + 5]  # whole seconds
            assert cols["fps"] == [4.0, 4.0, 4.0] and cols["dropped"] == [0, 0, 0]
            assert all(v is not None and v >= 0 for v in cols["compute"] + cols["total"] + cols["total_p95"])
            assert list(history.since(t0 + 4.5)[stream.id]["t"]) == [t0 + 5]
            history.sample(engine.streams.values(), now=t0 + 6)  # a second without frames: no latency
            assert history.since(t0 + 5.5)[stream.id]["compute"] == [None]
            await stream.close()
            history.sample(engine.streams.values(), now=t0 + 7)
            assert history.since() == {}  # a closed stream's history goes with it

    asyncio.run(main())


def tiny_onnx(path: Path, shape: tuple = ("N", 3, "H", "W")) -> Path:
    """An ONNX model that inverts a float image batch: y = 1 - x (default input N x 3 x H x W, any size)."""
    import onnx
    from onnx import TensorProto, helper

    shape = list(shape)
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    graph = helper.make_graph([helper.make_node("Sub", ["one", "x"], ["y"])], "invert",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], [one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


async def _until(fn, timeout: float = 60.0, what: str = "condition"):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await fn()
        if value:
            return value
        await asyncio.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@needs_redis
async def test_console_api_deploys_uploads_rolls_back_and_undeploys(
        redis_server, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    control = {"Authorization": f"Bearer {mint('control', secret=SECRET)}"}
    worker = start_worker(redis_server.url)
    try:
        settings = Settings(secret=SECRET, max_upload_bytes=4 << 20)
        with running_gateway(broker=redis_server.url, settings=settings) as gw:
            async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
                async def cluster() -> dict:
                    r = await http.get("/api/v1/cluster", headers=control)
                    assert r.status_code == 200, r.text
                    return r.json()

                async def served(version: int) -> dict | None:
                    deps = {d["name"]: d for d in (await cluster())["deployments"]}
                    d = deps.get("shade")
                    return d if d and d["active"] == version and d["serving"] >= 1 else None

                # nothing without a control token
                assert (await http.get("/api/v1/cluster")).status_code == 401
                publish = {"Authorization": f"Bearer {mint('publish', secret=SECRET)}"}
                assert (await http.get("/api/v1/cluster", headers=publish)).status_code == 403
                r = await http.post("/api/v1/cluster/deployments", content=files["artifact"],
                                    headers={"Content-Type": bundle.MEDIA_TYPE})
                assert r.status_code == 401

                # v1 from the artifact, served by the worker process
                r = await http.post("/api/v1/cluster/deployments", content=files["artifact"],
                                    headers={**control, "Content-Type": bundle.MEDIA_TYPE})
                assert r.status_code == 201, r.text
                assert r.json()["version"] == 1 and r.json()["deployed_by"]["uploaded"]["via"] == "console"
                d = await _until(lambda: served(1), what="the worker serving shade@1")
                v1 = d["versions"][0]
                assert {w["queue"] for w in v1["workers"]} == {"shade", "shade@1"}  # two queues...
                assert d["serving"] == 1  # ...of one worker process
                assert v1["verified"] and v1["license"] == "Apache-2.0" and v1["requirements"] == ["numpy"]
                assert v1["deployed_by"]["via"] == "export" and v1["workers"][0]["queue"] in ("shade", "shade@1")
                w = (await cluster())["workers"][0]
                assert w["ooblex"] == ob.__version__ and w["cpu"]["count"] >= 1 and w["heartbeat_age_s"] < 5
                assert "shade" in w["served"] and "gpus" in w

                # v2 deployed from Python; then roll back to 1 through the console API
                ob.deploy(shade_v2, cluster=redis_server.url)
                await _until(lambda: served(2), what="shade@2")
                r = await http.post("/api/v1/cluster/deployments/shade/activate", json={"version": 1}, headers=control)
                assert r.status_code == 200, r.text
                await _until(lambda: served(1), what="rollback to shade@1")
                img = np.full((32, 32, 3), 200, np.uint8)
                r = await http.post("/api/v1/frames/shade", content=jpeg.encode(img), headers={
                    **control, "Content-Type": "image/jpeg"})
                assert r.status_code == 200 and abs(int(jpeg.decode(r.content).mean()) - 55) < 6  # v1: negative
                for body, code in (({"version": 99}, 404), ({"version": "1"}, 400), ({}, 400)):
                    r = await http.post("/api/v1/cluster/deployments/shade/activate", json=body, headers=control)
                    assert r.status_code == code, (body, r.text)
                r = await http.post("/api/v1/cluster/deployments/shade/activate", content=b'{"version": 1}',
                                    headers={**control, "Content-Type": "text/plain"})
                assert r.status_code == 415

                # an ONNX model with its transform, wrapped and signed by the gateway
                model, fixed = files["model"], files["fixed"]
                r = await http.post("/api/v1/cluster/deployments/onnx", headers=control,
                                    files={"model": ("invert.onnx", model, "application/octet-stream")},
                                    data={"name": "onnx_invert", "layout": "nchw", "license": "MIT"})
                assert r.status_code == 201, r.text
                assert r.json()["requirements"] == ["onnxruntime>=1.17"]
                await _until(lambda: _serving(cluster, "onnx_invert"), what="the worker serving onnx_invert")
                r = await http.post("/api/v1/frames/onnx_invert", content=jpeg.encode(img), headers={
                    **control, "Content-Type": "image/jpeg"})
                assert r.status_code == 200, r.text
                assert abs(int(jpeg.decode(r.content).mean()) - 55) < 6, "1 - x, scaled back to pixels"

                # a signed artifact the worker cannot load: the refusal, its reason and next retry are listed
                r = await http.post("/api/v1/cluster/deployments", content=files["other_python"],
                                    headers={**control, "Content-Type": bundle.MEDIA_TYPE})
                assert r.status_code == 201, r.text

                async def refused() -> dict | None:
                    d = next((d for d in (await cluster())["deployments"] if d["name"] == "oldpy"), None)
                    return d if d and d["refused"] else None

                d = await _until(refused, what="the worker refusing oldpy@1")
                why = d["versions"][0]["refused"][0]
                assert "Python 3.99" in why["reason"] and why["attempts"] >= 1 and why["retry_at"] > time.time()
                assert d["serving"] == 0 and d["versions"][0]["verified"]

                # bad uploads: clear 4xx, nothing stored
                before = Registry(redis_server.url, SECRET).versions("shade")
                bad = [
                    (b"not a zip at all", bundle.MEDIA_TYPE, 400, "not a zip"),
                    (files["unsigned"], bundle.MEDIA_TYPE, 403, "unsigned"),
                    (files["other"], bundle.MEDIA_TYPE, 403, "bad signature"),
                    (b"x" * (5 << 20), bundle.MEDIA_TYPE, 413, "limit"),
                    (files["artifact"], "application/json", 415, "artifact"),
                ]
                for body, ctype, code, words in bad:
                    r = await http.post("/api/v1/cluster/deployments", content=body,
                                        headers={**control, "Content-Type": ctype})
                    assert r.status_code == code and words in r.json()["detail"], (code, r.text)
                zipped = io.BytesIO()
                with zipfile.ZipFile(zipped, "w") as z:
                    z.writestr("readme.txt", "hi")
                r = await http.post("/api/v1/cluster/deployments", content=zipped.getvalue(),
                                    headers={**control, "Content-Type": "application/zip"})
                assert r.status_code == 400 and "not an Ooblex artifact" in r.json()["detail"]
                r = await http.post("/api/v1/cluster/deployments", content=files["artifact"],
                                    headers={**control, "Content-Type": bundle.MEDIA_TYPE,
                                             "Origin": "http://evil.example"})
                assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
                for data, field, body, words in (
                        ({"name": "x"}, "model", b"garbage", "not an ONNX"),
                        ({"name": "x", "layout": "nhwc"}, "model", fixed, "64 channels"),
                        ({"name": "x", "width": "32", "height": "32"}, "model", fixed, "does not fit"),
                        ({"name": "x", "layout": "sideways"}, "model", model, "layout"),
                        ({"name": "x", "mean": "1,2"}, "model", model, "mean"),
                        ({}, "model", model, "'name'"),
                        ({"name": "x"}, "picture", model, "'model'"),
                        ({"name": "x", "colour": "red"}, "model", model, "unknown")):
                    r = await http.post("/api/v1/cluster/deployments/onnx", headers=control, data=data,
                                        files={field: ("m.onnx", body, "application/octet-stream")})
                    assert r.status_code == 400 and words in r.json()["detail"], (data, r.text)
                r = await http.post("/api/v1/cluster/deployments/onnx", headers={**control, "Content-Type":
                                    "application/octet-stream"}, content=model)
                assert r.status_code == 415
                assert Registry(redis_server.url, SECRET).versions("shade") == before

                # undeploy; the second time there is nothing to undeploy
                assert (await http.delete("/api/v1/cluster/deployments/shade", headers=control)).status_code == 200
                r = await http.delete("/api/v1/cluster/deployments/shade", headers=control)
                assert r.status_code == 404 and "not deployed" in r.json()["detail"]
                await _until(lambda: _gone(cluster, "shade"), what="shade undeployed")
    finally:
        stop(worker)


async def _serving(cluster, name: str) -> bool:  # noqa: ANN001
    return any(d["name"] == name and d["serving"] >= 1 for d in (await cluster())["deployments"])


async def _gone(cluster, name: str) -> bool:  # noqa: ANN001
    c = await cluster()
    return all(d["name"] != name for d in c["deployments"]) and all(
        "shade" not in w["served"] for w in c["workers"])


def test_a_gateway_without_a_cluster_shows_streams_only() -> None:
    with running_gateway(threads=[shade]) as gw:
        r = httpx.get(gw.url + "/api/v1/cluster")
        assert r.status_code == 200 and r.json()["cluster"] is False
        r = httpx.post(gw.url + "/api/v1/cluster/deployments", content=b"x",
                       headers={"Content-Type": bundle.MEDIA_TYPE})
        assert r.status_code == 409 and "not a cluster" in r.json()["detail"]
        r = httpx.get(gw.url + "/console")
        assert r.status_code == 200 and "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert httpx.get(gw.url + "/api/v1/history").json()["streams"] == {}


@needs_redis
async def test_history_is_cluster_wide_and_a_streams_history_is_forwarded_to_its_gateway(
        redis_server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two gateways on one cluster: the console on either charts the streams the other holds."""
    from websockets.asyncio.client import connect

    from ooblex.cluster.servers import free_port

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    control = {"Authorization": f"Bearer {mint('control', secret=SECRET)}"}
    worker = start_worker(redis_server.url)
    ports = [free_port(), free_port()]
    try:
        ob.deploy(shade, cluster=redis_server.url, wait=60)
        with running_gateway(broker=redis_server.url, settings=Settings(secret=SECRET), port=ports[0],
                             public_url=f"http://127.0.0.1:{ports[0]}") as a, \
                running_gateway(broker=redis_server.url, settings=Settings(secret=SECRET), port=ports[1],
                                public_url=f"http://127.0.0.1:{ports[1]}") as b:
            ws_url = b.url.replace("http", "ws") + "/ws/shade"
            async with connect(ws_url, additional_headers=control) as ws, \
                    httpx.AsyncClient(timeout=10, headers=control) as http:
                stream_id = json.loads(await ws.recv())["stream_id"]

                async def charted() -> dict | None:
                    await ws.send(jpeg.encode(np.zeros((48, 64, 3), np.uint8)))
                    await ws.recv()
                    await ws.recv()
                    streams = (await http.get(a.url + "/api/v1/history")).json()["streams"]
                    return streams if len(streams.get(stream_id, {}).get("t", [])) >= 2 else None

                streams = await _until(charted, what="gateway A listing B's stream history")
                assert streams[stream_id]["thread"] == "shade" and max(streams[stream_id]["fps"]) > 0
                assert stream_id in {s["id"] for s in (await http.get(a.url + "/api/v1/streams")).json()}
                r = await http.get(f"{a.url}/api/v1/streams/{stream_id}/history")  # held by B, asked of A
                assert r.status_code == 200 and len(r.json()["stream"]["t"]) >= 2, r.text
                assert not a.state.engine.streams and b.state.engine.streams
    finally:
        stop(worker)


async def test_history_across_a_reconnect_has_one_point_a_second_and_no_spike() -> None:
    """A publisher sends ~10 fps, drops its WebSocket and comes back at once (a new stream): each stream's history
    has whole, distinct seconds in order, and no rate above what was sent (the new stream's first second included)."""
    from websockets.asyncio.client import connect

    frame = jpeg.encode(np.zeros((48, 64, 3), np.uint8))
    with running_gateway(threads=[shade], settings=Settings(history_s=60)) as gw:
        ids = []
        for _ in range(2):
            async with connect(gw.url.replace("http", "ws") + "/ws/shade") as ws:
                ids.append(json.loads(await ws.recv())["stream_id"])
                for _ in range(30):  # ~3 s at ~10 fps
                    await ws.send(frame)
                    await ws.recv()
                    await ws.recv()
                    await asyncio.sleep(0.1)
                async with httpx.AsyncClient(timeout=10) as http:
                    history = (await http.get(gw.url + "/api/v1/history")).json()["streams"]
                cols = history[ids[-1]]
                seconds = cols["t"]
                assert seconds == list(range(seconds[0], seconds[0] + len(seconds))), seconds  # whole, no repeats
                rates = [f for f in cols["fps"] + cols["fps_in"] if f is not None]
                assert rates and max(rates) <= 12, cols  # sent at 10 fps at most: no 1000 fps point
