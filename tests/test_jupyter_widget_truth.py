"""A live widget that tells the truth (issue 22, point 4).

Kernel side: a heartbeat while stopped and a poster (the newest input | output as a small JPEG).
In JupyterLab with headless Chromium and a fake webcam: a kernel restart with the widget open (it says
so, the fake camera's tracks end, the stats grey out, Start/Stop go inert), a kernel shutdown, a camera
that cannot start (the widget stops: the button says Start, ``live.running`` is False), and a saved
notebook reopened on a fresh server (the poster of the newest frames, no "model not found").
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time

import nbformat
import numpy as np
import pytest

from ooblex import jpeg

from .jupyter_proc import CHROMIUM, PANEL

pytest.importorskip("anywidget")
from .kernel_frontend import KernelFrontend  # noqa: E402
from .test_jupyter_widget import SETUP, send_frame  # noqa: E402

LIVE = "import ooblex as ob\nlive = ob.live(ob.identity)\nlive"
NO_CAMERA = ('bad = ob.live(ob.identity, name="bad", autostart=False)\n'
             'bad.constraints = {"width": {"exact": 12345}}\nbad.start()\nbad')
TRACKS = "window.__tracks = [...document.querySelectorAll('video.ooblex-input')].map((v) => v.srcObject)" \
         ".filter(Boolean).flatMap((s) => s.getTracks())"


@pytest.fixture(scope="module")
def kernel():
    k = KernelFrontend()
    yield k
    k.close()


def test_the_kernel_beats_while_stopped_and_keeps_a_poster_of_the_newest_frames(kernel):
    comm_id = kernel.execute(SETUP).strip()
    for seq in range(3):
        send_frame(kernel, comm_id, seq, value=200)
    deadline = time.time() + 20
    while not (size := int(kernel.execute("print(len(w.poster))"))) and time.time() < deadline:
        time.sleep(0.5)
    assert size > 0, "no poster within 20 s of the first frames"
    kernel.execute("import numpy as np; from ooblex import jpeg; p = jpeg.decode(w.poster)")
    shape = kernel.execute("print(p.shape)").strip()
    assert shape == "(240, 640, 3)", shape  # input | output, 240 px high (each 48x64 frame scaled to 320 wide)
    # the frame's left half is 200 and its right half 0; the output is the inverted input
    halves = [json.loads(kernel.execute(f"print(float(p[10:-10, {a + 10}:{a + 150}].mean()))"))
              for a in (0, 160, 320, 480)]
    assert np.allclose(halves, [200, 0, 55, 255], atol=15), halves
    kernel.execute("w.stop()")
    beat, _ = kernel.wait_custom(comm_id, lambda c: c.get("type") == "beat", timeout=10)
    assert beat["running"] is False


def test_the_poster_puts_each_lane_next_to_the_input():
    from ooblex.jupyter.recording import Shot
    from ooblex.jupyter.widget import POSTER_HEIGHT, _poster

    image = np.full((120, 160, 3), 30, np.uint8)
    shots = [Shot(image, 255 - image, None, None, 1, 5.0), Shot(image, None, None, "boom", 1, 5.0)]
    poster = jpeg.decode(_poster(shots))
    assert poster.shape == (POSTER_HEIGHT, 2 * POSTER_HEIGHT * 4 // 3, 3)  # input, first lane (the second: no output)
    assert _poster([None]) == b""


# --- in the browser ------------------------------------------------------------------------------
@pytest.fixture
def browser(tmp_path, monkeypatch):
    """JupyterLab with the extension and headless Chromium with a fake camera (``Browser`` of the browser tests)."""
    if not CHROMIUM.exists():
        pytest.skip("needs /usr/bin/chromium (.ci/system-deps)")
    playwright = pytest.importorskip("playwright.sync_api")
    from .test_jupyter_browser import Browser

    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    with playwright.sync_playwright() as p:
        made: list[Browser] = []

        def start(app: str = "jupyterlab") -> Browser:
            made.append(Browser(p, tmp_path, app))
            return made[-1]

        try:
            yield start
        finally:
            for b in made:
                b.close()


def write_notebook(path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nbformat.write(nb, path)


def kernel_menu(page, item: str, confirm: str | None = None) -> None:
    """Kernel → ``item`` from the menu bar, then the dialog's ``confirm`` button (if it asks)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Kernel$")).click()
    page.locator(".lm-Menu-item:visible", has_text=re.compile(f"^{item}")).first.click()
    if confirm is not None:
        button = page.locator(".jp-Dialog button", has_text=re.compile(f"^{confirm}$"))
        button.wait_for(timeout=10_000)
        button.click()


def camera_tracks(page) -> list[str]:
    return page.evaluate("() => window.__tracks.map((t) => t.readyState)")


def assert_dead(page, widget, why: str) -> None:
    """The view says ``why``, its camera is off, its stats are greyed out and nothing in it can be pressed."""
    deadline = time.monotonic() + 30  # this view, not another one on the page; the bound only catches a hang
    while widget.get_attribute("data-state") != "dead":
        assert time.monotonic() < deadline, "the view did not notice that its kernel is gone"
        time.sleep(0.1)
    assert why in widget.locator(".ooblex-status").inner_text()
    assert camera_tracks(page) and set(camera_tracks(page)) == {"ended"}, camera_tracks(page)
    assert page.evaluate("() => document.querySelector('video.ooblex-input').srcObject") is None
    toggle = widget.locator(".ooblex-toggle")
    assert toggle.inner_text() == "Start" and toggle.is_disabled()
    assert widget.locator(".ooblex-snapshot").is_disabled() and widget.locator(".ooblex-record").is_disabled()
    opacity = page.evaluate("() => Number(getComputedStyle(document.querySelector("
                            "'.ooblex-lane .ooblex-stats')).opacity)")
    assert opacity < 0.6, opacity
    before = int(widget.get_attribute("data-frames-shown"))
    time.sleep(2)
    assert int(widget.get_attribute("data-frames-shown")) == before


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("app", ["jupyterlab", "notebook"])
def test_a_restart_stops_the_widget_and_the_saved_notebook_keeps_its_frames(app, browser, tmp_path):
    from .jupyter_proc import open_notebook, run_cell
    from .test_jupyter_browser import ARTIFACTS, wait_frames

    write_notebook(tmp_path / "truth.ipynb", [LIVE])
    ARTIFACTS.mkdir(exist_ok=True)
    b = browser(app)
    page = b.page
    try:
        b.open("truth.ipynb")
        run_cell(page, 0)
        widget = page.locator(".ooblex-live")
        wait_frames(page, widget.element_handle(timeout=60_000), 30)
        time.sleep(3)  # a poster (refreshed every 2 s) of these frames
        page.evaluate(TRACKS)
        assert set(camera_tracks(page)) == {"live"}
        assert widget.locator(".ooblex-toggle").inner_text() == "Stop"

        kernel_menu(page, "Restart Kernel", "Restart")
        assert_dead(page, widget, "kernel restarted: run the cell again")
        widget.screenshot(path=str(ARTIFACTS / f"jupyter_widget_after_restart_{app}.png"))

        page.locator(f"{PANEL} .jp-Notebook").click()
        page.keyboard.press("Control+s")
        deadline = time.time() + 30
        while "widget-state" not in (text := (tmp_path / "truth.ipynb").read_text()):
            assert time.time() < deadline, "the notebook was not saved with the widget's state"
            time.sleep(0.5)
    except Exception:
        b.fail(f"jupyter_widget_restart_{app}")
        raise
    b.server.stop()  # the kernel that drew the frames is gone

    saved = json.loads(text)
    state = saved["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    view = saved["cells"][0]["outputs"][0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert [buf["path"] for buf in state[view].get("buffers", [])] == [["poster"]]
    poster_bytes = len(base64.b64decode(state[view]["buffers"][0]["data"]))
    print(f"poster in the saved notebook: {poster_bytes} bytes")
    assert 1000 < poster_bytes < 100_000, poster_bytes

    again = browser(app)  # a new server, a new kernel
    page = again.page
    try:
        open_notebook(page, again.server, "truth.ipynb")
        poster = page.wait_for_selector(".ooblex-live[data-state=saved] img.ooblex-poster", timeout=60_000)
        page.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=poster, timeout=10_000)
        size = page.evaluate("(img) => [img.naturalWidth, img.naturalHeight]", poster)
        assert size == [640, 240], size  # 640x480 input | output at 240 px high
        assert "model not found" not in page.locator(PANEL).inner_text()
        assert "run the cell to go live" in page.locator(".ooblex-live .ooblex-status").inner_text()
        page.locator(f"{PANEL} .jp-Cell").first.screenshot(path=str(ARTIFACTS / f"jupyter_widget_saved_view_{app}.png"))
    except Exception:
        again.fail(f"jupyter_widget_saved_view_{app}")
        raise


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_shutdown_stops_the_widget_and_a_camera_that_cannot_start_stops_it_too(browser, tmp_path):
    from .jupyter_proc import run_cell
    from .test_jupyter_browser import ARTIFACTS, wait_frames

    cells = [LIVE, NO_CAMERA, "import os\nprint(bad.running, live.running, os.getpid())"]
    write_notebook(tmp_path / "shutdown.ipynb", cells)
    b = browser()
    page = b.page
    try:
        b.open("shutdown.ipynb")
        run_cell(page, 0)
        good = page.locator(".ooblex-live").first
        wait_frames(page, good.element_handle(timeout=60_000), 20)
        run_cell(page, 1)
        bad = page.locator(f"{PANEL} .jp-Cell").nth(1).locator(".ooblex-live")
        bad.locator(".ooblex-status", has_text="camera unavailable: OverconstrainedError").wait_for(timeout=30_000)
        assert bad.locator(".ooblex-toggle").inner_text() == "Start"
        assert bad.get_attribute("data-running") == "false"
        run_cell(page, 2, ran=r"\[3\]")
        printed = page.locator(f"{PANEL} .jp-Cell").nth(2).locator(".jp-OutputArea-output")
        printed.wait_for(timeout=30_000)
        running, live_running, pid = printed.inner_text().split()
        assert (running, live_running) == ("False", "True")

        os.kill(int(pid), signal.SIGSTOP)  # a kernel that says nothing (as one stuck outside Python)
        try:
            good.locator(".ooblex-status", has_text="the kernel has not answered for").wait_for(timeout=20_000)
            assert good.get_attribute("data-state") == "silent"
        finally:
            os.kill(int(pid), signal.SIGCONT)
        page.wait_for_function("(el) => el.dataset.state === 'live'", arg=good.element_handle(), timeout=20_000)
        wait_frames(page, good.element_handle(), int(good.get_attribute("data-frames-shown")) + 10)

        page.evaluate(TRACKS)
        assert set(camera_tracks(page)) == {"live"}
        kernel_menu(page, "Shut Down Kernel")  # JupyterLab 4 does not ask
        assert_dead(page, good, "kernel was shut down")
        ARTIFACTS.mkdir(exist_ok=True)
        good.screenshot(path=str(ARTIFACTS / "jupyter_widget_after_shutdown.png"))
    except Exception:
        b.fail("jupyter_widget_shutdown")
        raise
