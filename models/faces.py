"""Face detection and 68-point landmarks shared by the face demos (dlib HOG + shape predictor).

The weights come from pip packages (``dlib-bin`` for the detector, ``face_recognition_models``
for the 68-point predictor), found with importlib so nothing is downloaded at run time.
Detection may run on a downscaled copy of the frame: HOG cost grows with the pixel count,
while landmarks are always fitted at full resolution.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import require

require("dlib")  # imported by FaceDetector, when a face thread first runs (setup)
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"


@dataclass(slots=True)
class Face:
    """One detected face: box (x, y, w, h in frame pixels), 68 landmarks (x, y) or None, score."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray | None
    score: float

    def to_json(self, with_landmarks: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"box": list(self.box), "score": round(self.score, 3)}
        if with_landmarks and self.landmarks is not None:
            out["landmarks"] = np.round(self.landmarks).astype(int).tolist()
        return out

    def to_overlay(self, with_landmarks: bool = True) -> dict[str, Any]:
        """The face as an item of the result schema that viewers draw (``ooblex/jupyter/overlay.py``)."""
        out: dict[str, Any] = {"box": list(self.box), "label": "face", "score": round(self.score, 3)}
        if with_landmarks and self.landmarks is not None:
            out["points"] = np.round(self.landmarks).astype(int).tolist()
        return out


def landmarks_path() -> Path:
    """Where ``face_recognition_models`` keeps the 68-point predictor (raises if not installed)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise ImportError("face_recognition_models is not installed: pip install 'ooblex[models]'")
    path = Path(spec.origin).parent / "models" / LANDMARKS_FILE
    if not path.exists():
        raise ImportError(f"face_recognition_models has no {LANDMARKS_FILE} at {path}")
    return path


landmarks_path()  # fail at import (the demo loader skips the face threads) rather than on the first frame


class FaceDetector:
    """dlib frontal HOG detector plus the 68-point shape predictor; safe to share between threads."""

    def __init__(self) -> None:
        # dlib: a shape_predictor may be used from many threads at once; an object_detector may not,
        # so concurrent calls each borrow a HOG detector from a pool (one per call in flight, ~0.2 s to build).
        import dlib

        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(landmarks_path()))
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle.put(dlib.get_frontal_face_detector())

    def boxes(self, rgb: np.ndarray, scale: float = 1.0, upsample: int = 0,
              threshold: float = 0.0) -> list[tuple[tuple[int, int, int, int], float]]:
        """Face boxes (x, y, w, h) in full-frame pixels with their detector scores, best first."""
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale != 1.0:
            gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        try:
            detector = self._idle.get_nowait()
        except queue.Empty:
            detector = self._dlib.get_frontal_face_detector()
        try:
            rects, scores, _ = detector.run(gray, upsample, threshold)
        finally:
            self._idle.put(detector)
        h, w = rgb.shape[:2]
        out = []
        for r, s in zip(rects, scores, strict=False):
            x0, y0 = max(0, int(r.left() / scale)), max(0, int(r.top() / scale))
            x1, y1 = min(w, int(r.right() / scale)), min(h, int(r.bottom() / scale))
            if x1 > x0 and y1 > y0:
                out.append(((x0, y0, x1 - x0, y1 - y0), float(s)))
        return sorted(out, key=lambda b: -b[1])

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """68 (x, y) points as float32, fitted inside ``box`` at full resolution."""
        x, y, w, h = box
        shape = self._predictor(rgb, self._dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)

    def detect(self, rgb: np.ndarray, scale: float = 1.0, upsample: int = 0, with_landmarks: bool = True,
               max_faces: int = 32) -> list[Face]:
        """Boxes (and landmarks) of up to ``max_faces`` faces in an RGB frame."""
        faces = []
        for box, score in self.boxes(rgb, scale, upsample)[:max_faces]:
            faces.append(Face(box, self.landmarks(rgb, box) if with_landmarks else None, score))
        return faces


_shared: FaceDetector | None = None
_shared_lock = threading.Lock()


def shared_detector() -> FaceDetector:
    """One detector per process: the predictor file is ~100 MB, so threads share it."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FaceDetector()
        return _shared


class FaceThread:
    """Base of the face demo threads: ``setup()`` loads the shared detector before the first frame."""

    detector: FaceDetector

    def setup(self) -> None:
        self.detector = shared_detector()


def check_frame(frame: Any) -> np.ndarray:
    """The frame as a contiguous HxWx3 uint8 array, or a ValueError naming what is wrong."""
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {desc}")
    return np.ascontiguousarray(frame)
