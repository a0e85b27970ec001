"""Training images for the style networks: procedural scenes plus crops of the shipped photos.

Generated on the fly and seeded, so a training run needs no data set and is repeatable.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = [ROOT / "models/assets/reference_face.jpg", ROOT / "tests/data/one_face.jpg",
          ROOT / "tests/data/two_faces.jpg"]


def procedural(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random scene: a colour gradient, filled shapes, lines and sensor-like noise."""
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    img = np.ascontiguousarray(np.broadcast_to(c0 * (1 - t) + c1 * t, (size, size, 3)).astype(np.uint8))
    for _ in range(rng.integers(3, 12)):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y = (int(v) for v in rng.integers(0, size, 2))
        kind = rng.integers(0, 3)
        if kind == 0:
            axes = tuple(int(v) for v in rng.integers(4, size // 2, 2))
            cv2.ellipse(img, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        elif kind == 1:
            pts = rng.integers(0, size, (int(rng.integers(3, 7)), 2)).astype(np.int32)
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA)
        else:
            x2, y2 = (int(v) for v in rng.integers(0, size, 2))
            cv2.line(img, (x, y), (x2, y2), colour, int(rng.integers(1, 6)), cv2.LINE_AA)
    noise = rng.normal(0, rng.uniform(0, 3), img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


class Images:
    """An endless, seeded stream of ``size`` x ``size`` RGB training images."""

    def __init__(self, size: int, seed: int = 0, photo_share: float = 0.5) -> None:
        self.size, self.rng, self.photo_share = size, np.random.default_rng(seed), photo_share
        self.photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in PHOTOS if p.exists()]

    def __call__(self) -> np.ndarray:
        if self.photos and self.rng.random() < self.photo_share:
            return self._crop()
        return procedural(self.rng, self.size)

    def _crop(self) -> np.ndarray:
        photo = self.photos[int(self.rng.integers(len(self.photos)))]
        zoom = self.rng.uniform(0.5, 1.5)
        img = cv2.resize(photo, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_AREA)
        if min(img.shape[:2]) < self.size:
            img = cv2.resize(photo, (self.size * 2, self.size * 2))
        y = int(self.rng.integers(0, img.shape[0] - self.size + 1))
        x = int(self.rng.integers(0, img.shape[1] - self.size + 1))
        crop = img[y:y + self.size, x:x + self.size]
        if self.rng.random() < 0.5:
            crop = crop[:, ::-1]
        gain = self.rng.uniform(0.7, 1.3, 3)
        return np.clip(crop * gain, 0, 255).astype(np.uint8)
