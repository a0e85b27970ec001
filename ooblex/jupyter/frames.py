"""Frame messages between the live widget's browser view and the kernel, the same on both paths.

Browser -> kernel: ``{"type": "frame", "seq": n, "format": "jpeg" | "rgba", "width": w, "height": h}``
with one payload: a JPEG, or raw RGBA pixels straight from the canvas (no encode, no decode: for a
local kernel, where bandwidth is free and the browser's JPEG encoder is the slowest step).
Kernel -> browser: ``{"type": "frame", "lane": i, "ack": n, "images": [{"role": "input" | "output",
"format": ..., "width": w, "height": h}, ...], ...}`` with one payload per image: the input (kernel-side
sources only) and the output, in the widget's ``codec``. The transport (comm buffers or a side-channel
binary message) is not seen here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import jpeg

#: Largest browser frame accepted (bytes): a raw 1080p RGBA frame is 8.3 MB.
MAX_FRAME_BYTES = 16 << 20
CODECS = ("jpeg", "raw")


class BadMessage(ValueError):
    """A message from the browser that is ignored (and counted); ``seq`` is acknowledged if known."""

    def __init__(self, why: str, seq: int | None = None) -> None:
        super().__init__(why)
        self.seq = seq


@dataclass(slots=True)
class Incoming:
    seq: int
    format: str
    width: int
    height: int
    data: bytes


def incoming(content: dict[str, Any], buffers: list[Any]) -> Incoming:
    """A browser frame message checked for shape; ``BadMessage`` says what is wrong."""
    seq = content.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadMessage(f"frame message with seq {seq!r} (expected an integer)")
    if len(buffers) != 1:
        raise BadMessage(f"frame {seq} carries {len(buffers)} buffers (expected one image)", seq)
    data = bytes(buffers[0])
    if not data or len(data) > MAX_FRAME_BYTES:
        raise BadMessage(f"frame {seq} has {len(data)} bytes (expected 1..{MAX_FRAME_BYTES})", seq)
    fmt = content.get("format", "jpeg")
    w, h = content.get("width", 0), content.get("height", 0)
    if fmt == "rgba":
        if not (isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 and w * h * 4 == len(data)):
            raise BadMessage(f"raw frame {seq}: {len(data)} bytes is not {w!r}x{h!r} RGBA", seq)
    elif fmt != "jpeg":
        raise BadMessage(f"frame {seq} has format {fmt!r} (expected 'jpeg' or 'rgba')", seq)
    return Incoming(seq, fmt, w, h, data)


def decode(msg: Incoming) -> np.ndarray:
    """The frame as HxWx3 RGB uint8 (raises ``BadMessage`` for bytes that are not an image)."""
    if msg.format == "rgba":
        return np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 4)[..., :3].copy()
    try:
        return jpeg.decode(msg.data)
    except (jpeg.ImageDecodeError, ValueError) as exc:
        raise BadMessage(f"frame {msg.seq} is not a decodable image ({exc})", msg.seq) from None


def encode(image: np.ndarray, codec: str, quality: int) -> tuple[dict[str, Any], bytes]:
    """An image for the browser: its description for the header and its bytes."""
    h, w = image.shape[:2]
    if codec == "raw":
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 image, got {image.dtype} {image.shape}")
        rgba = np.empty((h, w, 4), np.uint8)
        rgba[..., :3] = image
        rgba[..., 3] = 255
        return {"format": "rgba", "width": w, "height": h}, rgba.tobytes()
    return {"format": "jpeg", "width": w, "height": h}, jpeg.encode(image, quality)
