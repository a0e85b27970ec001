"""End to end: JupyterLab 4 and Notebook 7 in headless Chromium with a fake webcam, as a person uses them.

The browser captures the fake camera and sends frames over the side channel (the server extension's
WebSocket, proxied to the kernel's live loop thread); the kernel runs them through the engine and the
processed frames are drawn. Checked: frames keep flowing while another cell runs, edit-and-rerun and a
slider, Run All of the notebooks with the webcam, light and dark themes (text contrast), compare mode,
the result overlay and the toolbar (resolution, mirror, Snapshot, Record). Screenshots and the
widget's own round-trip measurement go to test-artifacts/.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time

import nbformat
import pytest

playwright = pytest.importorskip("playwright.sync_api")
from .jupyter_proc import (  # noqa: E402
    CHROMIUM,
    FLAGS,
    PANEL,
    ROOT,
    JupyterServer,
    lab_settings,
    open_notebook,
    run_all,
    run_cell,
)

ARTIFACTS = ROOT / "test-artifacts"
FRAMES = 150
CONFIG = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config")}  # the extension, as installed

SWAPPED = """import ooblex as ob

@ob.tensor_thread(params={"levels": {"min": 2, "max": 16}})
def cartoon(frame, levels: int = 4):
    return 255 - frame, {"swapped": True, "levels": levels}

live = ob.live(cartoon)
live
"""
BUSY = "import time\ntime.sleep(6)"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600),
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (.ci/system-deps)")]


class Browser:
    """A Jupyter app and headless Chromium with a fake camera; keeps a screenshot and the logs on failure."""

    def __init__(self, p, tmp_path, app: str, theme: str = "JupyterLab Light", args: list[str] | None = None,
                 base_url: str = "/", cameras: int = 1, video=None) -> None:
        pytest.importorskip(app)
        lab_settings(tmp_path, theme)
        self.app, self.tmp = app, tmp_path
        self.server = JupyterServer(tmp_path, app=app, env=CONFIG, args=args, base_url=base_url).start()
        flags = [f if f != "--use-fake-device-for-media-stream" else f"{f}=device-count={cameras}" for f in FLAGS]
        if video is not None:  # the fake camera plays this Y4M file
            flags.append(f"--use-file-for-fake-video-capture={video}")
        self.browser = p.chromium.launch(executable_path=str(CHROMIUM), args=flags, headless=True)
        self.page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))

    def open(self, name: str) -> None:
        open_notebook(self.page, self.server, name)

    def fail(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}_failure.png"))
        (ARTIFACTS / f"{name}_console.txt").write_text("\n".join(self.console) + "\n\n" + self.server.log())

    def close(self) -> None:
        self.browser.close()
        self.server.stop()


def write_notebook(path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                  metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    nbformat.write(nb, path)


def frames_shown(widget) -> int:
    return int(widget.get_attribute("data-frames-shown") or 0)


def wait_frames(page, widget, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while frames_shown(widget) < n:
        assert time.time() < deadline, f"only {frames_shown(widget)} frames shown: " \
            f"{page.locator('.ooblex-status').first.inner_text()}"
        time.sleep(0.5)


def contrast(page, selector: str) -> float:
    """WCAG contrast ratio of an element's text against the first opaque background behind it."""
    return page.evaluate("""(sel) => {
        const rgb = (s) => s.match(/[\\d.]+/g).map(Number);
        const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92
            : Math.pow((v + 0.055) / 1.055, 2.4); }).reduce((a, v, i) => a + v * [0.2126, 0.7152, 0.0722][i], 0);
        const el = document.querySelector(sel);
        let bg = null;
        for (let e = el; e && !bg; e = e.parentElement) {
            const c = rgb(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] > 0.5) bg = c;
        }
        bg = (bg || [255, 255, 255]).slice(0, 3);
        const fg = rgb(getComputedStyle(el).color), alpha = fg.length > 3 ? fg[3] : 1;
        const [a, b] = [lum(fg.slice(0, 3).map((v, i) => v * alpha + bg[i] * (1 - alpha))), lum(bg)];
        return (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    }""", selector)


@pytest.mark.parametrize("app, theme, base_url", [("jupyterlab", "JupyterLab Light", "/"),
                                                  ("notebook", "JupyterLab Dark", "/user/alice/")])
def test_quickstart_streams_while_the_notebook_works(app, theme, base_url, tmp_path, monkeypatch):
    """The quickstart's live cell: frames over the side channel, readable in the theme, edit-and-rerun and a
    slider, and frames still flowing while another cell sleeps. Notebook 7 runs under a JupyterHub-style
    base URL."""
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)  # the browser's (fake) webcam
    shutil.copy(ROOT / "notebooks" / "01_quickstart.ipynb", tmp_path / "quickstart.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    tag = f"{app}_{theme.split()[-1].lower()}"
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, app, theme, base_url=base_url)
        page = b.page
        try:
            b.open("quickstart.ipynb")
            run_cell(page, 1)
            widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
            wait_frames(page, widget, FRAMES)
            assert widget.get_attribute("data-transport") == "channel"
            assert page.locator(".ooblex-path").inner_text() == "side channel"
            p50, p95 = float(widget.get_attribute("data-rtt-p50")), float(widget.get_attribute("data-rtt-p95"))
            out = page.evaluate("""() => {
                const c = document.querySelector('.ooblex-live canvas.ooblex-output');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let dark = 0; for (let i = 0; i < d.length; i += 4) dark += (d[i] + d[i+1] + d[i+2]) < 60;
                return {w: c.width, h: c.height, dark: dark / (d.length / 4)};
            }""")
            time.sleep(1.0)  # let a stats message with the stage latencies render for the screenshot
            page.locator(".ooblex-live").screenshot(path=str(ARTIFACTS / f"jupyter_live_{tag}.png"))
            stats_line = page.locator(".ooblex-stats").nth(1).inner_text()
            readable = {s: contrast(page, f".ooblex-live {s}") for s in (".ooblex-stats:not(.ooblex-input-stats)",
                                                                       ".ooblex-label", ".ooblex-title")}
            swap_and_tune(page)
            busy = busy_frames(page, page.wait_for_selector(".ooblex-live"), 3)  # the view re-run cells show
        except Exception:
            b.fail(f"jupyter_live_{tag}")
            raise
        finally:
            b.close()
    result = {"frames_shown": FRAMES, "round_trip_ms": {"p50": p50, "p95": p95}, "output": out,
              "stats_line": stats_line, "contrast": readable, "busy": busy}
    (ARTIFACTS / f"jupyter_live_{tag}_rtt.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    assert out["w"] == 640 and out["h"] == 480
    assert 0.001 < out["dark"] < 0.9, "the output is not the cartoon of a camera picture (no black outlines)"
    assert 0 < p50 <= p95 < 5000
    assert "fps" in stats_line and "compute" in stats_line
    assert readable[".ooblex-stats:not(.ooblex-input-stats)"] >= 4.5 and min(readable.values()) >= 3, readable
    assert busy["frames"] >= 10, f"the widget froze while a cell ran: {busy}"


def swap_and_tune(page) -> None:
    """Edit the cell and re-run it: the running widget takes the new code (no reload), then a
    slider moved in the browser reaches the function while frames flow."""
    edit_cell(page, 1, SWAPPED)
    run_cell(page, 1, ran=r"\[2\]")
    page.locator(".ooblex-title", has_text="v2").wait_for(timeout=60_000)
    result = page.locator(".ooblex-result")
    page.wait_for_function("() => document.querySelector('.ooblex-result').textContent.includes('swapped')",
                           timeout=60_000)
    assert '"levels":4' in result.inner_text()
    page.locator("[data-param=levels]").fill("9")
    page.wait_for_function("() => document.querySelector('.ooblex-result').textContent.includes('\"levels\":9')",
                           timeout=30_000)


def busy_frames(page, widget, cell: int) -> dict[str, float]:
    """Frames ``widget`` shows while ``cell`` sleeps 6 s (over the comm the widget would show one or two)."""
    edit_cell(page, cell, BUSY)
    run_cell(page, cell, ran=r"\[\*\]")
    t0, before = time.time(), frames_shown(widget)
    prompt = page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(cell).locator(".jp-InputPrompt")
    while "*" in prompt.inner_text() and time.time() - t0 < 30:
        time.sleep(0.2)
    return {"frames": frames_shown(widget) - before, "seconds": round(time.time() - t0, 1)}


def edit_cell(page, index: int, text: str) -> None:
    editor = page.locator(f"{PANEL} .jp-Notebook .jp-Cell").nth(index).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+a")
    page.keyboard.insert_text(text)


RUN_ALL = [("jupyterlab", "01_quickstart.ipynb", "frames; last result", None),
           ("notebook", "01_quickstart.ipynb", "frames; last result", None),
           ("jupyterlab", "02_torch_model.ipynb", "edge pixels in the last frames", "torch"),
           ("jupyterlab", "03_tensorflow_model.ipynb", "output size (480, 640, 3)", "tensorflow"),
           ("jupyterlab", "04_deploy_to_cluster.ipynb", "20 frames processed, 0 errors", "ooblex.cluster")]


@pytest.mark.parametrize("app, name, expect, needs", RUN_ALL)
def test_run_all_with_the_webcam(app, name, expect, needs, tmp_path, monkeypatch):
    """Run All in a fresh kernel with the (fake) webcam: record() and snapshot() wait for the camera's
    frames while the kernel runs the later cells; no cell fails, none prints to stderr."""
    if needs and importlib.util.find_spec(needs) is None:
        pytest.skip(f"needs {needs}")
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    shutil.copy(ROOT / "notebooks" / name, tmp_path / name)
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, app)
        try:
            b.open(name)
            prompts = run_all(b.page)
            outputs = b.page.locator(f"{PANEL} .jp-OutputArea-output").all_inner_texts()
            stderr = b.page.locator(f"{PANEL} [data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
            ARTIFACTS.mkdir(exist_ok=True)
            b.page.screenshot(path=str(ARTIFACTS / f"run_all_{app}_{name}.png"), full_page=True)
            assert not stderr, f"error or stderr output in {name}: {stderr}"
            assert all(re.fullmatch(r"\[\d+\]:", t) for t in prompts), f"cells that did not run: {prompts}"
            assert any(expect in t for t in outputs), outputs
            if not name.startswith("04"):  # ends alive: the last cell shows the newest input | output picture
                last = b.page.locator(f"{PANEL} .jp-Cell.jp-CodeCell").last
                assert last.locator(".jp-OutputArea-output img").count() == 1, outputs
            if "live.record" in (ROOT / "notebooks" / name).read_text():
                assert any("Recording" in t and "done>" in t for t in outputs), outputs  # its progress line
        except Exception:
            b.fail(f"run_all_{app}_{name}")
            raise
        finally:
            b.close()


COMPARE = """import numpy as np
import ooblex as ob

@ob.tensor_thread(params={"size": {"min": 20, "max": 200}})
def boxes(frame, size: int = 80):
    h, w = frame.shape[:2]
    return {"boxes": [{"box": [w // 4, h // 4, size, size], "label": "thing", "score": 0.9}],
            "points": [[w // 2, h // 2]], "labels": ["demo overlay"]}

@ob.tensor_thread
def gray(frame):
    return frame.mean(axis=2, keepdims=True).repeat(3, axis=2).astype(np.uint8)

both = ob.live([boxes, gray])
both
"""


@pytest.mark.parametrize("theme", ["JupyterLab Light", "JupyterLab Dark"])
def test_compare_mode_overlay_and_toolbar(theme, tmp_path, monkeypatch):
    """Two threads on the same frames side by side, a result drawn as an overlay, the camera picker (two
    fake cameras), the resolution menu, mirror, and the Snapshot and Record buttons reaching Python while a
    cell runs."""
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    write_notebook(tmp_path / "compare.ipynb",
                   [COMPARE, BUSY, "print(len(both.snapshots), [len(r) > 0 for r in both.recordings[-1]])"])
    tag = theme.split()[-1].lower()
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, "jupyterlab", theme, cameras=2)
        page = b.page
        try:
            b.open("compare.ipynb")
            run_cell(page, 0)
            widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
            wait_frames(page, widget, 30)
            lanes = page.locator(".ooblex-lane")
            assert lanes.count() == 2
            page.wait_for_function("() => [...document.querySelectorAll('.ooblex-lane')].every("
                                   "(l) => Number(l.dataset.framesShown || 0) > 10)", timeout=60_000)
            assert int(lanes.nth(0).get_attribute("data-overlay-items")) == 3  # a box, a point, a label
            drawn = page.evaluate("""() => {
                const c = document.querySelector('.ooblex-lane canvas.ooblex-overlay');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0;
                return n;
            }""")
            assert drawn > 500, "the overlay canvas is empty"
            time.sleep(1.0)
            page.locator(".ooblex-live").screenshot(path=str(ARTIFACTS / f"jupyter_compare_{tag}.png"))
            readable = contrast(page, ".ooblex-live .ooblex-lane .ooblex-stats")
            assert readable >= 4.5, readable

            camera = "document.querySelector('video.ooblex-input').srcObject?.getVideoTracks()[0].label"
            assert page.locator(".ooblex-camera option").all_inner_texts() == ["fake_device_0", "fake_device_1"]
            page.locator(".ooblex-camera").select_option(label="fake_device_1")
            page.wait_for_function(f"() => {camera} === 'fake_device_1'", timeout=30_000)
            before = frames_shown(widget)
            wait_frames(page, widget, before + 10)
            page.locator(".ooblex-resolution").select_option("320x240")
            page.wait_for_function("() => document.querySelector('.ooblex-lane canvas.ooblex-output').width === 320",
                                   timeout=60_000)
            page.locator(".ooblex-mirror input").check()
            assert "scaleX(-1)" in page.evaluate("getComputedStyle(document.querySelector('video')).transform") \
                or "matrix(-1" in page.evaluate("getComputedStyle(document.querySelector('video')).transform")

            run_cell(page, 1, ran=r"\[\*\]")  # the buttons work while the kernel is busy (side channel)
            page.locator(".ooblex-snapshot").click()
            page.locator(".ooblex-status", has_text="live.snapshots[0]").wait_for(timeout=10_000)
            page.locator(".ooblex-record").click()
            time.sleep(1.5)
            page.locator(".ooblex-record").click()
            page.locator(".ooblex-status", has_text="live.recordings[0]").wait_for(timeout=10_000)
            run_cell(page, 2, ran=r"\[3\]")
            printed = page.locator(f"{PANEL} .jp-Cell").nth(2).locator(".jp-OutputArea-output").inner_text()
            assert printed.strip() == "1 [True, True]", printed
        except Exception:
            b.fail(f"jupyter_compare_{tag}")
            raise
        finally:
            b.close()


def test_without_the_extension_frames_travel_over_the_comm_and_the_widget_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    write_notebook(tmp_path / "comm.ipynb", ["import ooblex as ob\nlive = ob.live(ob.identity)\nlive"])
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, "jupyterlab", args=['--ServerApp.jpserver_extensions={"ooblex_server_ext": False}'])
        page = b.page
        try:
            b.open("comm.ipynb")
            run_cell(page, 0)
            widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
            wait_frames(page, widget, 30)
            badge = page.locator(".ooblex-path")
            assert widget.get_attribute("data-transport") == "comm" and badge.inner_text() == "comm"
            assert "could not be opened" in badge.get_attribute("title")
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator(".ooblex-live").screenshot(path=str(ARTIFACTS / "jupyter_live_comm_fallback.png"))
        except Exception:
            b.fail("jupyter_live_comm_fallback")
            raise
        finally:
            b.close()


def test_face_detect_outlines_faces_over_the_webcam(tmp_path, monkeypatch):
    """A camera that films a face (Chromium plays a Y4M file as the fake webcam): the demo face_detect
    thread returns only JSON, and the widget draws its boxes and landmarks over the output."""
    pytest.importorskip("dlib")
    import cv2

    monkeypatch.delenv("OOBLEX_SOURCE", raising=False)
    photo = cv2.imread(str(ROOT / "tests" / "data" / "one_face.jpg"))
    y4m = tmp_path / "face.y4m"
    with y4m.open("wb") as f:
        f.write(b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n")
        for _ in range(30):
            f.write(b"FRAME\n" + cv2.cvtColor(photo, cv2.COLOR_BGR2YUV_I420).tobytes())
    write_notebook(tmp_path / "faces.ipynb", ["import ooblex as ob\nfrom ooblex_models.detect import face_detect\n"
                                              "live = ob.live(face_detect)\nlive"])
    with playwright.sync_playwright() as p:
        b = Browser(p, tmp_path, "jupyterlab", video=y4m)
        page = b.page
        try:
            b.open("faces.ipynb")
            run_cell(page, 0)
            widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
            wait_frames(page, widget, 20)
            page.wait_for_function("() => Number(document.querySelector('.ooblex-lane').dataset.overlayItems) >= 1",
                                   timeout=30_000)
            time.sleep(1.0)
            ARTIFACTS.mkdir(exist_ok=True)
            page.locator(".ooblex-live").screenshot(path=str(ARTIFACTS / "jupyter_face_detect_overlay.png"))
            assert '"label":"face"' in page.locator(".ooblex-result").inner_text()
        except Exception:
            b.fail("jupyter_face_detect_overlay")
            raise
        finally:
            b.close()
