"""Fast JPEG encode/decode for the broker wire format and MJPEG/HTTP endpoints.

simplejpeg (libjpeg-turbo, bundled in its wheel) is the default: measured fastest here, see
``benchmarks/engine_overhead.py`` (PyTurboJPEG was slower). Without simplejpeg, OpenCV encodes and
decodes; other formats (PNG, BMP, ...) always go through OpenCV.
Images are always RGB HxWx3 uint8 on our side of these functions.

Batches: ``decode_many`` decodes on every core (libjpeg-turbo runs without the GIL), and
``cuda_decoder()`` gives nvJPEG batch decoding through torchvision when it imports and sees a
GPU, so a GPU worker decodes where its model is instead of on its CPU.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("ooblex.jpeg")

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


def decode_many(datas: Sequence[bytes]) -> list[np.ndarray | ImageDecodeError]:
    """``decode`` each, in parallel on every core when there are several; a body that does not decode
    gives its error in its place (one bad frame must not cost the others theirs)."""
    if len(datas) < 2:
        return [_decode_or_error(d) for d in datas]
    return list(_pool().map(_decode_or_error, datas))


def _decode_or_error(data: bytes) -> np.ndarray | ImageDecodeError:
    try:
        return decode(data)
    except ImageDecodeError as exc:
        return exc


@functools.cache
def _pool() -> cf.ThreadPoolExecutor:
    return cf.ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="ooblex-jpeg")


@functools.cache
def cuda_decoder() -> Callable[[list[bytes], Any], list[Any]] | None:
    """``decode(datas, device) -> [uint8 CHW RGB tensor on device]`` by nvJPEG, or None without one.

    Needs torchvision built for the installed torch, and a CUDA GPU; anything else (torchvision
    missing, or failing to import beside another torch build) means None and CPU decoding.
    """
    try:
        import torch
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_jpeg as tv_decode
    except Exception as exc:  # noqa: BLE001 - a torchvision for another torch raises RuntimeError at import
        log.debug("no GPU JPEG decoding: %s", exc)
        return None
    if not torch.cuda.is_available():
        return None

    def decode_on(datas: list[bytes], device: Any) -> list[Any]:
        coded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        return tv_decode(coded, mode=ImageReadMode.RGB, device=device)

    return decode_on


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
