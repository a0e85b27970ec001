"""Every notebook in notebooks/ runs top to bottom, headless, with a video file standing in for the webcam,
and prints nothing to stderr (no worker logs, no library banners). Run All with the browser's webcam:
``test_jupyter_browser.py``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
from .kernel_frontend import ROOT  # noqa: E402
from .media import write_video  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
pytestmark = pytest.mark.timeout(400)  # a kernel per notebook; TensorFlow's import alone is slow on 2 cores


@pytest.fixture(scope="module")
def webcam(tmp_path_factory):
    """The stand-in for a webcam: 2 s of 320x240 video (the notebooks loop it)."""
    return write_video(tmp_path_factory.mktemp("clip") / "webcam.mp4", 60, width=320, height=240)


def run_notebook(name: str, clip: Path, monkeypatch: pytest.MonkeyPatch, timeout: int = 180,
                 ends_alive: bool = True) -> list[str]:
    monkeypatch.setenv("OOBLEX_SOURCE", str(clip))
    monkeypatch.setenv("PYTHONPATH", f"{ROOT}")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    if ends_alive:
        _ends_alive(name, nb)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("name") != "stderr", f"{name} printed to stderr in a cell: {out['text']!r}"
            texts.append(out.get("text") or "".join(out.get("data", {}).get("text/plain", "")))
    return texts


def _ends_alive(name: str, nb) -> None:  # noqa: ANN001
    """Run All leaves something to see: the last cell stops nothing and shows a picture (kept in the saved file)."""
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert not re.search(r"\.(close|stop)\(\)", last.source), f"{name} ends by closing: {last.source!r}"
    assert any("image/jpeg" in out.get("data", {}) for out in last.outputs), f"{name}: no picture at the end"


def recorded_frames(texts: list[str]) -> int:
    found = [int(m.group(1)) for t in texts for m in re.finditer(r"<Recording (\d+) frames", t)]
    assert found, f"no recording printed in {texts}"
    return found[-1]


def test_every_notebook_is_tested():
    tested = {"01_quickstart.ipynb", "02_torch_model.ipynb", "03_tensorflow_model.ipynb",
              "04_deploy_to_cluster.ipynb"}
    assert {p.name for p in NOTEBOOKS.glob("*.ipynb")} <= tested


def test_01_quickstart(webcam, monkeypatch):
    texts = run_notebook("01_quickstart.ipynb", webcam, monkeypatch)
    assert recorded_frames(texts) >= 20  # 2 s of a 30 fps clip
    assert any("'levels': 6" in t for t in texts)
    assert any("output (240, 320, 3)" in t for t in texts)


def test_02_torch_model(webcam, monkeypatch):
    pytest.importorskip("torch")
    texts = run_notebook("02_torch_model.ipynb", webcam, monkeypatch)
    assert recorded_frames(texts) >= 10
    assert any("{'edge_pixels': 240}" in t for t in texts)  # the step edge: 2 columns x 120 rows


def test_03_tensorflow_model(webcam, monkeypatch):
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("tensorflow not installed: add it to EXTRAS in the Makefile to run notebook 03")
    texts = run_notebook("03_tensorflow_model.ipynb", webcam, monkeypatch, timeout=300)
    assert recorded_frames(texts) >= 5
    assert any("output size (240, 320, 3)" in t for t in texts)


CLUSTER = importlib.util.find_spec("ooblex.cluster") is not None


@pytest.mark.skipif(not CLUSTER, reason="needs the cluster extra")
def test_04_deploy_to_cluster(webcam, monkeypatch):
    for name in ("OOBLEX_BROKER", "OOBLEX_CLUSTER", "OOBLEX_STORE", "OOBLEX_SECRET", "OOBLEX_JUPYTER_SOCKET"):
        monkeypatch.delenv(name, raising=False)  # the notebook starts its own cluster (the kernel's, here)
    texts = run_notebook("04_deploy_to_cluster.ipynb", webcam, monkeypatch, timeout=300)
    assert any("<Cluster redis://:***@127.0.0.1:" in t and "owner=process" in t for t in texts), texts
    assert any("served by 1 worker(s)" in t for t in texts)
    assert any("20 frames processed, 0 errors" in t for t in texts)
    assert any(re.search(r"blur \(notebook\): \d+ fps, latency p50 [\d.]+ ms\nblur@\d+ \(cluster\): [1-9]\d* fps", t)
               for t in texts), texts  # the compare step: frames came back through the cluster
    assert any(re.search(r"http://127\.0\.0\.1:\d+/\?thread=blur \(\+ its token\)", t) for t in texts), texts
