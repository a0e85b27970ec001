"""``/console`` in headless Chromium against a real cluster (redis-server, an ``ooblex worker`` process, a
gateway), inside a private network namespace (WHEP): log in, deploy through the upload forms, see the
worker pick each version up, roll back, watch a live stream's charts move and the stream itself over
WHEP, refused uploads, undeploy. Screenshots go to test-artifacts/ (docs/console.md shows them)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import ooblex as ob

from .cluster_fixtures import SECRET, needs_redis, start_worker, stop
from .netns import ROOT, in_netns
from .test_console_api import shade, shade_v2

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow, needs_redis,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")]


def scene(i: int, width: int = 320, height: int = 240) -> np.ndarray:
    """A smooth picture with a ball that moves: easy on the eye in screenshots, and on PNG sizes."""
    import cv2

    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(40, 200, width, dtype=np.uint8)[None, :]
    img[..., 2] = np.linspace(200, 60, height, dtype=np.uint8)[:, None]
    centre = (int(width / 2 + width / 3 * np.sin(i / 12)), int(height / 2 + height / 4 * np.cos(i / 9)))
    cv2.circle(img, centre, height // 6, (250, 220, 40), -1)
    return img


async def publish(url: str, token: str, stop_: asyncio.Event) -> None:
    """A camera stand-in: JPEG frames over the gateway's WebSocket at ~15 fps until ``stop_``."""
    from websockets.asyncio.client import connect

    from ooblex import jpeg

    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        json.loads(await ws.recv())

        async def drain() -> None:
            async for _ in ws:
                pass

        reader = asyncio.create_task(drain())
        i = 0
        while not stop_.is_set():
            await ws.send(jpeg.encode(scene(i)))
            i += 1
            await asyncio.sleep(1 / 15)
        reader.cancel()


async def until(page, expression: str, timeout_s: float = 60) -> None:  # noqa: ANN001
    """Poll ``expression`` in the page (``wait_for_function`` would need eval, which the page's CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(f"() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }}"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        await asyncio.sleep(0.25)


@in_netns
async def test_console_deploys_rolls_back_and_charts_a_live_stream(tmp_path: Path) -> None:
    import os

    from playwright.async_api import async_playwright

    from ooblex.cluster.servers import RedisServer
    from ooblex.gateway import Settings
    from ooblex.tokens import mint

    from .gateway_server import running_gateway
    from .test_console_api import tiny_onnx

    os.environ["OOBLEX_SECRET"] = SECRET
    ARTIFACTS.mkdir(exist_ok=True)
    v1 = ob.deploy(shade, export=tmp_path / "shade-v1.ooblex", license="Apache-2.0", requirements=["numpy"])
    v2 = ob.deploy(shade_v2, export=tmp_path / "shade-v2.ooblex", license="Apache-2.0")
    onnx_model = tiny_onnx(tmp_path / "negative.onnx")
    junk = tmp_path / "notes.ooblex"
    junk.write_text("not an artifact")
    control = mint("control", secret=SECRET)
    redis = RedisServer().start()
    worker = start_worker(redis.url)
    stop_publishing = asyncio.Event()
    try:
        settings = Settings(secret=SECRET, loopback_candidates=True)
        with running_gateway(broker=redis.url, settings=settings) as gw:
            async with async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = await browser.new_page(viewport={"width": 1400, "height": 1100})
                logs: list[str] = []
                page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
                dialogs: list[str] = []

                async def accept(dialog) -> None:  # noqa: ANN001
                    dialogs.append(dialog.message)
                    await dialog.accept()

                page.on("dialog", lambda d: asyncio.ensure_future(accept(d)))
                try:
                    # a secret is set: the page asks for a control token; a wrong one is refused
                    await page.goto(f"{gw.url}/console")
                    await page.wait_for_selector("#login:not([hidden])")
                    await page.screenshot(path=str(ARTIFACTS / "console-login.png"))
                    await page.fill("#token", mint("publish", secret=SECRET))
                    await page.click("#login button")
                    await until(page, "document.getElementById('login-error').textContent.includes('control')")
                    await page.fill("#token", control)
                    await page.click("#login button")
                    await page.wait_for_selector("#app:not([hidden])")
                    assert control not in page.url and "token" not in page.url
                    assert await page.evaluate("sessionStorage.getItem('ooblex-control-token')") == control

                    # deploy v1 through the artifact form: the worker process picks it up
                    await page.set_input_files("#artifact-file", str(v1))
                    await page.click("#artifact-form button")
                    v1_served = (".ob-deployment[data-name=shade] .ob-version.ob-active[data-version='1'] "
                                 ".ob-serving li")
                    await page.wait_for_selector(v1_served, timeout=60_000)
                    row = await page.text_content(".ob-deployment[data-name=shade] .ob-version[data-version='1']")
                    assert "Apache-2.0" in row and "numpy" in row and "signed ✓" in row and "export" in row
                    assert await page.locator(".ob-worker").count() == 1
                    assert "shade" in await page.text_content(".ob-worker")

                    # v2, then roll back to v1 with the button (and its confirmation)
                    await page.set_input_files("#artifact-file", str(v2))
                    await page.click("#artifact-form button")
                    await page.wait_for_selector(".ob-deployment[data-name=shade] .ob-version.ob-active"
                                                 "[data-version='2'] .ob-serving li", timeout=60_000)
                    await page.click(".ob-deployment[data-name=shade] .ob-version[data-version='1'] .ob-activate")
                    await page.wait_for_selector(v1_served, timeout=60_000)
                    assert any("version 1 instead of version 2" in d for d in dialogs), dialogs

                    # an ONNX model with the transform form
                    await page.set_input_files("#onnx-form input[name=model]", str(onnx_model))
                    await page.fill("#onnx-form input[name=name]", "negative")
                    await page.fill("#onnx-form input[name=license]", "MIT")
                    await page.click("#onnx-form button")
                    await page.wait_for_selector(".ob-deployment[data-name=negative] .ob-serving li", timeout=90_000)

                    # refused uploads say why
                    await page.set_input_files("#artifact-file", str(junk))
                    await page.click("#artifact-form button")
                    await until(page, "document.getElementById('notice').textContent.includes('not a zip')")
                    assert await page.get_attribute("#notice", "class") == "notice bad"

                    # a live stream: its charts fill and move, and it can be watched over WHEP
                    ws_url = gw.url.replace("http", "ws") + "/ws/shade"
                    publisher = asyncio.create_task(publish(ws_url, mint("publish", secret=SECRET), stop_publishing))
                    await page.wait_for_selector(".ob-stream", timeout=30_000)
                    await until(page, "Number(document.querySelector('.ob-stream').dataset.samples) >= 4 && "
                                      "Number(document.querySelector('.ob-stream').dataset.lastFps) > 5")
                    chart = page.locator(".ob-stream .ob-chart").first
                    before = await chart.screenshot()
                    await asyncio.sleep(2.5)
                    assert await chart.screenshot() != before, "the fps chart moves with the stream"
                    assert await page.locator(".ob-stream canvas").count() >= 2  # uPlot draws on canvases
                    counters = await page.text_content(".ob-stream .ob-counters")
                    assert "dropped" in counters and "errors 0" in counters
                    assert "/mjpeg/" in await page.text_content(".ob-stream .ob-mjpeg")
                    await page.click(".ob-stream .ob-watch")
                    await until(page, "(v => v && v.videoWidth > 0)(document.querySelector('.ob-player video'))",
                                timeout_s=30)
                    t0 = await page.evaluate("document.querySelector('.ob-player video').currentTime")
                    await asyncio.sleep(1.5)
                    assert await page.evaluate("document.querySelector('.ob-player video').currentTime") > t0
                    assert gw.state.sessions.count("whep") == 1
                    await page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
                    await page.click(".ob-stream .ob-watch")  # stop watching: the WHEP session ends
                    await asyncio.sleep(1.0)
                    assert gw.state.sessions.count("whep") == 0
                    stop_publishing.set()
                    await asyncio.wait_for(publisher, 10)

                    # undeploy (confirmed): the thread leaves the list and the worker
                    await page.click(".ob-deployment[data-name=shade] .ob-undeploy")
                    await page.wait_for_selector(".ob-deployment[data-name=shade]", state="detached", timeout=30_000)
                    deadline = time.monotonic() + 30
                    while "shade" in await page.text_content(".ob-workers"):
                        assert time.monotonic() < deadline, "the worker still serves shade"
                        await asyncio.sleep(0.5)
                    assert not [m for m in logs if m.startswith("error") and "Failed to load resource" not in m], logs
                except BaseException:
                    await page.screenshot(path=str(ARTIFACTS / "console-failure.png"), full_page=True)
                    print("\n".join(logs))
                    raise
                finally:
                    await browser.close()
    finally:
        stop_publishing.set()
        stop(worker)
        redis.cleanup()
