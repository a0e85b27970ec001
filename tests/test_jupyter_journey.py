"""The notebook-to-service journey in JupyterLab with Chromium's fake webcam: test a function live, start a
cluster (the Jupyter server's), deploy, watch the deployed version next to the notebook's code in compare
mode, then open ``dep.share()``'s link in a second browser context that publishes and sees processed video.
Each step's wall time goes to test-artifacts/journey_times.json (docs/jupyter.md quotes them)."""

from __future__ import annotations

import json
import re
import time

import pytest

playwright = pytest.importorskip("playwright.sync_api")
from .cluster_fixtures import needs_redis  # noqa: E402
from .jupyter_proc import CHROMIUM, PANEL, run_cell  # noqa: E402
from .netns import in_netns  # noqa: E402
from .test_jupyter_browser import ARTIFACTS, Browser, write_notebook  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600), needs_redis,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/system-deps)")]

CELLS = [
    "import ooblex as ob\n\ndef inv(frame):\n    return 255 - frame\n\nlive = ob.live(inv)\nlive",
    "cluster = ob.cluster()\ncluster",
    "dep = ob.deploy(inv, wait=90)\nprint(dep)",
    "both = ob.live([inv, dep])\nboth",
    "print(dep.share('10m'))",
]


def lanes_streaming(page, widget: int, n: int, timeout: float = 90) -> list[int]:
    """Wait until every lane of the ``widget``-th live widget has shown ``n`` frames; their counts."""
    lanes = page.locator(".ooblex-live").nth(widget).locator(".ooblex-lane")
    deadline = time.time() + timeout
    while True:
        shown = [int(lanes.nth(i).get_attribute("data-frames-shown") or 0) for i in range(lanes.count())]
        if shown and min(shown) >= n:
            return shown
        assert time.time() < deadline, f"lanes showed {shown} frames: " \
            f"{page.locator('.ooblex-live').nth(widget).locator('.ooblex-status').inner_text()}"
        time.sleep(0.5)


def output_of(page, cell: int, pattern: str, timeout: float = 120) -> str:
    out = page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(cell).locator(".jp-OutputArea-output")
    deadline = time.time() + timeout
    while not re.search(pattern, text := " ".join(out.all_inner_texts())):
        assert time.time() < deadline, f"cell {cell}: {text!r}"
        time.sleep(0.2)
    return text


@in_netns
def test_live_cluster_deploy_compare_and_share(tmp_path, monkeypatch):
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    write_notebook(tmp_path / "journey.ipynb", CELLS)
    times: dict[str, float] = {}
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, "jupyterlab")
        page = b.page
        try:
            b.open("journey.ipynb")
            t = time.perf_counter()
            run_cell(page, 0)
            lanes_streaming(page, 0, 10)
            times["live: first 10 frames"] = time.perf_counter() - t
            for cell, step, pattern in ((1, "ob.cluster()", r"Ooblex cluster"), (2, "ob.deploy", r"<Deployment inv@1")):
                t = time.perf_counter()
                run_cell(page, cell)
                output_of(page, cell, pattern)
                times[step] = time.perf_counter() - t
            t = time.perf_counter()
            run_cell(page, 3)
            shown = lanes_streaming(page, 1, 10)
            times["compare: 10 frames in both lanes"] = time.perf_counter() - t
            labels = page.locator(".ooblex-live").nth(1).locator(".ooblex-lane .ooblex-label").all_text_contents()
            assert labels == ["inv (notebook)", "inv@1 (cluster)"], labels
            page.locator(".ooblex-live").nth(1).screenshot(path=str(ARTIFACTS / "journey_compare.png"))
            run_cell(page, 4)
            link = re.search(r"http://\S+#token=\S+", output_of(page, 4, r"#token=")).group(0)

            t = time.perf_counter()
            context = b.browser.new_context()  # a colleague: no Jupyter cookie, only the link
            colleague = context.new_page()
            colleague.goto(link)
            colleague.click("#start")
            state = _playing_sync(colleague)
            times["share link: processed video in a second browser"] = time.perf_counter() - t
            colleague.screenshot(path=str(ARTIFACTS / "journey_share.png"))
            assert state["width"] > 0 and state["advanced"] > 0.5, state
            assert "#token=" not in colleague.url
            context.close()
            assert min(lanes_streaming(page, 1, max(shown) + 10)) > 0  # compare mode still streams
        except Exception:
            b.fail("journey")
            raise
        finally:
            b.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "journey_times.json").write_text(json.dumps({k: round(v, 2) for k, v in times.items()}, indent=1))
    print(json.dumps(times))


def _playing_sync(page, seconds: float = 60.0) -> dict:
    """The demo page's #output shows frames: its size, and how far its playback advanced in 1.5 s."""
    deadline = time.time() + seconds
    while not page.evaluate("() => document.getElementById('output').videoWidth > 0"):
        assert time.time() < deadline, page.text_content("#status")
        time.sleep(0.2)
    t0 = page.evaluate("document.getElementById('output').currentTime")
    time.sleep(1.5)
    return page.evaluate("""(t0) => { const v = document.getElementById('output');
        return {width: v.videoWidth, advanced: v.currentTime - t0}; }""", t0)
