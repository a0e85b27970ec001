"""The JupyterLab side panel (the prebuilt labextension) in headless Chromium, under a base URL, against a
real cluster: redis-server, an ``ooblex worker`` process and an ``ooblex gateway`` process with a live
stream. The panel lists deployments, workers and streams (charts through the server extension), deploys
a tensor thread defined in the open notebook, rolls back and undeploys (JupyterLab's own confirmation
dialogs), and shows a stream through the server extension's gateway proxy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time

import pytest

import ooblex as ob

from .cluster_fixtures import SECRET, needs_redis, start_worker, stop
from .jupyter_proc import CHROMIUM, FLAGS, ROOT, JupyterServer, free_port, lab_settings, open_notebook, run_cell
from .test_console_api import shade, shade_v2
from .test_console_browser import publish
from .test_server_ext import wait_http

playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(400), needs_redis,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/system-deps)")]
ARTIFACTS = ROOT / "test-artifacts"
LABEXTENSION = ROOT / "server_ext" / "labextension" / "package.json"
NOTEBOOK_THREAD = '''import ooblex as ob

@ob.tensor_thread(name="mirror")
def mirror(frame):
    """Left and right swapped: deployed from this notebook."""
    return frame[:, ::-1]
'''


def test_the_labextension_is_built_and_installed() -> None:
    """``make setup`` builds labextension/ and links it where this environment's JupyterLab looks."""
    assert LABEXTENSION.exists(), "run make setup: it builds the JupyterLab panel (npm ci, jupyter-builder)"
    built = json.loads(LABEXTENSION.read_text())
    assert built["name"] == "@ooblex/jupyterlab-console" and built["jupyterlab"]["_build"]["load"]
    out = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True)
    line = next((ln for ln in (out.stdout + out.stderr).splitlines() if "@ooblex/jupyterlab-console" in ln), "")
    assert "enabled" in line and "OK" in line, out.stdout + out.stderr


def test_the_wheel_ships_the_prebuilt_panel(tmp_path) -> None:
    """``pip install`` of the wheel brings the panel: no Node.js needed where it is installed."""
    import zipfile

    assert LABEXTENSION.exists(), "run make setup first (it builds the panel)"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("ooblex-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    prefix = "share/jupyter/labextensions/@ooblex/jupyterlab-console/"
    shipped = {n.split(prefix, 1)[1] for n in names if prefix in n}
    built = {str(f.relative_to(LABEXTENSION.parent)) for f in LABEXTENSION.parent.rglob("*") if f.is_file()}
    assert shipped == built and "package.json" in shipped, (shipped, built)
    assert "ooblex/gateway/static/vendor/uPlot.iife.min.js" in names


def _until(page, expression: str, timeout_s: float = 60) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(f"() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }}"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.3)


def test_jupyterlab_panel_shows_the_cluster_and_deploys_from_the_notebook(tmp_path, monkeypatch) -> None:
    from ooblex.cluster.servers import RedisServer
    from ooblex.tokens import mint

    assert LABEXTENSION.exists(), "run make setup first (it builds the panel)"
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    redis = RedisServer().start()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OOBLEX_SECRET": SECRET, "OOBLEX_BROKER": redis.url}
    port = free_port()
    gateway_url = f"http://127.0.0.1:{port}"
    worker = start_worker(redis.url)
    gateway = subprocess.Popen([sys.executable, "-m", "ooblex", "gateway", "--port", str(port)], env=env, cwd=tmp_path)
    stop_publishing = asyncio.Event()
    publisher = None
    try:
        ob.deploy(shade, cluster=redis.url, license="Apache-2.0")
        ob.deploy(shade_v2, cluster=redis.url, license="Apache-2.0", wait=60)
        wait_http(f"{gateway_url}/healthz")
        loop = asyncio.new_event_loop()
        publisher = threading.Thread(target=loop.run_until_complete, daemon=True, args=(
            _publish_when_ready(f"ws://127.0.0.1:{port}/ws/shade", mint("publish", secret=SECRET), stop_publishing),))
        publisher.start()
        (tmp_path / "threads.ipynb").write_text(json.dumps(_notebook([NOTEBOOK_THREAD])))
        lab_settings(tmp_path)
        server_env = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config"), "OOBLEX_CLUSTER": redis.url,
                      "OOBLEX_SECRET": SECRET, "OOBLEX_GATEWAY": gateway_url}
        with JupyterServer(tmp_path, app="jupyterlab", env=server_env, base_url="/user/alice/") as server, \
                playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            logs: list[str] = []
            page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
            try:
                open_notebook(page, server, "threads.ipynb")
                page.click("li.lm-TabBar-tab[data-id='ooblex-console']")  # before the thread exists
                panel = page.locator("#ooblex-console")
                panel.wait_for(state="visible")
                run_cell(page, 0)  # defines it: the panel's list follows the cell that ran
                handle = page.locator(".lm-SplitPanel-handle:visible").first  # widen the side panel
                box = handle.bounding_box()
                page.mouse.move(box["x"] + 2, box["y"] + 300)
                page.mouse.down()
                page.mouse.move(box["x"] + 650, box["y"] + 300, steps=5)
                page.mouse.up()

                # what the gateway console shows, from the server extension
                page.wait_for_selector("#ooblex-console .ob-deployment[data-name=shade] .ob-version.ob-active"
                                       "[data-version='2'] .ob-serving li", timeout=60_000)
                assert "Apache-2.0" in panel.locator(".ob-deployment[data-name=shade]").inner_text()
                page.wait_for_selector("#ooblex-console .ob-worker", timeout=30_000)
                page.wait_for_selector("#ooblex-console .ob-stream", timeout=60_000)
                _until(page, "Number(document.querySelector('#ooblex-console .ob-stream').dataset.samples) >= 4")

                # deploy the thread defined in the notebook, from the panel
                page.wait_for_selector("#ooblex-console .ob-notebook-threads option[value=mirror]", state="attached",
                                       timeout=30_000)
                panel.locator(".ob-deploy").click()
                page.wait_for_selector("#ooblex-console .ob-deployment[data-name=mirror] .ob-serving li",
                                       timeout=60_000)
                row = panel.locator(".ob-deployment[data-name=mirror] .ob-version[data-version='1']").inner_text()
                assert "ob.deploy" in row, row  # deployed_by: the kernel's ob.deploy

                # roll shade back to v1: JupyterLab's dialog asks first
                panel.locator(".ob-deployment[data-name=shade] .ob-version[data-version='1'] .ob-activate").click()
                page.locator(".jp-Dialog").wait_for()
                assert "version 1 instead of version 2" in page.locator(".jp-Dialog").inner_text()
                page.click(".jp-Dialog button.jp-mod-warn")
                page.wait_for_selector("#ooblex-console .ob-deployment[data-name=shade] .ob-version.ob-active"
                                       "[data-version='1'] .ob-serving li", timeout=60_000)

                # watch the stream through the server extension's proxy (no token in the page)
                panel.locator(".ob-stream .ob-watch").click()
                img = panel.locator(".ob-player img")
                img.wait_for()
                src = img.get_attribute("src")
                assert f"{server.url}/ooblex/gateway/mjpeg/" in src and "token" not in src, src
                _until(page, "document.querySelector('#ooblex-console .ob-player img').naturalWidth > 0", 30)
                time.sleep(2.5)  # a few more history samples for the screenshot
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel.png"))
                panel.locator(".ob-player img").scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel-streams.png"))

                # undeploy the notebook's thread
                panel.locator(".ob-deployment[data-name=mirror] .ob-undeploy").click()
                page.locator(".jp-Dialog").wait_for()
                page.click(".jp-Dialog button.jp-mod-warn")
                page.wait_for_selector("#ooblex-console .ob-deployment[data-name=mirror]", state="detached",
                                       timeout=30_000)
                assert SECRET not in page.content()
                errors = [m for m in logs if m.startswith("error") and "ooblex" in m.lower()]
                assert not errors, errors
            except BaseException:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel-failure.png"))
                print("\n".join(logs), server.log())
                raise
            finally:
                browser.close()
    finally:
        stop_publishing.set()
        if publisher is not None:
            publisher.join(10)
        for proc in (gateway, worker):
            stop(proc)
        redis.cleanup()


async def _publish_when_ready(url: str, token: str, stop_: asyncio.Event) -> None:
    for _ in range(100):
        try:
            await publish(url, token, stop_)
            return
        except Exception:  # noqa: BLE001 - not up yet (refused, or 404 before the gateway knows the thread)
            await asyncio.sleep(0.3)


def _notebook(cells: list[str]) -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    return json.loads(nbformat.writes(nb))


def test_the_panel_at_the_default_width_starts_from_no_cluster_to_the_notebooks_cluster(tmp_path) -> None:
    """JupyterLab at 1280x800 with the sidebar at its default width: with no cluster the panel says how to start
    one and polls ever less often (the server's log stays quiet); after ``ob.cluster()`` in the notebook it shows
    that cluster, with the deploy controls and the workers table inside the panel (screenshot: look at it)."""
    (tmp_path / "cluster.ipynb").write_text(json.dumps(_notebook([
        "import ooblex as ob\ncluster = ob.cluster()\ncluster", NOTEBOOK_THREAD + "dep = ob.deploy(mirror, wait=60)"])))
    lab_settings(tmp_path)
    server_env = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config"),
                  **{k: "" for k in os.environ if k.startswith("OOBLEX_")}}
    with JupyterServer(tmp_path, app="jupyterlab", env=server_env) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        try:
            open_notebook(page, server, "cluster.ipynb")
            page.click("li.lm-TabBar-tab[data-id='ooblex-console']")
            panel = page.locator("#ooblex-console")
            hint = panel.locator(".ob-no-cluster")
            hint.wait_for(timeout=30_000)
            assert "ob.cluster()" in hint.inner_text()
            _until(page, "Number(document.querySelector('#ooblex-console .ob-console').dataset.every) >= 4000", 30)
            polls = server.log().count("/ooblex/cluster")
            warnings = [line for line in server.log().splitlines() if "/ooblex/" in line and "WARN" in line]
            assert not warnings, warnings[:3]
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel-no-cluster.png"))

            run_cell(page, 0)
            run_cell(page, 1)
            page.wait_for_selector("#ooblex-console .ob-deployment[data-name=mirror] .ob-serving li", timeout=120_000)
            page.wait_for_selector("#ooblex-console .ob-worker", timeout=30_000)
            time.sleep(1.0)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel-default-width.png"))
            fits = page.evaluate("""() => {
                const p = document.querySelector('#ooblex-console');
                const right = p.getBoundingClientRect().right;
                const inside = (sel) => [...p.querySelectorAll(sel)]
                    .every((e) => e.getBoundingClientRect().right <= right + 1);
                return {deploy: inside('.ob-deploy'), workers: inside('.ob-workers table'),
                        overflow: p.scrollWidth - p.clientWidth, width: p.clientWidth};
            }""")
            assert fits["deploy"] and fits["workers"] and fits["overflow"] <= 1, fits
            assert polls < 20, f"{polls} polls of /ooblex/cluster while there was no cluster"
        except BaseException:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "jupyterlab-panel-default-width-failure.png"))
            print(server.log()[-5000:])
            raise
        finally:
            browser.close()
