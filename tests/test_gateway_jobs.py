"""Jobs over HTTP and the control token, against a real gateway."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

import ooblex as ob
from ooblex.gateway import Settings
from ooblex.tokens import mint

from .gateway_server import running_gateway


@ob.tensor_thread
def mean(frame, scale: float = 1.0):
    return {"mean": float(frame.mean()) * scale}


def wait_done(client: httpx.Client, location: str, timeout: float = 30) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(location, params={"results": "true"}).json()
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job still running: {job}")


def in_root(root: Path) -> Settings:
    """Gateway settings whose media root is ``root`` (jobs read and write only there)."""
    return Settings(loopback_candidates=True, media_root=str(root))


def test_job_processes_every_frame_in_order(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "result.mp4"
    with running_gateway(threads=[mean], settings=in_root(tmp_path)) as gw, httpx.Client(base_url=gw.url) as client:
        r = client.post("/api/v1/jobs", json={"thread": "mean", "source": "clip.mp4", "sink": "out/result.mp4",
                                               "params": {"scale": 2}})
        assert r.status_code == 201, r.text
        job = wait_done(client, r.headers["Location"])
        assert [j["id"] for j in client.get("/api/v1/jobs").json()] == [job["id"]]
    assert job["state"] == "done" and job["done"] == 48 and job["result"]["frames_out"] == 48
    assert [x["seq"] for x in job["results"]] == list(range(48))
    assert job["results"][0]["result"]["mean"] > 0
    assert len(list(ob.media.open_source(str(out)))) == 48


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"thread": "nope", "source": "CLIP"}, 404, "unknown tensor thread"),
    ({"thread": "mean", "source": "no/such/file.mp4"}, 404, "does not exist in the media root"),
    ({"thread": "mean"}, 400, '"thread" and "source"'),
    ({"thread": "mean", "source": "CLIP", "params": {"zz": 1}}, 400, "no parameter 'zz'"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_job_requests_get_4xx(clip: Path, body, status: int, message: str) -> None:
    if isinstance(body, dict) and body.get("source") == "CLIP":
        body = {**body, "source": str(clip)}
    with running_gateway(threads=[mean], settings=in_root(clip.parent)) as gw, \
            httpx.Client(base_url=gw.url) as client:
        r = client.post("/api/v1/jobs", json=body)
        assert r.status_code == status and message in r.json()["detail"], r.text
        assert client.get("/api/v1/jobs/unknown").status_code == 404


def test_control_endpoints_need_the_token_when_a_secret_is_set(clip: Path, monkeypatch) -> None:
    monkeypatch.setenv("OOBLEX_SECRET", "s3cret")
    auth = {"Authorization": f"Bearer {mint('control')}"}
    with running_gateway(threads=[mean], settings=in_root(clip.parent)) as gw, \
            httpx.Client(base_url=gw.url) as client:
        for path in ("/api/v1/streams", "/api/v1/sessions", "/api/v1/jobs", "/metrics"):
            r = client.get(path)
            assert r.status_code == 401 and "Bearer" in r.json()["detail"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.get(path, headers=auth).status_code == 200
        assert client.post("/api/v1/jobs", json={"thread": "mean", "source": str(clip)}).status_code == 401
        publish = {"Authorization": f"Bearer {mint('publish')}"}  # a valid token of another scope
        r = client.post("/api/v1/jobs", json={"thread": "mean", "source": str(clip)}, headers=publish)
        assert r.status_code == 403 and "scope 'publish'" in r.json()["detail"]
        assert client.post("/api/v1/jobs", json={"thread": "mean", "source": "clip.mp4"}, headers=auth).status_code \
            == 201
        # Health and the thread list stay open (nothing there starts work or reveals a stream).
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/v1/threads").status_code == 200
