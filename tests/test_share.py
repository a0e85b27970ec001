"""Sharing: the demo page's control-token login (``POST /api/v1/tokens``), its watch-only mode, and
``Deployment.share(view=...)``; in headless Chromium where a browser is what is shared with."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from ooblex.gateway import Settings
from ooblex.gateway.demo import demo_threads
from ooblex.tokens import mint, verify

from .gateway_server import running_gateway
from .netns import in_netns
from .test_gateway_browser import ARTIFACTS, CHROMIUM, FLAGS, _output_playing, until

SECRET = "share-test-secret-0123456789abcdef"


def test_a_control_token_mints_publish_and_view_tokens_for_its_own_subject_and_no_longer() -> None:
    control = mint("control", ttl_s=600, subject="alice", secret=SECRET)
    with running_gateway(threads=demo_threads(), settings=Settings(secret=SECRET)) as gw, \
            httpx.Client(base_url=gw.url, timeout=20) as http:
        def post(body: object, token: str | None = control) -> httpx.Response:
            return http.post("/api/v1/tokens", json=body, headers={"Authorization": f"Bearer {token}"} if token else {})

        r = post({"scope": "publish", "thread": "invert", "ttl_s": 86400})
        assert r.status_code == 201, r.text
        claims = verify(r.json()["token"], SECRET)
        assert (claims.scope, claims.thread, claims.subject) == ("publish", "invert", "alice")
        assert claims.expires <= time.time() + 601  # never outlives the control token
        r = post({"scope": "view", "stream": "abc"})
        assert r.status_code == 201 and verify(r.json()["token"], SECRET).stream == "abc"
        publish = mint("publish", thread="invert", secret=SECRET)
        assert post({"scope": "publish", "thread": "invert"}, publish).status_code == 403  # control only
        assert post({"scope": "publish", "thread": "invert"}, None).status_code == 401
        for bad in ({"scope": "control"}, {"scope": "view"}, {"scope": "publish", "thread": ""},
                    {"scope": "publish", "thread": "invert", "ttl_s": -1}, ["publish"]):
            r = post(bad)
            assert r.status_code == 400 and r.json()["detail"], (bad, r.text)
        r = http.post("/api/v1/tokens", content="scope=publish", headers={
            "Authorization": f"Bearer {control}", "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415  # a cross-site form cannot ask for a token
    with running_gateway(threads=demo_threads()) as gw:  # no secret: nothing to mint
        r = httpx.post(f"{gw.url}/api/v1/tokens", json={"scope": "publish", "thread": "invert"}, timeout=20)
        assert r.status_code == 409 and "no secret" in r.json()["detail"]


@in_netns
@pytest.mark.timeout(240)
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
async def test_log_in_with_a_control_token_stream_then_a_second_browser_watches_through_the_watch_link() -> None:
    from playwright.async_api import async_playwright

    control = mint("control", secret=SECRET)
    with running_gateway(threads=demo_threads(), settings=Settings(loopback_candidates=True, secret=SECRET)) as gw:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                publisher = await (await browser.new_context()).new_page()
                await publisher.goto(f"{gw.url}/?thread=invert")
                await publisher.click("#start")  # no token yet: refused, the page asks for one
                await until(publisher, "!document.getElementById('token-box').hidden")
                await publisher.fill("#token", control)
                await publisher.click("#login")
                await until(publisher, "document.getElementById('token-box').hidden")
                await publisher.click("#start")  # no other step: the page minted its publish token
                state = await _output_playing(publisher, 30)
                assert state["width"] > 0 and state["advanced"] > 0.5, state
                used = verify(await publisher.evaluate("sessionStorage.getItem('ooblex-token')"), SECRET)
                assert (used.scope, used.thread, used.subject) == ("publish", "invert", verify(control, SECRET).subject)
                await publisher.click("#share-publish")  # logged in with control: a link for others to publish
                await until(publisher, "document.getElementById('publish-url').textContent.includes('#token=')")
                shared = (await publisher.text_content("#publish-url")).split("#token=")
                assert shared[0] == f"{gw.url}/?thread=invert"
                assert (verify(shared[1], SECRET).scope, verify(shared[1], SECRET).thread) == ("publish", "invert")
                streams = list(gw.state.engine.streams.values())
                assert [s.thread.name for s in streams] == ["invert"]
                link = await publisher.get_attribute("#watch-url", "href")
                assert link.startswith(f"{gw.url}/?watch={streams[0].id}#token=") and control not in link
                view = link.split("#token=")[1]
                assert verify(view, SECRET).scope == "view" and verify(view, SECRET).stream == streams[0].id
                async with httpx.AsyncClient(timeout=20) as http:  # the view token cannot publish
                    r = await http.post(f"{gw.url}/whip/invert", content="v=0", headers={
                        "Authorization": f"Bearer {view}", "Content-Type": "application/sdp"})
                    assert r.status_code == 403, r.text

                viewer = await (await browser.new_context()).new_page()  # another person: no storage shared
                await viewer.goto(link)
                try:
                    state = await _output_playing(viewer, 30)
                finally:
                    ARTIFACTS.mkdir(exist_ok=True)
                    await publisher.screenshot(path=str(ARTIFACTS / "share-publisher.png"), full_page=True)
                    await viewer.screenshot(path=str(ARTIFACTS / "share-viewer.png"), full_page=True)
                assert state["width"] > 0 and state["advanced"] > 0.5, state
                assert view not in viewer.url
                assert not await viewer.is_visible("#input") and not await viewer.is_visible("#thread")
                assert await viewer.evaluate("document.getElementById('input').srcObject === null")  # no camera
                kinds = sorted(s.describe()["kind"] for s in gw.state.sessions.items.values())
                assert kinds == ["whep", "whip"], kinds
                assert len(gw.state.engine.streams) == 1  # watching opened no stream
                await viewer.click("#stop")
                await publisher.click("#stop")
                await asyncio.sleep(1.0)
                assert not gw.state.sessions.items and not gw.state.engine.streams
            finally:
                await browser.close()



@in_netns
@pytest.mark.timeout(300)
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
async def test_deployment_share_view_link_watches_a_live_stream_of_the_deployed_thread_and_cannot_publish() -> None:
    """One browser publishes through ``dep.share()``; another opens ``dep.share(view=stream_id)`` and sees it."""
    from playwright.async_api import async_playwright

    import ooblex as ob
    from ooblex.cluster.local import LocalCluster

    @ob.tensor_thread(name="watched_invert")
    def watched_invert(frame):  # noqa: ANN001, ANN202
        return 255 - frame

    local = await asyncio.to_thread(LocalCluster(workers=1).start)
    try:
        env = local.env
        dep = await asyncio.to_thread(ob.deploy, watched_invert, env["OOBLEX_BROKER"], secret=env["OOBLEX_SECRET"],
                                      wait=90)
        with pytest.raises(ValueError, match="one live stream"):
            dep.share(view="*")
        control = mint("control", secret=env["OOBLEX_SECRET"])
        async with async_playwright() as p, httpx.AsyncClient(timeout=20) as http:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                publisher = await (await browser.new_context()).new_page()
                await publisher.goto(await asyncio.to_thread(dep.share, "10m"))
                await publisher.click("#start")
                assert (await _output_playing(publisher, 60))["width"] > 0
                streams = (await http.get(f"{local.gateway}/api/v1/streams",
                                          headers={"Authorization": f"Bearer {control}"})).json()
                [stream_id] = [s["id"] for s in streams]
                link = await asyncio.to_thread(dep.share, "10m", view=stream_id)
                assert link.startswith(f"{local.gateway}/?watch={stream_id}#token=")
                view = link.split("#token=")[1]
                r = await http.post(f"{local.gateway}/whip/watched_invert", content="v=0", headers={
                    "Authorization": f"Bearer {view}", "Content-Type": "application/sdp"})
                assert r.status_code == 403, r.text
                viewer = await (await browser.new_context()).new_page()
                await viewer.goto(link)
                state = await _output_playing(viewer, 60)
                assert state["width"] > 0 and state["advanced"] > 0.5, state
                assert view not in viewer.url
                streams = (await http.get(f"{local.gateway}/api/v1/streams",
                                          headers={"Authorization": f"Bearer {control}"})).json()
                assert [s["id"] for s in streams] == [stream_id]  # the viewer opened no stream of its own
            finally:
                await browser.close()
    finally:
        await asyncio.to_thread(local.stop)
