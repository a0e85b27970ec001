"""Reading request bodies within the configured limits: images, JSON objects, SDP text."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from typing import IO, Any

import numpy as np
from fastapi import Request

from .. import jpeg
from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .state import gateway

IMAGE_TYPES = ("image/", "application/octet-stream")
#: Uploads up to this size stay in memory while they are checked; larger ones go to a temporary file.
SPOOL_IN_MEMORY = 8 << 20


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes (never read past it)."""
    return b"".join([chunk async for chunk in limited(request, limit, what)])


async def limited(request: Request, limit: int, what: str) -> AsyncIterator[bytes]:
    """The body's chunks; 413 as soon as it is known to exceed ``limit`` bytes (from its length, or while read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"{what} is {declared} bytes; the limit is {limit}")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"{what} exceeds the limit of {limit} bytes")
        yield chunk


async def spool_body(request: Request, limit: int, what: str) -> IO[bytes]:
    """The body in a temporary file (in memory while small), within ``limit``: for uploads too big to hold."""
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        async for chunk in limited(request, limit, what):
            out.write(chunk)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out  # type: ignore[return-value]


def media_type(request: Request) -> str:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower()


async def read_json(request: Request, limit: int, example: str) -> dict[str, Any]:
    """A JSON object body sent as ``application/json`` (a cross-site form cannot send that), within ``limit``
    bytes and the gateway's ``max_json_depth``."""
    ctype = media_type(request)
    if ctype != "application/json":
        raise UnsupportedMediaType(f"expected Content-Type application/json, got {ctype or 'none'!r}")
    raw = await read_body(request, limit, "JSON body")
    body = parse_json(raw, example, gateway(request).settings.max_json_depth)
    if not isinstance(body, dict):
        raise BadRequest(f"body must be a JSON object like {example}")
    return body


class InvalidJSON(BadRequest):
    """Not JSON, not Unicode text, or nested too deep: a WebSocket closes with 1007 for it, a route answers 400."""


def parse_json(raw: bytes | str, example: str, max_depth: int) -> Any:
    """Strict JSON at most ``max_depth`` arrays/objects deep, its strings Unicode text. Python's extensions (NaN,
    Infinity) are refused like any other non-JSON; deeper documents before their depth can exhaust the stack."""
    try:
        value = json.loads(raw, parse_constant=_not_json)
        deep = not _depth_within(value, max_depth)
    except (ValueError, UnicodeDecodeError):
        raise InvalidJSON(f"not JSON; expected an object like {example}") from None
    except RecursionError:  # deeper than Python's own limit, so deeper than ours
        deep = True
    if deep:
        raise InvalidJSON(f"JSON nested more than {max_depth} deep (OOBLEX_MAX_JSON_DEPTH); expected an object "
                          f"like {example}")
    if ("\\u" in raw if isinstance(raw, str) else b"\\u" in raw) and not _unicode(value):
        raise InvalidJSON("JSON strings must be Unicode text: an escaped lone surrogate (\\ud800-\\udfff) is not")
    return value


def _unicode(value: Any) -> bool:
    """Whether every string in ``value`` is Unicode text (``\\ud800`` escapes decode to lone surrogates)."""
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


def _depth_within(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` arrays/objects (iteratively: any depth is safe to check)."""
    level = [value]
    for _ in range(limit):
        level = [v for c in level if isinstance(c, (dict, list)) for v in (c.values() if isinstance(c, dict) else c)]
        if not level:
            return True
    return not any(isinstance(v, (dict, list)) for v in level)


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def check_image_type(content_type: str | None) -> None:
    if content_type and not content_type.lower().startswith(IMAGE_TYPES):
        raise UnsupportedMediaType(f"expected a JPEG or PNG body (Content-Type image/jpeg or image/png), "
                                   f"got {content_type!r}")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return jpeg.image_size(data)


async def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an upload in a worker thread; 413 if too many pixels, 400 if not an image."""
    if not data:
        raise BadRequest("empty body: expected a JPEG or PNG image")
    size = image_size(data)
    if size is None:  # other formats could declare any size: only sizes known before decoding are decoded
        raise BadRequest("cannot decode the image: the body is not a JPEG or PNG (or its header is damaged)")
    if size[0] * size[1] > max_pixels:
        raise PayloadTooLarge(f"image is {size[0]}x{size[1]}; the limit is {max_pixels} pixels")
    try:
        image = await asyncio.to_thread(jpeg.decode, data)
    except jpeg.ImageDecodeError as exc:
        raise BadRequest(f"cannot decode the image: {exc}") from None
    if image.shape[0] * image.shape[1] > max_pixels:
        raise PayloadTooLarge(f"image is {image.shape[1]}x{image.shape[0]}; the limit is {max_pixels} pixels")
    return image
