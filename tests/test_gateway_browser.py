"""End to end in headless Chromium: the demo page streams a fake webcam through a thread and back."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from .netns import ROOT, in_netns

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--allow-loopback-in-peer-connection",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")]


async def until(page, expression: str, timeout_s: float = 20.0) -> None:  # noqa: ANN001
    """Poll ``expression`` in the page (``wait_for_function`` would need eval, which the pages' CSP forbids)."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(f"() => {{ try {{ return !!({expression}); }} catch (e) {{ return false; }} }}"):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        await asyncio.sleep(0.1)


async def _output_playing(page, seconds: float = 20.0) -> dict:
    """Wait for #output to show frames; returns its size and how far currentTime advanced."""
    await until(page, "document.getElementById('output').videoWidth > 0", seconds)
    t0 = await page.evaluate("document.getElementById('output').currentTime")
    await asyncio.sleep(1.5)
    return await page.evaluate(
        """(t0) => { const v = document.getElementById('output');
             return {width: v.videoWidth, height: v.videoHeight, advanced: v.currentTime - t0,
                     status: document.getElementById('status').textContent}; }""", t0)


@in_netns
@pytest.mark.parametrize("thread,codec", [("identity", ""), ("invert", ""), ("identity", "H264")])
async def test_demo_page_autostart_plays_processed_video(thread: str, codec: str) -> None:
    from playwright.async_api import async_playwright

    from ooblex.gateway.demo import demo_threads

    from .gateway_server import running_gateway

    ARTIFACTS.mkdir(exist_ok=True)
    with running_gateway(threads=demo_threads()) as gw:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 820})
                logs: list[str] = []
                page.on("console", lambda m: logs.append(f"{m.type}: {m.text}"))
                missing: list[str] = []
                page.on("response", lambda r: r.status >= 400 and missing.append(f"{r.status} {r.url}"))
                await page.goto(f"{gw.url}/?thread={thread}&autostart=1&codec={codec}")
                try:
                    state = await _output_playing(page)
                finally:
                    shot = ARTIFACTS / f"demo-{thread}{'-' + codec if codec else ''}.png"
                    await page.screenshot(path=str(shot), full_page=True)
                assert state["width"] > 0 and state["advanced"] > 0.5, (state, logs)
                assert gw.state.sessions.count("whip") == 1
                if codec:  # the browser encodes what it was asked for
                    sdp = next(iter(gw.state.sessions.items.values())).pc.localDescription.sdp
                    video = sdp[sdp.index("m=video"):]
                    first_pt = video.split("\r\n")[0].split()[3]
                    assert f"a=rtpmap:{first_pt} {codec}/90000" in video, video[:600]
                stream = next(iter(gw.state.engine.streams.values()))
                assert stream.thread.name == thread and stream.stats.counters["processed"] > 10
                await asyncio.sleep(1.2)  # the page polls stream stats every second
                assert "fps" in await page.text_content("#fps")
                assert await page.locator("#latency tbody tr").count() >= 3
                assert stream.id in await page.text_content("#whep-url")
                if thread == "invert":  # moving the slider changes the live stream's parameter
                    await page.eval_on_selector("input[name=amount]",
                                                "el => { el.value = 0.25; el.dispatchEvent(new Event('input')); }")
                    await asyncio.sleep(0.6)
                    assert stream.params == {"amount": 0.25}
                if thread == "invert":  # another thread while streaming: the camera goes on to it
                    assert await page.is_enabled("#thread")
                    await page.select_option("#thread", "edges")
                    await until(page, "document.getElementById('whep-url').textContent.includes('/whep/') && "
                                f"!document.getElementById('whep-url').textContent.includes('{stream.id}')")
                    await _output_playing(page)
                    [now] = gw.state.engine.streams.values()
                    assert now.thread.name == "edges" and gw.state.sessions.count("whip") == 1
                await page.click("#stop")
                await asyncio.sleep(1.0)
                assert not gw.state.sessions.items and not gw.state.engine.streams
                assert await page.text_content("#whep-url") == "–"
                assert await page.text_content("#status") == "Stopped."  # not "connected" after Stop
                assert not missing, missing  # nothing on the page is missing (no favicon 404)
            finally:
                await browser.close()


@in_netns
async def test_demo_page_with_a_secret_takes_a_token_and_shares_only_a_view_token() -> None:
    import httpx
    from playwright.async_api import async_playwright

    from ooblex.gateway import Settings
    from ooblex.gateway.demo import demo_threads
    from ooblex.tokens import mint, verify

    from .gateway_server import running_gateway

    secret = "browser-test-secret-0123456789"
    publish = mint("publish", thread="invert", secret=secret)
    ARTIFACTS.mkdir(exist_ok=True)
    with running_gateway(threads=demo_threads(), settings=Settings(loopback_candidates=True, secret=secret)) as gw:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 820})
                await page.goto(f"{gw.url}/?thread=edges&autostart=1")  # no token: refused, the page asks for one
                await until(page, "!document.getElementById('token-box').hidden")
                assert "401" in await page.text_content("#status")
                await page.goto(f"{gw.url}/?thread=invert&autostart=1#token={publish}")
                try:
                    state = await _output_playing(page)
                finally:
                    await page.screenshot(path=str(ARTIFACTS / "demo-with-token.png"), full_page=True)
                assert state["width"] > 0 and state["advanced"] > 0.5, state
                assert publish not in page.url  # moved out of the address bar
                mjpeg = await page.get_attribute("#mjpeg-url", "href")
                shared = httpx.URL(mjpeg).params["token"]
                assert shared != publish and verify(shared, secret).scope == "view"
                async with httpx.AsyncClient() as http, http.stream("GET", mjpeg) as r:
                    assert r.status_code == 200
                await page.click("#stop")
                await asyncio.sleep(1.0)
                assert not gw.state.sessions.items and not gw.state.engine.streams
            finally:
                await browser.close()
