"""The attacks of issue 9 against a real gateway, each of which must fail with a clear 4xx.

An attacker here is a stranger on the LAN (no token, any request), a web page in the user's
browser (foreign Origin, DNS rebinding Host), or a greedy client (idle sockets, offers that never
connect, huge bodies). Every test drives a real uvicorn server (``running_gateway``).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ooblex import jpeg, tensor_thread
from ooblex.gateway import Settings
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS
from ooblex.tokens import mint

from .gateway_server import running_gateway
from .media import sdp_offer
from .netns import in_netns

pytestmark = pytest.mark.timeout(90)
SECRET = "gateway-test-secret-0123456789"
ROOT = Path(__file__).resolve().parent.parent
IMAGE = jpeg.encode(np.full((48, 64, 3), 90, np.uint8))


@tensor_thread(name="mean")
def mean(frame: np.ndarray, scale: float = 1.0) -> dict:
    return {"mean": float(frame.mean()) * scale}


def settings(**kw) -> Settings:
    return Settings(**{"loopback_candidates": True, "secret": "", **kw})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def eventually(condition, timeout: float = 10.0) -> bool:
    """Poll ``condition`` (another thread's state) until true or ``timeout``; the bound only catches a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def from_address(address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (another client on the loopback /8)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=20)


# --- jobs are confined to the media root and the URL allow-list ------------------------------------------
@pytest.fixture
def media(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "in").mkdir(parents=True)
    (root / "in" / "ok.jpg").write_bytes(IMAGE)
    (tmp_path / "outside.jpg").write_bytes(IMAGE)
    (root / "escape.jpg").symlink_to(tmp_path / "outside.jpg")
    (root / "escape-dir").symlink_to(tmp_path)
    return root


def test_jobs_cannot_read_or_write_outside_the_media_root(media: Path, tmp_path: Path) -> None:
    static = ROOT / "ooblex" / "gateway" / "static"
    cases = [
        ({"source": str(tmp_path / "outside.jpg")}, 403, "outside the media root"),
        ({"source": "../outside.jpg"}, 403, "outside the media root"),
        ({"source": "in/../../outside.jpg"}, 403, "outside the media root"),
        ({"source": "escape.jpg"}, 403, "outside the media root"),  # a symlink out of the root
        ({"source": "escape-dir/outside.jpg"}, 403, "outside the media root"),
        ({"source": "/etc"}, 403, "outside the media root"),  # a whole folder
        ({"source": "in/missing.jpg"}, 404, "does not exist in the media root"),
        ({"source": "in/ok.jpg", "sink": str(tmp_path / "evil.mp4")}, 403, "outside the media root"),
        ({"source": "in/ok.jpg", "sink": str(static / "evil.mp4")}, 403, "outside the media root"),
        ({"source": "in/ok.jpg", "sink": "escape-dir/evil.mp4"}, 403, "outside the media root"),
        ({"source": "in/ok.jpg", "sink": "in/page.html"}, 400, "must be a video file"),
        ({"source": "in/ok.jpg", "sink": "tcp://127.0.0.1:9/x.mp4"}, 403, "is a URL"),
        ({"source": "in/ok.jpg", "sink": "mjpeg://127.0.0.1:8099"}, 403, "is a URL"),
        ({"source": "file:///etc/passwd"}, 400, "URL sources must be"),
    ]
    with running_gateway(threads=[mean], settings=settings(media_root=str(media))) as gw, \
            httpx.Client(base_url=gw.url) as client:
        for extra, status, words in cases:
            r = client.post("/api/v1/jobs", json={"thread": "mean", **extra})
            assert r.status_code == status and words in r.json()["detail"], (extra, r.text)
        assert not (tmp_path / "evil.mp4").exists() and not (static / "evil.mp4").exists()
        assert not (media / "in" / "page.html").exists()
        with socket.socket() as s:  # the mjpeg:// sink opened no listening port
            assert s.connect_ex(("127.0.0.1", 8099)) != 0
        # inside the root it works, and an existing sink is not overwritten unless asked
        r = client.post("/api/v1/jobs", json={"thread": "mean", "source": "in", "sink": "out/a.mp4"})
        assert r.status_code == 201, r.text
        _wait_job(client, r.headers["Location"])
        size = (media / "out" / "a.mp4").stat().st_size
        assert size > 0
        r = client.post("/api/v1/jobs", json={"thread": "mean", "source": "in", "sink": "out/a.mp4"})
        assert r.status_code == 409 and "overwrite" in r.json()["detail"]
        assert (media / "out" / "a.mp4").stat().st_size == size
        r = client.post("/api/v1/jobs", json={"thread": "mean", "source": "in", "sink": "out/a.mp4",
                                               "overwrite": True})
        assert r.status_code == 201, r.text
        assert _wait_job(client, r.headers["Location"])["state"] == "done"


def _wait_job(client: httpx.Client, location: str) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = client.get(location).json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job did not finish: {job}")


class _Redirect(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_url_sources_need_the_allow_list_and_never_reach_private_addresses(media: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    here = f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
    try:
        def job(gw_settings: Settings, source: str) -> httpx.Response:
            with running_gateway(threads=[mean], settings=gw_settings) as gw:
                r = httpx.post(gw.url + "/api/v1/jobs", json={"thread": "mean", "source": source}, timeout=20)
                if r.status_code == 201:
                    return httpx.Response(201, json=_wait_job(httpx.Client(base_url=gw.url), r.headers["Location"]))
                return r

        off = job(settings(media_root=str(media)), here)
        assert off.status_code == 403 and "URL sources are off" in off.json()["detail"]
        named = job(settings(media_root=str(media), source_hosts=["localhost", "*.example.com"]),
                    here.replace("127.0.0.1", "localhost"))
        assert named.status_code == 403 and "loopback, link-local, private" in named.json()["detail"]
        unlisted = job(settings(media_root=str(media), source_hosts=["cam.example.com"]), here)
        assert unlisted.status_code == 403
        for internal in ("http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/cam.mjpg",
                         "rtsp://192.168.1.1/stream"):
            r = job(settings(media_root=str(media), source_hosts=["*"]), internal)
            assert r.status_code == 403, internal
        # A network listed on purpose is reachable, but a redirect to elsewhere is not followed.
        listed = job(settings(media_root=str(media), source_hosts=["127.0.0.0/8"]), here)
        assert listed.status_code == 201
        assert listed.json()["state"] == "failed" and "redirects (302)" in listed.json()["error"]
    finally:
        server.shutdown()
        server.server_close()


# --- browser safety: Host (DNS rebinding) and Origin (cross-site requests) --------------------------------
def test_foreign_host_headers_are_refused() -> None:
    with running_gateway(threads=[mean], settings=settings(allowed_hosts=["ooblex.lan", "*.ooblex.example"])) as gw:
        port = gw.port
        for host, status in [("evil.example", 400), (f"evil.example:{port}", 400), ("127.0.0.1.evil.example", 400),
                             (f"localhost:{port}", 200), (f"127.0.0.1:{port}", 200), (f"[::1]:{port}", 200),
                             ("ooblex.lan", 200), ("cam.ooblex.example", 200)]:
            r = httpx.get(gw.url + "/api/v1/threads", headers={"Host": host})
            assert r.status_code == status, (host, r.text)
            if status == 400:
                assert "OOBLEX_ALLOWED_HOSTS" in r.json()["detail"]

        async def ws_with_host() -> None:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(gw.url.replace("http", "ws") + "/ws/identity",
                                   additional_headers={"Host": "evil.example"}):
                    pass
            assert refused.value.response.status_code == 400

        asyncio.run(ws_with_host())


def test_cross_site_requests_are_refused() -> None:
    evil = {"Origin": "https://evil.example"}
    with running_gateway(threads=[*BUILTIN_DEMO_THREADS, mean],
                         settings=settings(cors_origins=["https://player.example"])) as gw, \
            httpx.Client(base_url=gw.url) as client:
        same = {"Origin": gw.url}
        r = client.post("/api/v1/frames/identity", content=IMAGE, headers={"Content-Type": "image/jpeg", **evil})
        assert r.status_code == 403 and "cross-origin" in r.json()["detail"]
        r = client.post("/api/v1/frames/identity", content=IMAGE, headers={"Content-Type": "image/jpeg", **same})
        assert r.status_code == 200
        r = client.post("/api/v1/frames/identity", content=IMAGE,
                        headers={"Content-Type": "image/jpeg", "Origin": "https://player.example"})
        assert r.status_code == 200
        r = client.post("/api/v1/jobs", content=b'{"thread": "mean", "source": "x"}',
                        headers={"Content-Type": "text/plain", **evil})
        assert r.status_code == 403
        r = client.post("/api/v1/jobs", content=b'{"thread": "mean", "source": "x"}',
                        headers={"Content-Type": "text/plain"})  # a form-like body, no preflight
        assert r.status_code == 415 and "application/json" in r.json()["detail"]
        assert client.post("/whip/identity", content="v=0", headers={"Content-Type": "application/sdp",
                                                                       "Origin": "null"}).status_code == 403

        async def sockets() -> None:
            base = gw.url.replace("http", "ws") + "/ws/identity"
            with pytest.raises(InvalidStatus) as refused:
                async with connect(base, origin="https://evil.example"):
                    pass
            assert refused.value.response.status_code == 403
            async with connect(base, origin=gw.url) as ws:  # the gateway's own page
                assert "stream_id" in json.loads(await ws.recv())

        asyncio.run(sockets())


# --- with a secret: tokens for everything that starts work or reveals a stream ---------------------------
async def test_with_a_secret_streams_need_tokens_of_the_right_scope() -> None:
    control = mint("control", secret=SECRET)
    publish = mint("publish", thread="invert", secret=SECRET)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings(secret=SECRET)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            ws_url = gw.url.replace("http", "ws") + "/ws/invert"
            for bad, code in [("", 4401), ("?token=garbage", 4401),
                              (f"?token={mint('publish', thread='edges', secret=SECRET)}", 4403),
                              (f"?token={mint('view', stream='*', secret=SECRET)}", 4403)]:
                async with connect(ws_url + bad) as ws:
                    with pytest.raises(ConnectionClosed) as closed:
                        await ws.recv()
                        await ws.recv()
                    assert closed.value.rcvd.code == code, bad
            async with connect(f"{ws_url}?token={publish}") as ws:
                hello = json.loads(await ws.recv())
                stream_id, shareable = hello["stream_id"], hello["view_token"]
                await ws.send(IMAGE)
                await ws.recv()
                stream = f"/api/v1/streams/{stream_id}"
                # the id alone is not enough: it is not listed and cannot be watched or tuned without a token
                assert (await client.get("/metrics")).status_code == 401
                assert "ooblex_frames_processed_total" in (await client.get("/metrics", headers=auth(control))).text
                other_view = auth(mint("view", stream="another", secret=SECRET))
                for path in (stream, f"/mjpeg/{stream_id}"):
                    assert (await client.get(path)).status_code == 401
                    assert (await client.get(path, headers=other_view)).status_code == 404  # as for an unknown id
                own_view = mint("view", stream=stream_id, secret=SECRET)
                assert (await client.get(stream, params={"token": own_view})).status_code == 200
                assert (await client.get(stream, params={"token": shareable})).status_code == 200  # the publisher's
                r = await client.post("/api/v1/frames/invert", content=IMAGE,
                                      headers={"Content-Type": "image/jpeg", **auth(shareable)})
                assert r.status_code == 403  # ... view token cannot publish
                async with client.stream("GET", f"/mjpeg/{stream_id}", params={"token": publish}) as mjpeg:
                    assert mjpeg.status_code == 200
                body = {"params": {"amount": 0.5}}
                assert (await client.patch(stream, json=body)).status_code == 401
                # a token that does not cover a change gets the 404 of an unknown id (issue 21, point 3)
                assert (await client.patch(stream, json=body, headers=auth(own_view))).status_code == 404
                r = await client.patch(stream, json=body, headers=auth(publish))
                assert r.json()["params"] == {"amount": 0.5}
                offer = await sdp_offer("recvonly")
                r = await client.post(f"/whep/{stream_id}", content=offer, headers={"Content-Type": "application/sdp"})
                assert r.status_code == 401
            jpeg_body = {"content": IMAGE, "headers": {"Content-Type": "image/jpeg"}}
            for path in ("/whip/invert", "/api/v1/frames/invert"):
                assert (await client.post(path, **jpeg_body)).status_code == 401
            r = await client.post("/api/v1/frames/invert", content=IMAGE,
                                  headers={"Content-Type": "image/jpeg", **auth(publish)})
            assert r.status_code == 200
            r = await client.post("/api/v1/frames/edges", content=IMAGE,
                                  headers={"Content-Type": "image/jpeg", **auth(publish)})
            assert r.status_code == 403 and "does not allow publish for thread 'edges'" in r.json()["detail"]
            expired = mint("publish", ttl_s=1, secret=SECRET)
            await asyncio.sleep(1.5)
            r = await client.post("/api/v1/frames/invert", content=IMAGE,
                                  headers={"Content-Type": "image/jpeg", **auth(expired)})
            assert r.status_code == 401 and "expired" in r.json()["detail"]
            health = (await client.get("/healthz")).json()
            assert health["status"] == "ok" and SECRET not in json.dumps(health)


def test_ooblex_token_cli_mints_verifiable_tokens() -> None:
    from ooblex.tokens import verify

    env = {**os.environ, "OOBLEX_SECRET": SECRET, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "ooblex", "token", "publish", "--thread", "face_blur", "--ttl", "2h"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    claims = verify(out.stdout.strip(), SECRET)
    assert claims.scope == "publish" and claims.thread == "face_blur" and claims.expires > time.time() + 7000
    env.pop("OOBLEX_SECRET")
    out = subprocess.run([sys.executable, "-m", "ooblex", "token", "control"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "OOBLEX_SECRET" in out.stderr


@in_netns  # binds 0.0.0.0, which inside the namespace is loopback only
def test_no_secret_means_loopback_only_unless_insecure() -> None:
    from ooblex.cluster.servers import free_port, wait_port

    env = {k: v for k, v in os.environ.items() if k != "OOBLEX_SECRET"}
    env["PYTHONPATH"] = str(ROOT)
    base = [sys.executable, "-m", "ooblex", "gateway", "--broker", "memory://", "--host", "0.0.0.0"]
    refused = subprocess.run([*base, "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "refusing to serve on 0.0.0.0 without OOBLEX_SECRET" in refused.stderr
    port = free_port()
    proc = subprocess.Popen([*base, "--port", str(port), "--insecure"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port, 30)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "WARNING: --insecure" in err and "watch every stream" in err
    env["OOBLEX_SECRET"] = SECRET
    port = free_port()
    proc = subprocess.Popen([*base, "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_port("127.0.0.1", port, 30)
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/streams").status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


# --- bounded resources per client ---------------------------------------------------------------------------
async def test_idle_websockets_cannot_take_every_stream() -> None:
    limits = settings(max_streams_per_client=3, ws_idle_s=1.5)
    frame = {"content": IMAGE, "headers": {"Content-Type": "image/jpeg"}}
    with running_gateway(threads=[mean], settings=limits) as gw:
        url = gw.url.replace("http", "ws") + "/ws/identity"
        idle = [await connect(url).__aenter__() for _ in range(3)]
        for ws in idle:
            json.loads(await ws.recv())
        async with connect(url) as extra:  # the 4th socket of this client is refused
            assert json.loads(await extra.recv())["status"] == 429
            with pytest.raises(ConnectionClosed) as closed:
                await extra.recv()
            assert closed.value.rcvd.code == 4429
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(transport=other) as elsewhere, httpx.AsyncClient() as same:
            assert (await elsewhere.post(gw.url + "/api/v1/frames/identity", **frame)).status_code == 200
            r = await same.post(gw.url + "/api/v1/frames/identity", **frame)
            assert r.status_code == 429 and "OOBLEX_MAX_STREAMS_PER_CLIENT" in r.json()["detail"]
        for ws in idle:  # idle sockets are closed by the gateway
            with pytest.raises(ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd.code == 4408
        async with connect(url) as again:  # the slots are free again
            assert "stream_id" in json.loads(await again.recv())
        assert eventually(lambda: not gw.state.engine.streams), "streams of closed sockets stayed open"


def test_offers_that_never_connect_are_budgeted_and_expire() -> None:
    limits = settings(max_pending_per_client=2, connect_timeout_s=2.0)
    with running_gateway(settings=limits) as gw:
        offer = asyncio.run(sdp_offer("sendrecv"))
        post = {"content": offer, "headers": {"Content-Type": "application/sdp"}}
        with httpx.Client(timeout=20) as client:
            assert [client.post(gw.url + "/whip/identity", **post).status_code for _ in range(2)] == [201, 201]
            r = client.post(gw.url + "/whip/identity", **post)
            assert r.status_code == 429 and "not connected yet" in r.json()["detail"]
            with from_address("127.0.0.2") as other:
                created = other.post(gw.url + "/whip/identity", **post)
                assert created.status_code == 201
                assert other.delete(gw.url + created.headers["Location"]).status_code == 200
            assert eventually(lambda: not gw.state.sessions.items, 15), "sessions that never connected stayed"
            assert client.post(gw.url + "/whip/identity", **post).status_code == 201


async def test_oversized_messages_and_bodies_are_refused_without_reading_them() -> None:
    limits = settings(max_image_bytes=200_000, max_json_bytes=4096)
    json_type = {"Content-Type": "application/json"}
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=limits) as gw:
        ws_url = gw.url.replace("http", "ws") + "/ws/identity"
        async with httpx.AsyncClient(base_url=gw.url, timeout=60) as client:
            async with connect(ws_url, max_size=None) as ws:
                json.loads(await ws.recv())
                await ws.send(b"\xff\xd8" + b"\0" * 400_000)  # over the image limit: the protocol layer closes
                with pytest.raises(ConnectionClosed) as closed:
                    for _ in range(5):
                        await ws.recv()
                assert closed.value.rcvd.code == 1009
            big = b'{"params": {"a": "' + b"x" * (150 << 20) + b'"}}'
            async with connect(ws_url) as ws:
                stream_id = json.loads(await ws.recv())["stream_id"]
                # a 150 MiB JSON body is refused from its Content-Length, before it is read
                r = await client.patch(f"/api/v1/streams/{stream_id}", content=big, headers=json_type)
                assert r.status_code == 413 and "limit is 4096" in r.json()["detail"]
                await ws.send(json.dumps({"params": {"x": "y" * 5000}}))  # over the JSON limit
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                assert closed.value.rcvd.code == 1009 and "OOBLEX_MAX_JSON_BYTES" in closed.value.rcvd.reason
            r = await client.post("/api/v1/jobs", content=big, headers=json_type)
            assert r.status_code == 413 and "limit is 4096" in r.json()["detail"]

            async def chunks():
                for _ in range(64):
                    yield b"x" * 65536  # no Content-Length: the limit must hold while streaming

            r = await client.post("/api/v1/jobs", content=chunks(), headers=json_type)
            assert r.status_code == 413 and "exceeds the limit of 4096" in r.json()["detail"]


# --- the 500s of issue 9 are 4xx now ------------------------------------------------------------------------
async def test_bad_parameters_and_corrupt_fingerprints_are_4xx() -> None:
    json_type = {"Content-Type": "application/json"}
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings()) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client, \
                connect(gw.url.replace("http", "ws") + "/ws/invert") as sock:
            path = f"/api/v1/streams/{json.loads(await sock.recv())['stream_id']}"
            r = await client.patch(path, json={"params": {"self": 1}})
            assert r.status_code == 400 and "no parameter 'self'" in r.json()["detail"]
            for bad in ('"nan"', '"inf"', '"-inf"', "NaN", "Infinity"):
                r = await client.patch(path, content=f'{{"params": {{"amount": {bad}}}}}', headers=json_type)
                assert r.status_code == 400, (bad, r.text)
            r = await client.post("/api/v1/frames/invert?amount=nan", content=IMAGE,
                                  headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 400
            offer = await sdp_offer("sendrecv")
            broken = offer.replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 ZZ")  # one of three garbled
            for body in (broken, offer.replace("a=fingerprint:", "a=fingerprint:x")):
                r = await client.post("/whip/identity", content=body, headers={"Content-Type": "application/sdp"})
                assert r.status_code == 400 and "fingerprint" in r.json()["detail"], r.text
            assert (await client.get("/healthz")).json()["status"] == "ok"
