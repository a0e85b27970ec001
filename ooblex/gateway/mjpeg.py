"""GET /mjpeg/{stream_id}: a processed stream as ``multipart/x-mixed-replace`` JPEGs.

Works in an ``<img>`` tag, VLC, OpenCV and ``ooblex run --source http://...``. Each viewer has
its own bounded latest-wins queue (``stream.listen``), so a slow viewer skips frames instead of
delaying the others; each frame is JPEG-encoded once however many viewers there are.
Pictures only: MJPEG has no sound (a stream's audio goes to WHEP viewers).
With a secret set it needs a ``view`` token (or ``publish`` for the thread), as a header or ``?token=``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .. import routes
from ..engine import Stream
from .auth import stream_for
from .state import Gateway, gateway

router = APIRouter()
BOUNDARY = "ooblexframe"


@router.get(routes.MJPEG, tags=["streams"],
            responses={200: {"content": {f"multipart/x-mixed-replace; boundary={BOUNDARY}": {}}}})
async def mjpeg(stream_id: str, request: Request) -> StreamingResponse:
    """Watch a processed stream as MJPEG (ends when the stream closes)."""
    gw = gateway(request)
    stream = stream_for(request, stream_id)
    gw.count("mjpeg_viewers")
    return StreamingResponse(_parts(gw, stream), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _parts(gw: Gateway, stream: Stream) -> AsyncIterator[bytes]:
    queue = stream.listen()
    try:
        if stream.latest is not None and stream.latest.image is not None:  # show something at once
            yield _part(await gw.jpegs.get(stream.latest))
        while True:
            frame = await queue.get()
            if frame is None:
                return
            if frame.image is not None:
                yield _part(await gw.jpegs.get(frame))
    finally:
        stream.unlisten(queue)


def _part(body: bytes) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    return head + body + b"\r\n"
