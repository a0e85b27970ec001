"""Classical OpenCV style filters: the teachers the small style networks are distilled from."""

from __future__ import annotations

import cv2
import numpy as np


def cartoon_filter(rgb: np.ndarray, levels: int = 6) -> np.ndarray:
    """Flat colours (bilateral smoothing + colour quantisation) with dark outlines (adaptive threshold)."""
    small = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    for _ in range(3):
        small = cv2.bilateralFilter(small, 7, 40, 7)
    smooth = cv2.resize(small, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    step = 256 // levels
    flat = (smooth // step * step + step // 2).astype(np.uint8)
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(flat, flat, mask=edges)


def sketch_filter(rgb: np.ndarray) -> np.ndarray:
    """Pencil sketch: the grey image colour-dodged by its blurred negative (HxWx3, grey)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    blur = cv2.GaussianBlur(255 - gray, (0, 0), 6)
    dodge = cv2.divide(gray, 255 - blur, scale=256)
    return cv2.cvtColor(dodge, cv2.COLOR_GRAY2RGB)
