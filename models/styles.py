"""Classical OpenCV style filters: the teachers the small style networks are distilled from."""

from __future__ import annotations

import cv2
import numpy as np


def cartoon_filter(rgb: np.ndarray, saturation: float = 1.4) -> np.ndarray:
    """Flat, saturated colours (repeated bilateral smoothing) with dark outlines (adaptive threshold)."""
    small = cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    for _ in range(4):
        small = cv2.bilateralFilter(small, 7, 50, 7)
    smooth = cv2.resize(small, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_LINEAR)
    hsv = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0, 255).astype(np.uint8)
    flat = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 7)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 5)
    return cv2.bitwise_and(flat, flat, mask=edges)


def sketch_filter(rgb: np.ndarray) -> np.ndarray:
    """Pencil sketch: the grey image colour-dodged by its blurred negative (HxWx3, grey)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    blur = cv2.GaussianBlur(255 - gray, (0, 0), 6)
    dodge = cv2.divide(gray, 255 - blur, scale=256)
    return cv2.cvtColor(dodge, cv2.COLOR_GRAY2RGB)
