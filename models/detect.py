"""Face detection as data: boxes and 68 landmarks per face as JSON, with an optional overlay."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from ooblex import tensor_thread

from . import licences
from .faces import FaceThread, check_frame


@tensor_thread(name="face_detect", licence=licences.FACES,
               params={"scale": {"min": 0.1, "max": 2.0}, "upsample": {"min": 0, "max": 2}})
class FaceDetect(FaceThread):
    """Finds faces: boxes [x, y, w, h], scores and 68 landmarks as JSON; ``overlay`` draws them into the frame.

    The result also carries ``boxes`` in the overlay schema (docs/jupyter.md), so ``ob.live`` draws the
    faces over the output without touching its pixels."""

    def __call__(self, frame: np.ndarray, overlay: bool = False, landmarks: bool = True, scale: float = 1.0,
                 upsample: int = 0) -> Any:
        frame = check_frame(frame)
        faces = self.detector.detect(frame, scale, upsample, with_landmarks=landmarks)
        result = {"faces": [f.to_json(landmarks) for f in faces], "count": len(faces),
                  "size": [frame.shape[1], frame.shape[0]], "boxes": [f.to_overlay(landmarks) for f in faces]}
        if not overlay:
            return result
        out = frame.copy()
        for f in faces:
            x, y, w, h = f.box
            cv2.rectangle(out, (x, y), (x + w, y + h), (0, 255, 0), 2)
            if f.landmarks is not None:
                for px, py in f.landmarks.astype(int):
                    cv2.circle(out, (int(px), int(py)), 2, (255, 64, 0), -1)
        return out, result


face_detect = FaceDetect
