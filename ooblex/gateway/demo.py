"""Threads the demo serves: the shipped demo threads (``ooblex_models``), else small built-in ones.

The built-ins need only numpy and OpenCV, so ``ooblex demo`` always has something with
parameters to play with, even before any model is installed.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from ..thread import TensorThread, tensor_thread

log = logging.getLogger("ooblex.demo")


@tensor_thread(name="edges", params={"low": {"min": 0, "max": 255}, "high": {"min": 0, "max": 255}})
def edges(frame: np.ndarray, low: int = 60, high: int = 140) -> np.ndarray:
    """Canny edges, drawn white on black."""
    gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    return cv2.Canny(gray, low, high)


@tensor_thread(name="invert", params={"amount": {"min": 0.0, "max": 1.0}})
def invert(frame: np.ndarray, amount: float = 1.0) -> np.ndarray:
    """Photographic negative, blended with the original picture by amount (0 to 1)."""
    if amount >= 1.0:
        return 255 - frame
    return cv2.addWeighted(frame, 1.0 - amount, 255 - frame, amount, 0.0)


@tensor_thread(name="cartoon", params={"levels": {"min": 2, "max": 16}, "blur": {"choices": [1, 3, 5, 7]}})
def cartoon(frame: np.ndarray, levels: int = 6, blur: int = 5) -> tuple[np.ndarray, dict]:
    """Posterized colours with dark edges; reports the mean brightness as a result."""
    step = 256 // levels
    smooth = cv2.medianBlur(frame, blur) if blur > 1 else frame
    poster = (smooth // step * step + step // 2).astype(np.uint8)
    edge = cv2.Canny(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), 80, 160)
    poster[edge > 0] = 0
    return poster, {"brightness": round(float(frame.mean()), 1)}


BUILTIN_DEMO_THREADS = [edges, invert, cartoon]


def demo_threads() -> list[TensorThread]:
    """``ooblex_models.load_demo_threads()`` when the models package provides it, plus the built-ins."""
    threads = list(BUILTIN_DEMO_THREADS)
    try:
        from ooblex_models import load_demo_threads
    except ImportError:
        log.info("ooblex_models.load_demo_threads not available: serving the built-in demo threads only")
        return threads
    try:
        loaded = list(load_demo_threads())
    except Exception:  # a broken model must not stop the demo from starting
        log.exception("ooblex_models.load_demo_threads() failed: serving the built-in demo threads only")
        return threads
    names = {t.name for t in loaded}
    return loaded + [t for t in threads if t.name not in names]
