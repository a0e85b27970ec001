"""Style demo threads: trained networks imitate their classical teachers, in torch, ONNX and Keras."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ooblex_models.styles import cartoon_filter, sketch_filter

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "models" / "weights"
FRAME = cv2.cvtColor(cv2.imread(str(ROOT / "tests/data/one_face.jpg")), cv2.COLOR_BGR2RGB)


def l1(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_weights_are_shipped_and_small() -> None:
    for name in ("cartoon.pt", "cartoon.onnx", "sketch.weights.h5"):
        size = (WEIGHTS / name).stat().st_size
        assert 1_000 < size < 3_000_000, (name, size)


def test_cartoon_net_imitates_the_filter_in_torch_and_onnx() -> None:
    pytest.importorskip("torch")
    from ooblex_models.cartoon import cartoon_torch
    from ooblex_models.cartoon_onnx import cartoon_onnx

    out = cartoon_torch(FRAME)
    teacher = cartoon_filter(FRAME)
    assert out.shape == FRAME.shape and out.dtype == np.uint8
    # much closer to the teacher than the untouched photo is: it learnt the effect
    assert l1(out, teacher) < 0.6 * l1(FRAME, teacher)
    assert l1(cartoon_onnx(FRAME), out) < 1.0  # the export computes the same function
    odd = cartoon_torch(np.ascontiguousarray(FRAME[:101, :77]))
    assert odd.shape == (101, 77, 3)


def test_sketch_net_imitates_the_filter_in_keras() -> None:
    pytest.importorskip("tensorflow")
    from ooblex_models.sketch import sketch

    out = sketch(FRAME)
    teacher = sketch_filter(FRAME)
    assert out.shape == FRAME.shape and (out[..., 0] == out[..., 2]).all()
    grey = cv2.cvtColor(cv2.cvtColor(FRAME, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    assert l1(out, teacher) < 0.5 * l1(grey, teacher)
    assert sketch(np.ascontiguousarray(FRAME[:101, :77])).shape == (101, 77, 3)


def run_script(script: str, out: Path) -> str:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(ROOT / "models" / script), "--steps", "3", "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


def test_train_cartoon_script_runs_and_exports(tmp_path) -> None:
    pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    printed = run_script("train_cartoon.py", tmp_path)
    assert "held-out L1" in printed
    sess = ort.InferenceSession(str(tmp_path / "cartoon.onnx"), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"image": np.zeros((2, 3, 50, 70), np.float32)})
    assert out.shape == (2, 3, 50, 70)  # dynamic batch, height and width


def test_train_sketch_script_runs(tmp_path) -> None:
    pytest.importorskip("tensorflow")
    assert "held-out L1" in run_script("train_sketch.py", tmp_path)
    assert (tmp_path / "sketch.weights.h5").stat().st_size > 1000
