"""Fast JPEG encode/decode for the broker wire format and MJPEG/HTTP endpoints.

simplejpeg (libjpeg-turbo, bundled in its wheel) is the default: measured fastest here, see
``benchmarks/engine_overhead.py``. PyTurboJPEG and OpenCV are fallbacks, tried in that order.
Images are always RGB HxWx3 uint8 on our side of these functions.
"""

from __future__ import annotations

import numpy as np

try:
    import simplejpeg as _sj
except ImportError:  # pragma: no cover - exercised only without simplejpeg
    _sj = None


class ImageDecodeError(ValueError):
    """The bytes are not an image we can decode."""


def encode(image: np.ndarray, quality: int = 80) -> bytes:
    """RGB uint8 HxWx3 -> JPEG bytes (4:2:0, the fast and universally decodable subsampling)."""
    image = _check_image(image)
    if _sj is not None:
        return _sj.encode_jpeg(image, quality=quality, colorspace="RGB", colorsubsampling="420")
    import cv2

    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    """JPEG (fast path) or any format OpenCV reads (PNG, BMP, ...) -> RGB uint8 HxWx3."""
    if not data:
        raise ImageDecodeError("empty image body")
    if _sj is not None and data[:2] == b"\xff\xd8":
        try:
            return _sj.decode_jpeg(data, colorspace="RGB", fastdct=True, fastupsample=True)
        except ValueError as exc:
            raise ImageDecodeError(f"not a valid JPEG: {exc}") from exc
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageDecodeError("body is not a decodable image (expected JPEG or PNG)")
    return np.ascontiguousarray(img[:, :, ::-1])


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG header without decoding, or None if unknown."""
    if _sj is not None and data[:2] == b"\xff\xd8":
        try:
            h, w, _, _ = _sj.decode_jpeg_header(data)
            return w, h
        except ValueError:
            return None
    return None


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy image, got {type(image).__name__}"
                        f"{'' if not isinstance(image, np.ndarray) else ' of ' + str(image.dtype)}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    return np.ascontiguousarray(image)
