"""End to end in headless Firefox ESR: the demo page streams a fake webcam through a thread and back."""

from __future__ import annotations

import time

import pytest

from .firefox import FIREFOX, Firefox, firefox, firefox_problem
from .netns import ROOT, in_netns

ARTIFACTS = ROOT / "test-artifacts"

pytestmark = [pytest.mark.timeout(150), pytest.mark.slow,
              pytest.mark.skipif(firefox_problem() is not None, reason=firefox_problem() or "")]

STATE = """const v = document.getElementById('output'), i = document.getElementById('input');
           return {width: v.videoWidth, height: v.videoHeight, time: v.currentTime, paused: v.paused,
                   inputWidth: i.videoWidth, status: document.getElementById('status').textContent};"""
CENTRE_PIXELS = """const px = id => { const v = document.getElementById(id), c = document.createElement('canvas');
                     c.width = v.videoWidth; c.height = v.videoHeight; const g = c.getContext('2d');
                     g.drawImage(v, 0, 0);
                     return Array.from(g.getImageData(c.width >> 1, c.height >> 1, 1, 1).data.slice(0, 3)); };
                   return {input: px('input'), output: px('output')};"""


def _output_playing(ff: Firefox, seconds: float = 20.0) -> dict:
    """Wait (bounded, to catch a hang) for #output to show frames; returns its state and how far it advanced."""
    deadline = time.monotonic() + seconds
    state = ff.execute_script(STATE)
    while state["width"] == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        state = ff.execute_script(STATE)
    t0 = state["time"]
    time.sleep(1.5)
    state = ff.execute_script(STATE)
    return {**state, "advanced": state["time"] - t0}


@pytest.mark.parametrize("thread", ["identity", "invert"])
@in_netns
def test_demo_page_autostart_plays_processed_video_in_firefox(thread: str) -> None:
    from ooblex.gateway.demo import demo_threads

    from .gateway_server import running_gateway

    ARTIFACTS.mkdir(exist_ok=True)
    with running_gateway(threads=demo_threads()) as gw, firefox() as ff:
        ff.navigate(f"{gw.url}/?thread={thread}&autostart=1")
        try:
            state = _output_playing(ff)
        finally:
            ff.screenshot(ARTIFACTS / f"demo-firefox-{thread}.png")
        assert state["width"] > 0 and state["advanced"] > 0.5 and not state["paused"], (state, FIREFOX)
        assert state["inputWidth"] > 0, state  # the fake camera shows on the page too
        assert gw.state.sessions.count("whip") == 1
        stream = next(iter(gw.state.engine.streams.values()))
        assert stream.thread.name == thread and stream.stats.counters["processed"] > 10
        pixels = ff.execute_script(CENTRE_PIXELS)
        expected = pixels["input"] if thread == "identity" else [255 - c for c in pixels["input"]]
        assert all(abs(a - b) < 40 for a, b in zip(pixels["output"], expected, strict=True)), pixels
        time.sleep(1.2)  # the page polls stream stats every second
        assert "fps" in ff.execute_script("return document.getElementById('fps').textContent")
        ff.execute_script("document.getElementById('stop').click()")
        time.sleep(1.0)
        assert not gw.state.sessions.items and not gw.state.engine.streams
        assert ff.execute_script("return document.getElementById('whep-url').textContent") == "–"
