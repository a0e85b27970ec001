"""Test helper: write a small real video file with PyAV (a moving bar), the stand-in for a webcam."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def make_clip(path: Path, frames: int = 30, width: int = 160, height: int = 120, fps: int = 30) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.full((height, width, 3), 60, np.uint8)
            x = (i * 5) % (width - 20)
            img[:, x:x + 20] = (250, 200, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path
