"""Privacy filters for security cameras: blur or pixelate every face, and report where they were."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from ooblex import tensor_thread

from . import licences
from .faces import FaceDetector, FaceThread, check_frame

#: Parameter ranges both filters share: box margin and detector settings.
DETECT_PARAMS = {"margin": {"min": 0.0, "max": 1.0}, "scale": {"min": 0.1, "max": 2.0},
                 "upsample": {"min": 0, "max": 2}}


def _expand(box: tuple[int, int, int, int], margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``box`` grown by ``margin`` of its size on every side (hair and chin too), clipped to the frame."""
    x, y, w, h = box
    dx, dy = int(w * margin), int(h * margin)
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(shape[1], x + w + dx), min(shape[0], y + h + dy)
    return x0, y0, x1, y1


def _faces(detector: FaceDetector, frame: np.ndarray, scale: float, upsample: int) -> list[tuple[int, int, int, int]]:
    return [box for box, _ in detector.boxes(frame, scale, upsample)]


def _result(boxes: list[tuple[int, int, int, int]]) -> dict[str, Any]:
    return {"faces": [{"box": list(b)} for b in boxes], "count": len(boxes)}


@tensor_thread(name="face_blur", licence=licences.DLIB_HOG,
               params={"strength": {"min": 0.0, "max": 1.0}, **DETECT_PARAMS})
class FaceBlur(FaceThread):
    """Blurs every face inside an elliptical mask; returns the boxes as JSON too.

    ``strength`` 0..1 (1 = unrecognisable smear), ``margin`` grows each box, ``scale`` detects on a
    resized frame (smaller = faster, misses small faces), ``upsample`` finds faces under 80 px.
    """

    def __call__(self, frame: np.ndarray, strength: float = 0.6, margin: float = 0.25, scale: float = 1.0,
                 upsample: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        return _each_face(self.detector, frame, margin, scale, upsample, lambda roi: _blur(roi, strength))


@tensor_thread(name="face_pixelate", licence=licences.DLIB_HOG,
               params={"blocks": {"min": 2, "max": 64}, **DETECT_PARAMS})
class FacePixelate(FaceThread):
    """Pixelates every face into ``blocks`` x ``blocks`` squares; returns the boxes as JSON too."""

    def __call__(self, frame: np.ndarray, blocks: int = 8, margin: float = 0.2, scale: float = 1.0,
                 upsample: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
        return _each_face(self.detector, frame, margin, scale, upsample, lambda roi: _pixelate(roi, blocks))


face_blur, face_pixelate = FaceBlur, FacePixelate


def _each_face(detector: FaceDetector, frame: np.ndarray, margin: float, scale: float, upsample: int,
               effect: Callable[[np.ndarray], None]) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply ``effect`` in place to each (margin-grown) face box of a copy of ``frame``."""
    frame = check_frame(frame)
    boxes = _faces(detector, frame, scale, upsample)
    out = frame.copy()
    for box in boxes:
        x0, y0, x1, y1 = _expand(box, margin, frame.shape)
        effect(out[y0:y1, x0:x1])
    return out, _result(boxes)


def _blur(roi: np.ndarray, strength: float) -> None:
    h, w = roi.shape[:2]
    # Shrink-then-grow is a strong blur whose cost does not depend on the face size.
    k = max(2, int(round(2 + (1 - strength) * 14)))
    small = cv2.resize(roi, (k, k), interpolation=cv2.INTER_AREA)
    grown = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    blurred = cv2.GaussianBlur(grown, (0, 0), max(1, w / 30))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 2, h // 2), 0, 0, 360, 255, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(1, w / 40)).astype(np.float32)[..., None] / 255
    roi[:] = (blurred * mask + roi * (1 - mask)).astype(np.uint8)


def _pixelate(roi: np.ndarray, blocks: int) -> None:
    h, w = roi.shape[:2]
    small = cv2.resize(roi, (min(blocks, w), min(blocks, h)), interpolation=cv2.INTER_AREA)
    roi[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
