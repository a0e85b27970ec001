"""Frames over plain HTTP (one image per request) and WebSocket (a pushed stream of images).

POST /api/v1/frames/{thread}?output=jpeg|json|both&<param>=<value>
    Body: one JPEG or PNG. ``jpeg`` (default): the processed JPEG, with the thread's JSON result
    in the ``X-Ooblex-Result`` header; ``json``: ``{"result", "error", "latency_ms"}``; ``both``:
    that JSON plus ``"image"`` (base64 JPEG).
GET /ws/{thread}?output=jpeg|json&<param>=<value>   (WebSocket)
    Send binary JPEG/PNG frames (any rate: the newest wins when the thread is slower) and text
    ``{"params": {...}}`` to change parameters. Receive, per processed frame, a text JSON
    ``{"seq", "result", "error", "latency_ms"}`` followed (output=jpeg) by the binary JPEG.
    Bad frames get ``{"error": ...}`` and the stream goes on; an unusable request is closed
    with code 4000 + HTTP status (e.g. 4404 unknown thread) and the reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, WebSocket, WebSocketDisconnect

from ..engine import Stream, StreamClosed, UnknownThread
from ..frame import Frame
from .bodies import check_image_type, decode_image, read_body
from .state import Gateway, gateway

router = APIRouter()
RESERVED = {"output"}
OUTPUTS = ("jpeg", "json", "both")


def thread_params(query: Any) -> dict[str, str]:
    """Query parameters that are the thread's keyword parameters (all but the reserved ones)."""
    return {k: v for k, v in query.items() if k not in RESERVED}


def output_mode(query: Any, allowed: tuple[str, ...] = OUTPUTS) -> str:
    mode = query.get("output", "jpeg")
    if mode not in allowed:
        raise HTTPException(400, f"output must be one of {list(allowed)}, got {mode!r}")
    return mode


def to_json(obj: Any) -> str:
    """JSON text; numpy scalars and arrays in thread results become numbers and lists."""
    return json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def describe_result(frame: Frame) -> dict[str, Any]:
    return {"seq": frame.seq, "result": frame.result, "error": frame.error,
            "latency_ms": {k: round(v, 3) for k, v in frame.durations().items()}}


@router.post("/api/v1/frames/{thread}", tags=["frames"],
             responses={200: {"content": {"image/jpeg": {}, "application/json": {}}}})
async def process_frame(thread: str, request: Request) -> Response:
    """Process one JPEG/PNG image through ``thread``; query parameters set its parameters."""
    gw = gateway(request)
    gw.engine.resolve(thread)
    mode = output_mode(request.query_params)
    check_image_type(request.headers.get("content-type"))
    data = await read_body(request, gw.settings.max_image_bytes, "image body")
    image = await decode_image(data, gw.settings.max_image_pixels)
    stream = gw.engine.open(thread, params=thread_params(request.query_params), mode="every", max_in_flight=1)
    try:
        await stream.submit(image, captured=time.time())
        frame = await stream.get(timeout=gw.settings.frame_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(504, f"{thread} did not answer within {gw.settings.frame_timeout_s} s") from None
    finally:
        await stream.close()
    gw.count("http_frames")
    return await frame_response(gw, frame, mode)


async def frame_response(gw: Gateway, frame: Frame, mode: str) -> Response:
    info = describe_result(frame)
    if mode == "json":
        return Response(to_json(info), media_type="application/json")
    body = await gw.jpegs.get(frame)
    if mode == "both":
        info["image"] = base64.b64encode(body).decode()
        return Response(to_json(info), media_type="application/json")
    headers = {"X-Ooblex-Result": to_json(frame.result), "X-Ooblex-Latency-Ms": json.dumps(info["latency_ms"])}
    if frame.error:
        headers["X-Ooblex-Error"] = frame.error.encode("ascii", "replace").decode()
    return Response(body, media_type="image/jpeg", headers=headers)


@router.websocket("/ws/{thread}")
async def frames_socket(ws: WebSocket, thread: str) -> None:
    """Pushed stream of JPEG/PNG frames in, results (and processed JPEGs) out."""
    gw = gateway(ws)
    await ws.accept()
    try:
        mode = output_mode(ws.query_params, ("jpeg", "json"))
        stream = gw.engine.open(thread, params=thread_params(ws.query_params), mode="live",
                                max_in_flight=gw.settings.window(gw.engine.resolve(thread)),
                                max_latency_ms=gw.settings.max_latency_ms)
    except (HTTPException, UnknownThread, ValueError, OverflowError) as exc:
        await _refuse(ws, exc)
        return
    await ws.send_text(json.dumps({"stream_id": stream.id, "thread": thread, "params": stream.params}))
    lock = asyncio.Lock()  # a result's JSON and its JPEG go out back to back
    sender = asyncio.create_task(_send_results(ws, gw, stream, mode, lock))
    try:
        await _receive_frames(ws, gw, stream, lock)
    except WebSocketDisconnect:
        pass
    finally:
        sender.cancel()
        await stream.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def _refuse(ws: WebSocket, exc: Exception) -> None:
    status = {UnknownThread: 404, OverflowError: 429}.get(type(exc), getattr(exc, "status_code", 400))
    reason = exc.detail if isinstance(exc, HTTPException) else str(exc)
    await ws.send_text(json.dumps({"error": reason, "status": status}))
    await ws.close(code=4000 + status, reason=reason[:120])


async def _receive_frames(ws: WebSocket, gw: Gateway, stream: Stream, lock: asyncio.Lock) -> None:
    limit = gw.settings.max_image_bytes
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("text") is not None:
            async with lock:
                await _control(ws, stream, msg["text"])
            continue
        data = msg.get("bytes") or b""
        try:
            if len(data) > limit:
                raise HTTPException(413, f"frame is {len(data)} bytes; the limit is {limit}")
            image = await decode_image(data, gw.settings.max_image_pixels)
        except HTTPException as exc:
            async with lock:
                await ws.send_text(json.dumps({"error": exc.detail, "status": exc.status_code}))
            continue
        await stream.submit(image, captured=time.time())
        gw.count("ws_frames")


async def _control(ws: WebSocket, stream: Stream, text: str) -> None:
    try:
        msg = json.loads(text)
        if not isinstance(msg, dict) or not isinstance(msg.get("params"), dict):
            raise ValueError('control messages look like {"params": {"name": value}}')
        params = stream.set_params(**msg["params"])
    except ValueError as exc:
        await ws.send_text(json.dumps({"error": str(exc), "status": 400}))
        return
    await ws.send_text(json.dumps({"params": params}))


async def _send_results(ws: WebSocket, gw: Gateway, stream: Stream, mode: str, lock: asyncio.Lock) -> None:
    with contextlib.suppress(StreamClosed, WebSocketDisconnect, RuntimeError):
        while True:
            frame = await stream.get()
            body = await gw.jpegs.get(frame) if mode == "jpeg" and frame.image is not None else None
            async with lock:
                await ws.send_text(to_json(describe_result(frame)))
                if body is not None:
                    await ws.send_bytes(body)
