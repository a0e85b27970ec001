"""Issue 21, point 8: the Jupyter extension's gateway proxy cannot be steered past its allow-list.

A real ``jupyter server`` with the extension, in front of a real gateway (with a secret, so the
control token the proxy adds opens ``/metrics`` and ``/console`` there). The gateway's ASGI app is
wrapped to record every path it is asked for: whatever the proxy answers, those never reach it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from ooblex.cluster.servers import free_port
from ooblex.gateway import Settings, create_app
from ooblex.thread import tensor_thread

pytest.importorskip("jupyter_server")
from .jupyter_proc import JupyterServer  # noqa: E402

SECRET = "proxy-s3cret-" + "z" * 20
ENABLE = '--ServerApp.jpserver_extensions={"ooblex_server_ext": True}'
AUTH = {"Authorization": "token test-token"}
#: What the gateway must never be asked for through the proxy.
FORBIDDEN = ("/metrics", "/console", "/docs", "/openapi.json")


@tensor_thread(name="invert")
def invert(frame: Any) -> Any:
    return 255 - frame


class RecordingGateway:
    """A real gateway (uvicorn, in a thread) whose ASGI app records each request's path and raw path."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bytes]] = []
        app = create_app(threads=[invert], settings=Settings(secret=SECRET))

        async def recording(scope: dict, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.seen.append((scope["path"], scope.get("raw_path", b"")))
            await app(scope, receive, send)

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(recording, host="127.0.0.1", port=port, log_level="warning",
                                                    log_config=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> RecordingGateway:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JupyterServer, RecordingGateway]]:
    with RecordingGateway() as gw:
        env = {"OOBLEX_SECRET": SECRET, "OOBLEX_GATEWAY": gw.url}
        with JupyterServer(tmp_path_factory.mktemp("jupyter"), args=[ENABLE], env=env) as srv:
            yield srv, gw


def through_proxy(srv: JupyterServer, method: str, tail: str) -> httpx.Response:
    """``tail`` sent byte for byte after ``/ooblex/gateway/`` (httpx would otherwise normalise dots)."""
    url = httpx.URL(f"{srv.url}/ooblex/gateway/x").copy_with(raw_path=f"/ooblex/gateway/{tail}".encode())
    return httpx.request(method, url, headers=AUTH, timeout=10)


def test_the_attack_paths_exist_on_the_gateway(stack) -> None:  # noqa: ANN001
    """Direct with the control token (which the proxy adds), /metrics and /console answer: the
    proxy's refusals below guard something real."""
    from ooblex.tokens import mint

    _, gw = stack
    control = {"Authorization": f"Bearer {mint('control', secret=SECRET)}"}
    before = len(gw.seen)
    assert httpx.get(f"{gw.url}/metrics", headers=control, timeout=10).status_code == 200
    assert httpx.get(f"{gw.url}/console", headers=control, timeout=10).status_code == 200
    del gw.seen[before:]  # asked for directly, not through the proxy


def test_allowed_paths_still_reach_the_gateway(stack) -> None:  # noqa: ANN001
    srv, gw = stack
    r = through_proxy(srv, "GET", "healthz")
    assert r.status_code == 200, r.text
    r = through_proxy(srv, "GET", "api/v1/threads")
    assert r.status_code == 200 and "invert" in r.text
    r = through_proxy(srv, "GET", "api/v1/threads/inv%65rt")  # an encoded ordinary letter is just that letter
    assert [p for p, _ in gw.seen][-1] == "/api/v1/threads/invert"
    assert ("/healthz", b"/healthz") in gw.seen


@pytest.mark.parametrize("tail", [
    "api/v1/%2e%2e/%2e%2e/metrics",       # the reported attack
    "healthz/..%2fconsole",                # the other one
    "api/v1/../../metrics",                # raw dot segments
    "api/v1/./../../console",
    "api/v1/%2E%2E/%2E%2E/console",        # upper-case escapes
    "api/v1/.%2e/.%2e/metrics",            # half encoded
    "api/v1/%252e%252e/%252e%252e/metrics",  # double encoded
    "api/v1/%25252e%25252e/%25252e%25252e/metrics",  # triple
    "api/v1/..%2f..%2fmetrics",            # encoded slash
    "api/v1/..%252f..%252fmetrics",        # double-encoded slash
    "api/v1/..%5c..%5cmetrics",            # encoded backslash
    "api/v1/..\\..\\metrics",              # raw backslash
    "whip/x/%2e%2e/%2e%2e/console",
    "mjpeg/%2e%2e/console",
    "api/v1//..//..//metrics",             # empty segments
    "api/v1/%00/../../metrics",            # control character
    "api/v1/%c0%ae%c0%ae/metrics",         # overlong UTF-8 dot
])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_dot_segments_are_refused_and_never_forwarded(stack, tail: str, method: str) -> None:  # noqa: ANN001
    srv, gw = stack
    before = len(gw.seen)
    r = through_proxy(srv, method, tail)
    assert r.status_code in (400, 404), (r.status_code, r.text)
    assert "# HELP" not in r.text and "<html" not in r.text.lower()
    assert gw.seen[before:] == [], f"{tail!r} reached the gateway as {gw.seen[before:]}"


@pytest.mark.parametrize("tail", ["metrics", "console", "docs", "healthzx", "api/v2/threads", "api/v1"])
def test_paths_outside_the_allow_list_are_404(stack, tail: str) -> None:  # noqa: ANN001
    srv, gw = stack
    before = len(gw.seen)
    r = through_proxy(srv, "GET", tail)
    assert r.status_code == 404 and "forwards only" in r.json()["message"], r.text
    assert gw.seen[before:] == []


def test_the_gateway_never_saw_a_forbidden_path(stack) -> None:  # noqa: ANN001
    """After every attack above (module scope: they ran first), nothing but allowed paths reached it."""
    _, gw = stack
    assert gw.seen, "the allowed requests did reach it"
    for path, raw in gw.seen:
        assert not path.startswith(FORBIDDEN) and b".." not in raw and b"%2e" not in raw.lower(), (path, raw)
