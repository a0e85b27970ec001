"""Does the live widget keep streaming while the notebook works? fps while a cell sleeps / fps when idle.

Starts ``jupyter lab`` (with the ooblex server extension, and once without it: the comm fallback) and
headless Chromium with its fake 640x480 webcam. For each configuration a notebook shows ``ob.live``;
after a warm-up the widget's own counters give the idle fps and round trip (capture to processed frame
drawn, p50 over the last 200 frames) for ``--seconds``, then a second cell runs ``time.sleep(--seconds)``
and the same is measured while it runs. Prints a table, then ``busy/idle fps ratio: X`` for the default
configuration (side channel, JPEG, identity). Usage: ``python benchmarks/jupyter_busy.py [--seconds 10]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nbformat
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from jupyter_roundtrip import CARTOON  # noqa: E402  (the same thread in both Jupyter benchmarks)

from tests.jupyter_proc import (  # noqa: E402
    CHROMIUM,
    FLAGS,
    JupyterServer,
    lab_settings,
    open_notebook,
    run_cell,
)

#: (path, codec, thread); the first row is the one the last line reports.
CONFIGS = [("side channel", "jpeg", "identity"), ("side channel", "raw", "identity"),
           ("side channel", "jpeg", "cartoon"), ("comm", "jpeg", "identity")]
EXTENSION = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config")}
NO_EXTENSION = ['--ServerApp.jpserver_extensions={"ooblex_server_ext": False}']


def notebook(path: Path, thread: str, codec: str, seconds: float) -> None:
    live = f"import numpy as np\nimport ooblex as ob\n{CARTOON}\n" \
           f"live = ob.live({'ob.identity' if thread == 'identity' else thread}, codec={codec!r})\nlive"
    cells = [live, f"import time\ntime.sleep({seconds})"]
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
                   path)


def shown(widget) -> int:
    return int(widget.get_attribute("data-frames-shown") or 0)


def rtt_p50(widget) -> float:
    return float(widget.get_attribute("data-rtt-p50") or "nan")


def measure(page, lab: JupyterServer, name: str, seconds: float) -> dict[str, float | str]:
    open_notebook(page, lab, name)
    run_cell(page, 0)
    widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
    deadline = time.time() + 120
    while shown(widget) < 60:  # warm-up: camera open, first frames, caches
        if time.time() > deadline:
            raise TimeoutError(f"the widget showed {shown(widget)} frames in 120 s")
        time.sleep(0.2)
    t0, n0 = time.time(), shown(widget)
    time.sleep(seconds)
    idle_fps, idle_rtt = (shown(widget) - n0) / (time.time() - t0), rtt_p50(widget)
    run_cell(page, 1, ran=r"\[\*\]")
    t0, n0 = time.time(), shown(widget)
    prompt = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(1).locator(
        ".jp-InputPrompt")
    while "*" in prompt.inner_text():
        time.sleep(0.05)
    busy_s = time.time() - t0
    busy_fps, busy_rtt = (shown(widget) - n0) / busy_s, rtt_p50(widget)
    return {"transport": widget.get_attribute("data-transport") or "?", "idle_fps": idle_fps, "idle_rtt": idle_rtt,
            "busy_fps": busy_fps, "busy_rtt": busy_rtt, "busy_s": busy_s}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the idle window and of the busy cell")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        for with_extension in (True, False):
            work = Path(tmp) / ("ext" if with_extension else "comm")
            work.mkdir()
            lab_settings(work)
            lab = JupyterServer(work, app="jupyterlab", env=EXTENSION if with_extension else {},
                                args=None if with_extension else NO_EXTENSION).start()
            try:
                for i, (path, codec, thread) in enumerate(CONFIGS):
                    if (path == "side channel") != with_extension:
                        continue
                    name = f"busy{i}.ipynb"
                    notebook(work / name, thread, codec, args.seconds)
                    page = browser.new_page(viewport={"width": 1400, "height": 1000})
                    rows.append(((path, codec, thread), measure(page, lab, name, args.seconds)))
                    page.close()
                    for k in httpx.get(f"{lab.url}/api/kernels?token={lab.token}").json():
                        httpx.delete(f"{lab.url}/api/kernels/{k['id']}?token={lab.token}")
            finally:
                lab.stop()
        browser.close()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after; JupyterLab + kernel + headless Chromium "
          f"(software rendering, fake 640x480 camera) on this machine; idle window and busy cell {args.seconds:g} s")
    print(f"{'path':13} {'codec':5} {'thread':9} {'shown as':12} {'idle fps':>8} {'busy fps':>8} {'ratio':>6} "
          f"{'rtt idle':>8} {'rtt busy':>8}   (round trip p50 ms)")
    for (path, codec, thread), m in rows:
        ratio = m["busy_fps"] / m["idle_fps"] if m["idle_fps"] else float("nan")
        print(f"{path:13} {codec:5} {thread:9} {m['transport']:12} {m['idle_fps']:>8.1f} {m['busy_fps']:>8.1f} "
              f"{ratio:>6.2f} {m['idle_rtt']:>8.1f} {m['busy_rtt']:>8.1f}")
    first = rows[0][1]
    print(f"busy/idle fps ratio: {first['busy_fps'] / first['idle_fps']:.2f}")


if __name__ == "__main__":
    main()
