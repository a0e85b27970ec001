"""``ob.cluster()``: one line from a notebook (or a script) to a running local cluster.

In a plain process the cluster belongs to the process. In Jupyter it belongs to the server: a kernel
asks over the extension's private socket, the cluster outlives a kernel restart, and the extension's
own endpoints (the JupyterLab panel's) see it.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .cluster_fixtures import needs_redis
from .jupyter_proc import JupyterServer
from .kernel_frontend import ROOT, KernelFrontend
from .netns import in_netns
from .test_server_ext import ENABLE

pytestmark = [pytest.mark.timeout(240), needs_redis]

SCRIPT = """
import os, numpy as np, ooblex as ob
c = ob.cluster()
assert ob.cluster().gateway == c.gateway  # idempotent: the same cluster
@ob.tensor_thread
def inv(frame):
    return 255 - frame
ob.deploy(inv, wait=60)
r = ob.process("inv", [np.zeros((16, 16, 3), np.uint8)] * 4, progress=False)
print(c.owner, r.frames_out, r.errors)
gateway = c.gateway
c.stop()
import urllib.request
try:
    urllib.request.urlopen(gateway + "/healthz", timeout=5)
    print("still up")
except OSError:
    print("stopped", "OOBLEX_BROKER" in os.environ)
"""


def test_a_script_starts_deploys_to_and_stops_its_own_cluster() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OOBLEX_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**env, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                         capture_output=True, text=True, timeout=200)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.split("\n")
    assert lines[0].split()[:3] == ["process", "4", "0"], out.stdout
    assert lines[1] == "stopped False", out.stdout


def _get(server: JupyterServer, path: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{server.url}{path}", headers={"Authorization": f"token {server.token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - our own test server
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def _post(server: JupyterServer, path: str, body: bytes = b"{}") -> dict:
    req = urllib.request.Request(f"{server.url}{path}", data=body, method="POST",
                                 headers={"Authorization": f"token {server.token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:  # noqa: S310 - our own test server
        return json.loads(r.read())


def _kernel(server: JupyterServer, kernel_id: str) -> KernelFrontend:
    connection = server.workdir / "jupyter-home" / "runtime" / f"kernel-{kernel_id}.json"
    deadline = time.monotonic() + 30  # the bound only catches a hang
    while not connection.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return KernelFrontend(connection)


def test_in_jupyter_the_server_owns_the_cluster_across_kernel_restarts(tmp_path: Path) -> None:
    env = {k: "" for k in os.environ if k.startswith("OOBLEX_")}  # nothing configured for the server
    with JupyterServer(tmp_path, env=env, args=[ENABLE]) as server:
        status, body = _get(server, "/ooblex/cluster")  # the panel's poll says how to start one
        assert status == 200 and body["cluster"] is False and "ob.cluster()" in body["hint"], body
        status, body = _get(server, "/ooblex/deployments")
        assert status == 503 and "ob.cluster()" in body.get("message", ""), body
        sockets = list((tmp_path / "jupyter-home" / "runtime").glob("ooblex-*.sock"))
        assert len(sockets) == 1 and stat.S_IMODE(sockets[0].stat().st_mode) == 0o600
        kid = _post(server, "/api/kernels", b'{"name": "python3"}')["id"]
        k = _kernel(server, kid)
        try:
            first = k.execute("import ooblex as ob\nc = ob.cluster()\nprint(c.owner, c.gateway)").split()
            assert first[0] == "jupyter" and first[1].startswith("http://127.0.0.1:")
        finally:
            k.close()
        status, body = _get(server, "/ooblex/cluster")  # the panel's poll: the server's cluster
        assert status == 200 and body["cluster"] is True, body
        _post(server, f"/api/kernels/{kid}/restart")
        k = _kernel(server, kid)
        try:
            again = k.execute("import ooblex as ob\nc = ob.cluster()\nprint(c.owner, c.gateway)").split()
            assert again == first  # the same cluster: it did not die with the kernel
            urllib.request.urlopen(first[1] + "/healthz", timeout=5)  # noqa: S310
            k.execute("c.stop()")
        finally:
            k.close()
        status, body = _get(server, "/ooblex/cluster")
        assert status == 200 and body["cluster"] is False, body
        deadline = time.monotonic() + 30  # the bound only catches a hang
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(first[1] + "/healthz", timeout=2)  # noqa: S310
            except OSError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the cluster's gateway still answers after cluster.stop()")


@in_netns
async def test_a_share_link_publishes_through_the_deployed_thread_from_a_browser() -> None:
    """``Deployment.share()``: a colleague opens the link (no login, no CLI) and sees their camera processed by
    the deployed thread; the token rides in the fragment, covers that thread only and leaves the address bar."""
    import httpx
    from playwright.async_api import async_playwright

    import ooblex as ob
    from ooblex.cluster.local import LocalCluster
    from ooblex.tokens import mint

    from .test_gateway_browser import CHROMIUM, FLAGS, _output_playing

    @ob.tensor_thread(name="shared_invert")
    def shared_invert(frame):
        return 255 - frame

    local = await asyncio.to_thread(LocalCluster(workers=1).start)
    try:
        env = local.env
        dep = await asyncio.to_thread(ob.deploy, shared_invert, env["OOBLEX_BROKER"], secret=env["OOBLEX_SECRET"],
                                      wait=90)
        link = await asyncio.to_thread(dep.share, "10m")
        assert link.startswith(f"{local.gateway}/?thread=shared_invert#token=")
        token = link.split("#token=")[1]
        async with httpx.AsyncClient(timeout=20) as http:  # this thread only
            r = await http.post(f"{local.gateway}/whip/identity", content="v=0", headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/sdp"})
            assert r.status_code == 403, r.text
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page()
                logs: list[str] = []
                page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
                await page.goto(link)
                await page.click("#start")  # as the colleague would: the link opens the page, Start shares the camera
                try:
                    state = await _output_playing(page, 60)
                except AssertionError:
                    raise AssertionError(f"{await page.text_content('#status')} {logs}") from None
                assert state["width"] > 0 and state["advanced"] > 0.5, state
                assert token not in page.url
                control = mint("control", secret=env["OOBLEX_SECRET"])
                async with httpx.AsyncClient(timeout=20) as http:
                    streams = (await http.get(f"{local.gateway}/api/v1/streams",
                                              headers={"Authorization": f"Bearer {control}"})).json()
                assert [s["thread"] for s in streams] == ["shared_invert"]
                assert streams[0]["processed"] > 0
            finally:
                await browser.close()
    finally:
        await asyncio.to_thread(local.stop)
