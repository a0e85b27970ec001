"""Round trip of the live widget in JupyterLab: fake webcam frame captured -> processed frame drawn.

Starts ``jupyter lab`` and headless Chromium (fake camera), runs ``ob.live`` with each
configuration and prints a table of the widget's own measurements over the last 200 frames:
capture (canvas draw + JPEG encode in the browser), kernel (frame arrival in the kernel -> processed JPEG sent)
and the whole round trip. Usage: ``python benchmarks/jupyter_roundtrip.py [--frames 250]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import nbformat
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.jupyter_proc import CHROMIUM, FLAGS, JupyterServer, open_notebook, run_cell  # noqa: E402

CARTOON = '''
@ob.tensor_thread(params={"levels": {"min": 2, "max": 16}})
def cartoon(frame, levels: int = 4, edge: int = 40):
    step = 256 // levels
    out = np.clip((frame // step) * np.int16(step) + step // 2, 0, 255)
    gray = frame.mean(axis=2)
    change = np.abs(np.diff(gray, axis=1, prepend=gray[:, :1])) + np.abs(np.diff(gray, axis=0, prepend=gray[:1]))
    out[change > edge] = 0
    return out.astype(np.uint8)
'''
CONFIGS = [("identity", 320, 240, 1), ("identity", 640, 480, 1), ("identity", 640, 480, 2),
           ("cartoon", 640, 480, 1), ("cartoon", 640, 480, 2)]


#: The server extension as installed (side channel); NAGLE=1 turns it off: the comm path on stock Jupyter.
CONFIG = {"JUPYTER_CONFIG_PATH": str(ROOT / "server_ext" / "jupyter-config")}
ARGS = ['--ServerApp.jpserver_extensions={"ooblex_server_ext": False}'] if os.environ.get("NAGLE") else None


def notebook(path: Path, thread: str, w: int, h: int, in_flight: int) -> None:
    code = f"import numpy as np\nimport ooblex as ob\n{CARTOON}\n" \
           f"live = ob.live({'ob.identity' if thread == 'identity' else thread}, width={w}, height={h}, " \
           f"max_in_flight={in_flight})\nlive"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}),
                   path)


def measure(page, lab: JupyterServer, name: str, frames: int) -> dict[str, float]:
    open_notebook(page, lab, name)
    run_cell(page, 0)
    try:
        widget = page.wait_for_selector(".ooblex-live", timeout=60_000)
    except Exception:
        page.screenshot(path=str(ROOT / "test-artifacts" / "bench_failure.png"))
        raise
    start = None
    while int(widget.get_attribute("data-frames-shown") or 0) < frames:
        shown = int(widget.get_attribute("data-frames-shown") or 0)
        if shown and start is None:
            start = (time.time(), shown)
        time.sleep(0.25)
    fps = (frames - start[1]) / (time.time() - start[0])
    time.sleep(0.6)  # next stats tick refreshes the data attributes
    get = lambda k: float(widget.get_attribute(k) or "nan")  # noqa: E731
    return {"capture": get("data-capture-p50"), "kernel": get("data-kernel-p50"), "p50": get("data-rtt-p50"),
            "p95": get("data-rtt-p95"), "fps": fps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=250)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, \
            JupyterServer(Path(tmp), app="jupyterlab", env=CONFIG, args=ARGS) as lab, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        for i, (thread, w, h, n) in enumerate(CONFIGS):
            name = f"bench{i}.ipynb"
            notebook(Path(tmp) / name, thread, w, h, n)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            rows.append(((thread, f"{w}x{h}", n), measure(page, lab, name, args.frames)))
            page.close()
            for k in httpx.get(f"{lab.url}/api/kernels?token={lab.token}").json():
                httpx.delete(f"{lab.url}/api/kernels/{k['id']}?token={lab.token}")
        browser.close()
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'thread':10} {'size':8} {'in flight':>9} {'capture':>8} {'kernel':>8} {'rtt p50':>8} {'rtt p95':>8} "
          f"{'fps':>6}   (ms, p50 unless noted)")
    for (thread, size, n), m in rows:
        print(f"{thread:10} {size:8} {n:>9} {m['capture']:>8.1f} {m['kernel']:>8.1f} {m['p50']:>8.1f} "
              f"{m['p95']:>8.1f} {m['fps']:>6.1f}")
    print(json.dumps([{"config": r[0], **r[1]} for r in rows]))


if __name__ == "__main__":
    main()
