"""How a ``Frame`` travels through a network broker: one bytes message, header first.

Layout: 4-byte big-endian header length, the JSON header (``Frame.header()`` plus how the
pixels are coded), then the pixels. JPEG (4:2:0) is the default: a 640x480 frame shrinks
from 900 KiB to ~30-60 KiB, which costs ~2 ms to code but saves far more on any real network.
``raw`` sends the array bytes as they are (lossless; for loopback or tensors that must not change).
"""

from __future__ import annotations

import json
import struct
from typing import Any, Literal

import numpy as np

from . import jpeg
from .errors import BadRequest
from .frame import Frame, result_json

Codec = Literal["jpeg", "raw"]
CODECS = ("jpeg", "raw")
_LEN = struct.Struct(">I")


class WireError(BadRequest):
    """Bytes that are not an Ooblex frame message, or a frame that cannot be made into one."""


#: Header fields and the JSON types they must have: a message that decodes is a frame the engine can use.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "stream_id": str, "seq": int, "thread": str, "params": dict, "stamps": dict, "result": (dict, type(None)),
    "error": (str, type(None)), "deadline": (int, float), "reply_to": str, "skipped": bool,
    "pts": (int, float, type(None)), "note": (str, type(None))}


def encode(frame: Frame, codec: Codec = "jpeg", quality: int = 85) -> bytes:
    """Frame -> bytes. A frame without pixels (a result-only output) carries none."""
    if codec not in CODECS:
        raise BadRequest(f"unknown wire codec {codec!r}: use one of {CODECS}")
    header: dict[str, Any] = frame.header()
    image = frame.image
    if image is None:
        header["codec"], payload = "none", b""
    elif codec == "jpeg" and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        header["codec"], payload = "jpeg", jpeg.encode(image, quality)
    else:
        image = np.ascontiguousarray(image)
        header["codec"], header["shape"], header["dtype"] = "raw", list(image.shape), image.dtype.str
        payload = image.tobytes()
    try:
        head = result_json(header, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise WireError(f"frame {frame.stream_id}#{frame.seq} cannot be sent: {exc}") from None
    return b"".join((_LEN.pack(len(head)), head, payload))


def decode(data: bytes | bytearray | memoryview, defer_jpeg: bool = False) -> Frame:
    """bytes -> Frame; raises ``WireError`` naming what is wrong (never anything else: a broker drops
    such a message and goes on with the next).

    ``defer_jpeg``: JPEG pixels stay coded in ``frame.jpeg`` (only their header is checked here), so
    that a worker decodes them off the event loop, a batch at a time, on the GPU if it has one.
    """
    try:
        return _decode(memoryview(data), defer_jpeg)
    except WireError:
        raise
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:  # pixels that do not match the header
        raise WireError(f"bad frame message: {type(exc).__name__}: {exc}") from None


def _decode(data: memoryview, defer_jpeg: bool) -> Frame:
    if len(data) < _LEN.size:
        raise WireError("frame message too short")
    (n,) = _LEN.unpack_from(data)
    if _LEN.size + n > len(data):
        raise WireError("frame message header runs past its end")
    try:
        header = json.loads(bytes(data[_LEN.size:_LEN.size + n]))
    except ValueError as exc:
        raise WireError(f"frame header is not JSON: {exc}") from None
    _check_header(header)
    payload = data[_LEN.size + n:]
    codec = header.pop("codec", None)
    shape, dtype = header.pop("shape", None), header.pop("dtype", None)
    if codec == "none":
        image = None
    elif codec == "jpeg" and defer_jpeg:
        coded = bytes(payload)
        if jpeg.image_size(coded) is None:
            raise WireError("frame pixels are not a JPEG image")
        frame = Frame.from_header(header, None)
        frame.jpeg = coded
        return frame
    elif codec == "jpeg":
        image = jpeg.decode(bytes(payload))
    elif codec == "raw":
        image = np.frombuffer(payload, dtype=np.dtype(dtype)).reshape(shape).copy()
    else:
        raise WireError(f"unknown codec {codec!r} in frame header")
    return Frame.from_header(header, image)


def _check_header(header: Any) -> None:
    if not isinstance(header, dict):
        raise WireError(f"frame header is a JSON {type(header).__name__}, not an object")
    for key, value in header.items():
        if key in ("codec", "shape", "dtype"):
            continue
        expected = _FIELDS.get(key)
        if expected is None:
            raise WireError(f"unknown field {key!r} in frame header")
        if not isinstance(value, expected) or isinstance(value, bool) and key != "skipped":
            raise WireError(f"frame header field {key!r} has the wrong type ({type(value).__name__})")
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in header.get("stamps", {}).values()):
        raise WireError("frame header field 'stamps' holds a value that is not a time")
