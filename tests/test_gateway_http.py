"""The gateway's HTTP, WebSocket and MJPEG paths against a real uvicorn server."""

from __future__ import annotations

import asyncio
import json

import cv2
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from ooblex import jpeg, tensor_thread
from ooblex.gateway import Settings
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS

from .gateway_server import running_gateway

pytestmark = pytest.mark.timeout(60)


@tensor_thread(name="broken")
def broken(frame: np.ndarray) -> np.ndarray:
    raise RuntimeError("model exploded")


@tensor_thread(name="stats")
def stats(frame: np.ndarray) -> dict:
    """Result only: the picture passes through unchanged."""
    return {"mean": np.float32(frame.mean()), "shape": np.array(frame.shape)}  # numpy types on purpose


SETTINGS = Settings(loopback_candidates=True, max_image_bytes=200_000, max_image_pixels=1000 * 1000)


@pytest.fixture(scope="module")
def gw():
    with running_gateway(threads=[*BUILTIN_DEMO_THREADS, broken, stats], settings=SETTINGS) as running:
        yield running


def picture(h: int = 120, w: int = 160, value: int | None = None) -> np.ndarray:
    if value is not None:
        return np.full((h, w, 3), value, np.uint8)
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=2).astype(np.uint8)


def post(gw, path: str, body: bytes, ctype: str = "image/jpeg") -> httpx.Response:
    return httpx.post(gw.url + path, content=body, headers={"Content-Type": ctype}, timeout=20)


def test_health_threads_openapi(gw) -> None:
    assert httpx.get(gw.url + "/healthz").json()["status"] == "ok"
    threads = {t["name"]: t for t in httpx.get(gw.url + "/api/v1/threads").json()}
    assert {"identity", "edges", "invert", "cartoon"} <= set(threads)
    assert [p["name"] for p in threads["invert"]["params"]] == ["amount"]
    assert threads["invert"]["params"][0]["max"] == 1.0
    paths = httpx.get(gw.url + "/openapi.json").json()["paths"]
    for p in ("/whip/{thread}", "/whep/{stream_id}", "/mjpeg/{stream_id}", "/api/v1/frames/{thread}",
              "/api/v1/threads", "/api/v1/streams", "/metrics", "/healthz"):
        assert p in paths, p


def test_frame_identity_jpeg_and_png(gw) -> None:
    img = picture()
    r = post(gw, "/api/v1/frames/identity", jpeg.encode(img, 95))
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    out = jpeg.decode(r.content)
    assert out.shape == img.shape and np.abs(out.astype(int) - img).mean() < 6
    assert "total" in json.loads(r.headers["x-ooblex-latency-ms"])
    ok, png = cv2.imencode(".png", img[:, :, ::-1])
    r = post(gw, "/api/v1/frames/identity", png.tobytes(), "image/png")
    assert r.status_code == 200 and np.abs(jpeg.decode(r.content).astype(int) - img).mean() < 6


def test_frame_params_and_outputs(gw) -> None:
    body = jpeg.encode(picture(value=40), 95)
    inverted = jpeg.decode(post(gw, "/api/v1/frames/invert", body).content)
    assert abs(inverted.mean() - 215) < 4
    unchanged = jpeg.decode(post(gw, "/api/v1/frames/invert?amount=0", body).content)
    assert abs(unchanged.mean() - 40) < 4
    r = post(gw, "/api/v1/frames/stats?output=json", body)
    assert r.json()["result"]["shape"] == [120, 160, 3] and abs(r.json()["result"]["mean"] - 40) < 3
    r = post(gw, "/api/v1/frames/cartoon?output=both&levels=4", body)
    data = r.json()
    assert "brightness" in data["result"] and data["image"]
    r = post(gw, "/api/v1/frames/stats", body)
    assert json.loads(r.headers["x-ooblex-result"])["shape"] == [120, 160, 3]


def test_frame_thread_error_is_reported_not_raised(gw) -> None:
    r = post(gw, "/api/v1/frames/broken?output=json", jpeg.encode(picture()))
    assert r.status_code == 200 and "model exploded" in r.json()["error"]
    assert post(gw, "/api/v1/frames/identity", jpeg.encode(picture())).status_code == 200


@pytest.mark.parametrize("path,body,ctype,status,words", [
    ("/api/v1/frames/nope", b"x", "image/jpeg", 404, "unknown tensor thread 'nope'"),
    ("/api/v1/frames/invert?amount=7", None, "image/jpeg", 400, "within [0.0, 1.0]"),
    ("/api/v1/frames/invert?colour=red", None, "image/jpeg", 400, "no parameter 'colour'"),
    ("/api/v1/frames/identity?output=xml", None, "image/jpeg", 400, "output must be one of"),
    ("/api/v1/frames/identity", b"hello world", "text/plain", 415, "expected a JPEG or PNG"),
    ("/api/v1/frames/identity", b"hello world", "image/jpeg", 400, "cannot decode"),
    ("/api/v1/frames/identity", b"\xff\xd8\xff\xe0garbage", "image/jpeg", 400, "cannot decode"),
    ("/api/v1/frames/identity", b"", "image/jpeg", 400, "empty body"),
    ("/api/v1/frames/identity", b"\0" * 300_000, "image/jpeg", 413, "limit is 200000"),
])
def test_frame_bad_input(gw, path, body, ctype, status, words) -> None:
    r = post(gw, path, jpeg.encode(picture()) if body is None else body, ctype)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]


def test_cors_only_when_configured(gw) -> None:
    headers = {"Origin": "https://player.example", "Access-Control-Request-Method": "POST"}
    assert "access-control-allow-origin" not in httpx.options(gw.url + "/whip/identity", headers=headers).headers
    with running_gateway(settings=Settings(cors_origins=["https://player.example"])) as other:
        r = httpx.options(other.url + "/whip/identity", headers=headers)
        assert r.headers["access-control-allow-origin"] == "https://player.example"


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OOBLEX_MAX_SESSIONS", "3")
    monkeypatch.setenv("OOBLEX_LOOPBACK_CANDIDATES", "yes")
    monkeypatch.setenv("OOBLEX_ICE_SERVERS", '[{"urls": "stun:stun.example.org:3478"}]')
    monkeypatch.setenv("OOBLEX_CORS_ORIGINS", "https://a.example, https://b.example")
    s = Settings.from_env(max_image_bytes=10)
    assert (s.max_sessions, s.loopback_candidates, s.max_image_bytes) == (3, True, 10)
    assert s.ice_servers == [{"urls": "stun:stun.example.org:3478"}]
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("OOBLEX_ICE_SERVERS", '["stun:x"]')
    with pytest.raises(ValueError, match="OOBLEX_ICE_SERVERS must be a JSON list"):
        Settings.from_env()
    monkeypatch.setenv("OOBLEX_ICE_SERVERS", "[]")
    monkeypatch.setenv("OOBLEX_RETURN_TIMESTAMPS", "sometimes")
    with pytest.raises(ValueError, match="return_timestamps must be 'send' or 'input'"):
        Settings.from_env()
    monkeypatch.setenv("OOBLEX_RETURN_TIMESTAMPS", "input")
    monkeypatch.setenv("OOBLEX_MAX_SESSIONS", "many")
    with pytest.raises(ValueError, match="OOBLEX_MAX_SESSIONS expects int"):
        Settings.from_env()


def test_oversized_chunked_upload_is_cut_off(gw) -> None:
    def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(40):
            yield b"\0" * 10_000
    r = httpx.post(gw.url + "/api/v1/frames/identity", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 413 and "exceeds the limit of 200000" in r.json()["detail"]


def test_frame_too_many_pixels(gw) -> None:
    big = jpeg.encode(np.zeros((1100, 1000, 3), np.uint8), 30)  # small file, too many pixels
    assert len(big) < SETTINGS.max_image_bytes
    r = post(gw, "/api/v1/frames/identity", big)
    assert r.status_code == 413 and "1000x1100" in r.json()["detail"]
    assert httpx.get(gw.url + "/healthz").status_code == 200


async def test_websocket_stream_params_and_bad_frames(gw) -> None:
    url = gw.url.replace("http", "ws") + "/ws/invert?amount=1"
    async with connect(url) as ws:
        hello = json.loads(await ws.recv())
        assert hello["thread"] == "invert" and hello["params"] == {"amount": 1.0}
        body = jpeg.encode(picture(value=40), 95)
        await ws.send(body)
        info = json.loads(await ws.recv())
        assert info["error"] is None and "total" in info["latency_ms"]
        assert abs(jpeg.decode(await ws.recv()).mean() - 215) < 4
        await ws.send(json.dumps({"params": {"amount": 0}}))
        assert json.loads(await ws.recv()) == {"params": {"amount": 0.0}}
        await ws.send(json.dumps({"params": {"amount": 9}}))
        assert "within" in json.loads(await ws.recv())["error"]
        await ws.send(b"not an image")
        assert json.loads(await ws.recv())["status"] == 400
        await ws.send(jpeg.encode(np.zeros((1000, 1100, 3), np.uint8)))  # over max_image_pixels: the stream goes on
        assert json.loads(await ws.recv())["status"] == 413
        await ws.send(body)
        info = json.loads(await ws.recv())
        assert abs(jpeg.decode(await ws.recv()).mean() - 40) < 4
        async with httpx.AsyncClient() as http:
            listed = (await http.get(gw.url + "/api/v1/streams")).json()
        mine = next(s for s in listed if s["id"] == hello["stream_id"])
        assert mine["processed"] >= 2 and mine["mjpeg"] == f"/mjpeg/{hello['stream_id']}"
        assert "total" in mine["latency_ms"] and mine["error"] is None
    await asyncio.sleep(0.2)
    assert hello["stream_id"] not in gw.state.engine.streams


async def test_websocket_many_frames_latest_wins(gw) -> None:
    async with connect(gw.url.replace("http", "ws") + "/ws/identity?output=json") as ws:
        await ws.recv()
        body = jpeg.encode(picture(), 80)
        for _ in range(50):
            await ws.send(body)
        seqs = []
        while True:
            try:
                info = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
            except asyncio.TimeoutError:
                break
            seqs.append(info["seq"])
        assert seqs and seqs == sorted(seqs) and seqs[-1] == 49, seqs


@pytest.mark.parametrize("path,code", [("/ws/nope", 4404), ("/ws/invert?amount=x", 4400)])
async def test_websocket_refused(gw, path: str, code: int) -> None:
    async with connect(gw.url.replace("http", "ws") + path) as ws:
        msg = json.loads(await ws.recv())
        assert msg["status"] == code - 4000 and msg["error"]
        await ws.wait_closed()
        assert ws.close_code == code


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


async def test_mjpeg_viewer_of_websocket_stream(gw) -> None:
    processed = {"name": "ooblex_frames_processed_total", "gateway": gw.state.instance, "thread": "invert"}
    async with httpx.AsyncClient(timeout=10) as http:
        before = sample((await http.get(gw.url + "/metrics")).text, **processed)
    async with connect(gw.url.replace("http", "ws") + "/ws/invert?output=json") as ws:
        stream_id = json.loads(await ws.recv())["stream_id"]
        async with httpx.AsyncClient(timeout=10) as http:
            async with http.stream("GET", f"{gw.url}/mjpeg/{stream_id}") as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/x-mixed-replace")
                chunks = r.aiter_bytes()
                buf = b""
                for value in (10, 200, 90):
                    await ws.send(jpeg.encode(picture(value=value), 95))
                    await ws.recv()
                    while b"\xff\xd9" not in buf:
                        buf += await asyncio.wait_for(chunks.__anext__(), 5)
                    start, end = buf.index(b"\xff\xd8"), buf.index(b"\xff\xd9") + 2
                    assert b"Content-Type: image/jpeg" in buf[:start]
                    assert abs(jpeg.decode(buf[start:end]).mean() - (255 - value)) < 4
                    buf = buf[end:]
                info = (await http.get(f"{gw.url}/api/v1/streams/{stream_id}")).json()
                assert info["thread"] == "invert" and info["processed"] == 3
                stream = gw.state.engine.streams[stream_id]
                assert len(stream._listeners) == 1
                metrics = (await http.get(gw.url + "/metrics")).text
                assert sample(metrics, **processed) == before + 3
                assert sample(metrics, "ooblex_frame_latency_seconds_count", thread="invert", stage="total") >= 3
                assert stream_id not in metrics
            await asyncio.sleep(0.3)
            assert not stream._listeners, "the MJPEG viewer left its queue behind"
            assert (await http.get(gw.url + "/mjpeg/nostream")).status_code == 404
