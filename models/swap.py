"""Live face swap: every face in view gets the shipped reference face, or two faces trade places.

Per face: 68 dlib landmarks, smoothed over time; the source face is warped piecewise-affinely
over a Delaunay triangulation of those landmarks (one dense ``cv2.remap``, not a loop of small
warps) and blended with Poisson cloning (``cv2.seamlessClone``) or a feathered mask plus colour
transfer. The reference face is Grace Hopper's official US Navy portrait (public domain), see
models/assets/README.md.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ooblex import tensor_thread

from . import licences
from .faces import FaceThread, check_frame

REFERENCE = Path(__file__).parent / "assets" / "reference_face.jpg"


def delaunay(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Triangles (k x 3 indices into ``points``) of the Delaunay triangulation of ``points``."""
    w, h = size
    sub = cv2.Subdiv2D((0, 0, w, h))
    for x, y in points:
        sub.insert((float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))))
    tris = []
    for t in sub.getTriangleList().reshape(-1, 3, 2):
        idx = [int(np.argmin(((points - p) ** 2).sum(axis=1))) for p in t]
        if len(set(idx)) == 3 and ((points[idx] - t) ** 2).sum() < 4.0:
            tris.append(idx)
    return np.array(tris, dtype=np.int32)


def warp_face(src: np.ndarray, src_pts: np.ndarray, dst_pts: np.ndarray, triangles: np.ndarray,
              rect: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``src``'s face warped onto ``dst_pts`` within ``rect`` (x, y, w, h): (patch, mask 0/255)."""
    x, y, w, h = rect
    labels = np.zeros((h, w), np.int32)
    inverse = np.zeros((len(triangles) + 1, 2, 3), np.float32)
    for i, tri in enumerate(triangles, start=1):
        d = (dst_pts[tri] - (x, y)).astype(np.float32)
        inverse[i] = cv2.getAffineTransform(d, src_pts[tri].astype(np.float32))
        cv2.fillConvexPoly(labels, np.round(d).astype(np.int32), i)
    a = inverse[labels]  # per-pixel affine (dst -> src); label 0 (outside) maps nowhere useful but is masked
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x = a[..., 0, 0] * gx + a[..., 0, 1] * gy + a[..., 0, 2]
    map_y = a[..., 1, 0] * gx + a[..., 1, 1] * gy + a[..., 1, 2]
    patch = cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return patch, np.where(labels > 0, 255, 0).astype(np.uint8)


def transfer_colour(patch: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``patch`` with the per-channel Lab mean/std of ``target`` inside ``mask``."""
    m = mask > 0
    if m.sum() < 16:
        return patch
    p = cv2.cvtColor(patch, cv2.COLOR_RGB2LAB).astype(np.float32)
    t = cv2.cvtColor(target, cv2.COLOR_RGB2LAB).astype(np.float32)
    ps, ts = p[m], t[m]
    p = (p - ps.mean(0)) * (ts.std(0) + 1e-3) / (ps.std(0) + 1e-3) + ts.mean(0)
    return cv2.cvtColor(np.clip(p, 0, 255).astype(np.uint8), cv2.COLOR_LAB2RGB)


def paste(frame: np.ndarray, patch: np.ndarray, mask: np.ndarray, rect: tuple[int, int, int, int],
          mode: str) -> None:
    """Paste ``patch`` into ``frame`` (in place) at ``rect`` through ``mask``."""
    x, y, w, h = rect
    roi = frame[y:y + h, x:x + w]
    size = max(w, h)
    mask = cv2.erode(mask, np.ones((3, 3), np.uint8), iterations=max(1, size // 60))
    if mask.max() == 0:
        return
    if mode == "seamless":
        bx, by, bw, bh = cv2.boundingRect(mask)
        inside = bx > 0 and by > 0 and bx + bw < w and by + bh < h
        if inside:
            centre = (x + bx + bw // 2, y + by + bh // 2)
            frame[:] = cv2.seamlessClone(patch, frame, mask, centre, cv2.NORMAL_CLONE)
            return
    patch = transfer_colour(patch, roi, mask)
    alpha = cv2.GaussianBlur(mask, (0, 0), max(1.0, size / 25)).astype(np.float32)[..., None] / 255
    roi[:] = (patch * alpha + roi * (1 - alpha)).astype(np.uint8)


@dataclass(slots=True)
class _Track:
    points: np.ndarray
    seen: float


class LandmarkSmoother:
    """Exponential smoothing of landmarks per face track, so the swapped face does not jitter.

    A tensor thread instance serves every stream and is not told which stream a frame is from,
    so tracks are keyed by frame size and matched to faces by position; a track unseen for
    ``ttl`` seconds is dropped and at most ``max_tracks`` are kept (bounded, like every queue).
    Large motion weakens the smoothing so a moving head is followed without lag.
    """

    def __init__(self, ttl: float = 1.0, max_tracks: int = 64) -> None:
        self.ttl, self.max_tracks = ttl, max_tracks
        self._tracks: dict[tuple[int, int], list[_Track]] = {}
        self._lock = threading.Lock()

    def __call__(self, size: tuple[int, int], points: np.ndarray, factor: float) -> np.ndarray:
        now = time.monotonic()
        width = float(np.ptp(points[:, 0])) or 1.0
        with self._lock:
            self._expire(now)
            tracks = self._tracks.setdefault(size, [])
            centre = points.mean(0)
            best = min(tracks, key=lambda t: float(np.linalg.norm(t.points.mean(0) - centre)), default=None)
            if best is None or np.linalg.norm(best.points.mean(0) - centre) > 0.3 * width:
                if sum(len(v) for v in self._tracks.values()) < self.max_tracks:
                    tracks.append(_Track(points.copy(), now))
                return points
            motion = float(np.abs(points - best.points).mean())
            w = factor * float(np.clip(1.0 - motion / (0.08 * width), 0.0, 1.0))
            best.points = w * best.points + (1 - w) * points
            best.seen = now
            return best.points.copy()

    def _expire(self, now: float) -> None:
        for key in list(self._tracks):
            self._tracks[key] = [t for t in self._tracks[key] if now - t.seen < self.ttl]
            if not self._tracks[key]:
                del self._tracks[key]


def _rect(points: np.ndarray, shape: tuple[int, ...], pad: int = 4) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(points.min(0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(0)).astype(int) + pad
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(shape[1], x1), min(shape[0], y1)
    return (int(x0), int(y0), int(x1 - x0), int(y1 - y0)) if x1 - x0 > 8 and y1 - y0 > 8 else None


@tensor_thread(name="face_swap", licence=licences.FACES_AND_REFERENCE,
               params={"mode": {"choices": ["reference", "pair"]}, "blend": {"choices": ["seamless", "feather"]},
                       "smooth": {"min": 0.0, "max": 0.95}, "scale": {"min": 0.1, "max": 2.0},
                       "max_faces": {"min": 1, "max": 8}})
class FaceSwap(FaceThread):
    """Swaps faces live: the shipped reference face onto every face, or two faces in view with each other.

    ``mode`` "reference" or "pair"; ``blend`` "seamless" (Poisson) or "feather" (soft mask + colour
    transfer); ``smooth`` 0..0.95 landmark smoothing; ``scale`` detection scale; ``max_faces``.
    """

    def setup(self) -> None:
        super().setup()
        ref = cv2.cvtColor(cv2.imread(str(REFERENCE)), cv2.COLOR_BGR2RGB)
        faces = self.detector.detect(ref)
        if not faces or faces[0].landmarks is None:
            raise RuntimeError(f"no face found in the reference image {REFERENCE}")
        self.reference, self.reference_points = ref, faces[0].landmarks
        self.triangles = delaunay(self.reference_points, (ref.shape[1], ref.shape[0]))
        self.smoother = LandmarkSmoother()

    def __call__(self, frame: np.ndarray, mode: str = "reference", blend: str = "seamless", smooth: float = 0.5,
                 scale: float = 1.0, max_faces: int = 4) -> tuple[np.ndarray, dict[str, Any]]:
        frame = check_frame(frame)
        size = (frame.shape[1], frame.shape[0])
        faces = self.detector.detect(frame, scale, max_faces=max_faces)
        points = [self.smoother(size, f.landmarks, smooth) for f in faces if f.landmarks is not None]
        out = frame.copy()
        if mode == "pair":
            pairs = [(frame, points[0], points[1]), (frame, points[1], points[0])] if len(points) >= 2 else []
        else:
            pairs = [(self.reference, self.reference_points, p) for p in points]
        swapped = 0
        for src, src_pts, dst_pts in pairs:
            rect = _rect(dst_pts, frame.shape)
            if rect is None:
                continue
            patch, mask = warp_face(src, src_pts, dst_pts, self.triangles, rect)
            paste(out, patch, mask, rect, blend)
            swapped += 1
        return out, {"faces": [{"box": list(f.box)} for f in faces], "count": len(faces), "swapped": swapped}


face_swap = FaceSwap
