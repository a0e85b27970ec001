"""End to end behind a real JupyterHub: the live widget's side channel through the hub's proxy.

JupyterHub (DummyAuthenticator, a local-process spawner) and its proxy, configurable-http-proxy from
npm (tests/hub/package-lock.json, installed by ``make setup``), on free loopback ports. Headless Chromium
with a fake camera logs in on the hub's page, the hub spawns the user's JupyterLab (this venv's
``jupyterhub-singleuser`` with the ooblex server extension) under ``/user/<name>/``, and a notebook runs
``ob.live`` on an inverting thread: frames must travel over the side channel (the extension's WebSocket at
``/user/<name>/ooblex/...``, through the proxy, authenticated by the hub's OAuth cookie), come back
inverted, and keep coming while another cell sleeps. Without the hub's login the extension refuses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterhub")
from ooblex.cluster.servers import free_port  # noqa: E402

from .jupyter_proc import CHROMIUM, FLAGS, ROOT, lab_settings, open_notebook, run_cell  # noqa: E402
from .test_jupyter_browser import ARTIFACTS, busy_frames, wait_frames, write_notebook  # noqa: E402

PROXY = ROOT / "tests" / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
USER, PASSWORD = "alice", "ooblex-test-password"
SERVICE_TOKEN = "ooblex-test-service-token-0123456789abcdef"
LIVE = "import ooblex as ob\n\nlive = ob.live(lambda frame: 255 - frame)\nlive"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/system-deps)"),
              pytest.mark.skipif(not PROXY.exists() or not shutil.which("node"),
                                 reason="needs node and tests/hub/node_modules (make setup: npm ci)")]

HUB_CONFIG = """
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {public}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api}"
c.ConfigurableHTTPProxy.command = [{proxy!r}]
c.ConfigurableHTTPProxy.pid_file = {state!r} + "/proxy.pid"
c.JupyterHub.db_url = "sqlite:///" + {state!r} + "/hub.sqlite"
c.JupyterHub.cookie_secret_file = {state!r} + "/cookie_secret"
c.JupyterHub.pid_file = {state!r} + "/hub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {password!r}
c.Authenticator.allowed_users = {{{user!r}}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r}
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = ["--allow-root", "--ServerApp.root_dir=" + {notebooks!r}]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.Spawner.environment = {environment!r}
# a service whose token may mint the user's own API token (as the user does on the hub's Token page)
c.JupyterHub.services = [{{"name": "ooblex-test", "api_token": {service_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "ooblex-test", "scopes": ["tokens!user={user}"], "services": ["ooblex-test"]}}]
"""


class Hub:
    """JupyterHub with its proxy, all state in ``tmp``; ``stop()`` stops the hub, the proxy and the user's server."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "hub-state"
        self.state.mkdir()
        self.notebooks = tmp / "notebooks"
        self.notebooks.mkdir()
        home = tmp / "home"
        lab_settings(home)  # no news pop-up in the user's JupyterLab (settings under home/jupyter-home/config)
        self.public, hub, api = free_port(), free_port(), free_port()
        self.origin = f"http://127.0.0.1:{self.public}"
        environment = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config"),  # the extension
                       "JUPYTER_CONFIG_DIR": str(home / "jupyter-home" / "config"),
                       "JUPYTER_RUNTIME_DIR": str(home / "jupyter-home" / "runtime"),
                       "JUPYTER_DATA_DIR": str(home / "jupyter-home" / "data"), "JUPYTER_PLATFORM_DIRS": "0",
                       "PYTHONPATH": str(ROOT)}
        config = HUB_CONFIG.format(public=self.public, hub=hub, api=api, proxy=str(PROXY), state=str(self.state),
                                   password=PASSWORD, user=USER, home=str(home), notebooks=str(self.notebooks),
                                   singleuser=str(Path(sys.executable).parent / "jupyterhub-singleuser"),
                                   environment=environment, service_token=SERVICE_TOKEN)
        (self.state / "jupyterhub_config.py").write_text(config)
        self.log_path = self.state / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> Hub:
        cmd = [sys.executable, "-m", "jupyterhub", "-f", str(self.state / "jupyterhub_config.py")]
        self.proc = subprocess.Popen(cmd, cwd=self.state, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)  # its own group: the proxy and servers it starts
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyterhub exited with {self.proc.returncode}:\n{self.log()}")
            try:
                urllib.request.urlopen(f"{self.origin}/hub/api/", timeout=2)  # noqa: S310 - through the proxy
                return self
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"jupyterhub did not come up:\n{self.log()}")

    def api(self, method: str, path: str, token: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(f"{self.origin}/hub/api/{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {token}"})
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return json.loads(r.read())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        """SIGTERM: the hub stops the user's server and the proxy itself (cleanup_servers); then whatever of
        the group it started is left."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class UserServer:
    """What ``open_notebook`` needs of a server: the user's JupyterLab behind the hub (the login cookie
    authenticates, no token in the URL)."""

    app = "jupyterlab"
    token = ""

    def __init__(self, hub: Hub) -> None:
        self.url = f"{hub.origin}/user/{USER}"


def status(url: str, headers: dict[str, str] | None = None) -> int:
    """Status code of a request that follows no redirect (a redirect to the hub's login is no answer)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_live_widget_streams_over_the_side_channel_behind_jupyterhub(tmp_path, monkeypatch):
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)  # the browser's (fake) webcam
    hub = Hub(tmp_path)
    write_notebook(hub.notebooks / "live.ipynb", [LIVE, "1 + 1"])
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.time()
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        sockets: list[str] = []
        page.on("websocket", lambda ws: sockets.append(ws.url))
        try:
            hub.start()
            page.goto(f"{hub.origin}/hub/login")
            page.fill("#username_input", USER)
            page.fill("#password_input", PASSWORD)
            page.click("#login_submit")
            page.wait_for_url(f"**/user/{USER}/lab**", timeout=180_000)  # the hub spawned the server
            open_notebook(page, UserServer(hub), "live.ipynb")
            run_cell(page, 0)
            widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
            wait_frames(page, widget, 60)
            why = page.locator(".ooblex-path").get_attribute("title")
            assert widget.get_attribute("data-transport") == "channel", why
            assert page.locator(".ooblex-path").inner_text() == "side channel"
            pixels = inverted(page)
            page.locator(".ooblex-live").screenshot(path=str(ARTIFACTS / "jupyterhub_live.png"))
            channel = f"ws://127.0.0.1:{hub.public}/user/{USER}/ooblex/kernels/"
            opened = [u for u in sockets if u.startswith(channel)]
            assert opened, f"no side channel under the user's base URL: {sockets}"
            kernel, _, widget_id = opened[-1][len(channel):].partition("/live/")
            rtt = {q: float(widget.get_attribute(f"data-rtt-{q}")) for q in ("p50", "p95")}
            busy = busy_frames(page, widget, 1)
            cookies = page.context.cookies(f"{hub.origin}/user/{USER}/")  # the hub's login for this server
            cookie = "; ".join(f"{c['name']}={c['value']}" for c in cookies)
            refusals = unauthenticated(hub, kernel, widget_id, cookie)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "jupyterhub_failure.png"))
            (ARTIFACTS / "jupyterhub_console.txt").write_text("\n".join(console) + "\n\n" + hub.log())
            raise
        finally:
            browser.close()
            hub.stop()
    result = {"pixels": pixels, "round_trip_ms": rtt, "busy": busy, "refusals": refusals,
              "seconds": round(time.time() - t0, 1)}
    (ARTIFACTS / "jupyterhub_live.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    assert pixels["diff"] < 40, f"the output is not the inverted camera picture: {pixels}"
    assert busy["frames"] >= 10, f"the widget froze while a cell ran: {busy}"
    assert refusals["rest_no_auth"] == 403 and refusals["rest_bad_token"] == 403, refusals
    assert refusals["rest_user_token"] == 200, refusals
    assert refusals["ws_no_auth"] == 403 and refusals["ws_bad_token"] == 403, refusals
    assert refusals["ws_user_token"] == 101, refusals
    assert refusals["ws_cookie"] == 101 and refusals["ws_cookie_other_origin"] == 403, refusals


def inverted(page) -> dict[str, float]:
    """Mean colour of the camera's picture (its video element) and of the processed output: the thread
    inverts, so they must add up to ~255 per channel (the fake camera's picture moves little)."""
    return page.evaluate("""() => {
        const mean = (src, w, h) => {
            const c = document.createElement('canvas'); c.width = w; c.height = h;
            const ctx = c.getContext('2d'); ctx.drawImage(src, 0, 0, w, h);
            const d = ctx.getImageData(0, 0, w, h).data, m = [0, 0, 0];
            for (let i = 0; i < d.length; i += 4) for (let k = 0; k < 3; k++) m[k] += d[i + k];
            return m.map((v) => v / (d.length / 4));
        };
        const out = document.querySelector('.ooblex-live canvas.ooblex-output');
        const video = document.querySelector('.ooblex-live video.ooblex-input');
        const a = mean(video, out.width, out.height), b = mean(out, out.width, out.height);
        return {input: a, output: b, w: out.width, h: out.height,
                diff: Math.max(...a.map((v, k) => Math.abs(v + b[k] - 255)))};
    }""")


def unauthenticated(hub: Hub, kernel: str, widget: str, cookie: str) -> dict[str, int]:
    """The extension through the hub's proxy: without the hub's login or with a wrong token it refuses; a token
    of the user (minted as on the hub's Token page) is let in, for REST and for the side channel; the browser's
    login cookie is let in from the hub's own origin only (a page elsewhere that the browser sends it from
    is refused)."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    user_token = hub.api("POST", f"users/{USER}/tokens", SERVICE_TOKEN, {"note": "ooblex test"})["token"]
    rest = f"{hub.origin}/user/{USER}/ooblex/"
    ws = f"ws://127.0.0.1:{hub.public}/user/{USER}/ooblex/kernels/{kernel}/live/{widget}"

    def ws_status(headers: dict[str, str]) -> int:
        try:
            with connect(ws, additional_headers=headers, open_timeout=30):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    return {"rest_no_auth": status(rest), "rest_bad_token": status(rest, {"Authorization": "token nope"}),
            "rest_user_token": status(rest, {"Authorization": f"token {user_token}"}),
            "ws_no_auth": ws_status({}), "ws_bad_token": ws_status({"Authorization": "token nope"}),
            "ws_user_token": ws_status({"Authorization": f"token {user_token}"}),
            "ws_cookie": ws_status({"Cookie": cookie, "Origin": hub.origin}),
            "ws_cookie_other_origin": ws_status({"Cookie": cookie, "Origin": "http://evil.example"})}
