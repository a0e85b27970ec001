"""Per-frame cost of each demo thread at 640x480, on one CPU thread by default.

    python benchmarks/models.py [--frames 60] [--threads 1] [--only cartoon_torch,sketch]

Prints a table: wall-clock milliseconds per call (p50/p95), the process CPU time per call, and
the frame rate one core sustains (1 / CPU time: on a busy machine wall-clock time also counts
the wait for a core).
``--threads`` caps OpenCV, PyTorch, TensorFlow and onnxruntime (the ONNX thread is rebuilt
with that many intra-op threads). Frames: the shipped test photos (tests/data).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

import ooblex_models  # noqa: E402


def load(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ROOT / "tests/data" / name)), cv2.COLOR_BGR2RGB)


def limit_threads(n: int) -> None:
    cv2.setNumThreads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except ImportError:
        pass


def timed(fn: Callable[[], Any], frames: int) -> tuple[float, float, float]:
    """Wall-clock p50 and p95 and the median process CPU time per call, in ms.

    CPU time is what the call costs this process whatever else the machine runs; on a shared
    machine wall-clock times also include waiting for a core.
    """
    for _ in range(3):
        fn()
    wall, cpu = [], []
    for _ in range(frames):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    p50, p95 = np.percentile(np.asarray(wall) * 1e3, [50, 95])
    return float(p50), float(p95), float(np.median(cpu) * 1e3)


def found(out: Any) -> str:
    """How many faces a face thread reported ("-" for style threads)."""
    result = out[1] if isinstance(out, tuple) else out
    return str(result["count"]) if isinstance(result, dict) and "count" in result else "-"


def cases(threads: int) -> list[tuple[str, str, Callable[[np.ndarray], Any], dict[str, Any]]]:
    loaded = {t.name: t for t in ooblex_models.load_demo_threads()}
    out: list[tuple[str, str, Callable[[np.ndarray], Any], dict[str, Any]]] = []

    def add(name: str, image: str, **params: Any) -> None:
        if name in loaded:
            out.append((name, image, loaded[name], params))

    add("face_detect", "one_face.jpg")
    add("face_detect", "one_face.jpg", scale=0.5)
    add("face_blur", "one_face.jpg")
    add("face_pixelate", "one_face.jpg")
    add("face_swap", "one_face.jpg")
    add("face_swap", "one_face.jpg", blend="feather")
    add("face_swap", "two_faces.jpg")
    add("face_swap", "two_faces.jpg", mode="pair")
    add("cartoon_torch", "one_face.jpg")
    if "cartoon_onnx" in loaded:
        import ooblex as ob
        from ooblex_models.cartoon_onnx import ONNX

        out.append(("cartoon_onnx", "one_face.jpg", ob.onnx.session(ONNX, name="cartoon_onnx", threads=threads), {}))
    add("sketch", "one_face.jpg")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated thread names (default: all)")
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    limit_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {args.threads} compute thread(s), 640x480 frames\n")
    print("| thread | frame | params | faces found | p50 ms | p95 ms | CPU ms | fps per core (1/CPU) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, image, thread, params in cases(args.threads):
        if only and name not in only:
            continue
        frame = load(image)
        p50, p95, cpu = timed(lambda t=thread, f=frame, p=params: t(f, **p), args.frames)
        shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
        print(f"| {name} | {image} | {shown} | {found(thread(frame, **params))} | {p50:.1f} | {p95:.1f} "
              f"| {cpu:.1f} | {1e3 / cpu:.0f} |", flush=True)


if __name__ == "__main__":
    main()
