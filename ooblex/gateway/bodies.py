"""Reading request bodies and image uploads within the configured limits."""

from __future__ import annotations

import asyncio

import numpy as np
from fastapi import HTTPException, Request

from .. import jpeg

IMAGE_TYPES = ("image/", "application/octet-stream")


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, or 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"{what} is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"{what} exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def check_image_type(content_type: str | None) -> None:
    if content_type and not content_type.lower().startswith(IMAGE_TYPES):
        raise HTTPException(415, f"expected a JPEG or PNG body (Content-Type image/jpeg or image/png), "
                                 f"got {content_type!r}")


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return jpeg.image_size(data)


async def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode an upload in a worker thread; 413 if too many pixels, 400 if not an image."""
    if not data:
        raise HTTPException(400, "empty body: expected a JPEG or PNG image")
    size = image_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise HTTPException(413, f"image is {size[0]}x{size[1]}; the limit is {max_pixels} pixels")
    try:
        image = await asyncio.to_thread(jpeg.decode, data)
    except jpeg.ImageDecodeError as exc:
        raise HTTPException(400, f"cannot decode the image: {exc}") from None
    if image.shape[0] * image.shape[1] > max_pixels:
        raise HTTPException(413, f"image is {image.shape[1]}x{image.shape[0]}; the limit is {max_pixels} pixels")
    return image
