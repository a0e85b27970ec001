"""Frames over plain HTTP (one image per request) and WebSocket (a pushed stream of images).

POST /api/v1/frames/{thread}?output=jpeg|json|both&<param>=<value>
    Body: one JPEG or PNG. ``jpeg`` (default): the processed JPEG, with the thread's JSON result
    in the ``X-Ooblex-Result`` header; ``json``: ``{"result", "error", "latency_ms"}``; ``both``:
    that JSON plus ``"image"`` (base64 JPEG).
GET /ws/{thread}?output=jpeg|json&<param>=<value>   (WebSocket)
    Send binary JPEG/PNG frames (any rate: the newest wins when the thread is slower) and text
    ``{"params": {...}}`` to change parameters. Receive, per processed frame, a text JSON
    ``{"seq", "result", "error", "latency_ms"}`` followed (output=jpeg) by the binary JPEG.
    Bad frames and parameters get ``{"error": ...}`` and the stream goes on; an unusable request is
    closed with code 4000 + HTTP status (e.g. 4404 unknown thread, 4401 no token) and the reason; a
    socket that sends no frame for ``ws_idle_s`` is closed with 4408 (text messages do not count),
    and so is one idle for ``stream_evict_idle_s`` when its room is needed. A text message that is not
    JSON (or nests deeper than ``max_json_depth``) closes it with 1007; a message over
    ``max_image_bytes`` (binary) or ``max_json_bytes`` (text, counted in UTF-8 bytes) with 1009.

With a secret set, both need a ``publish`` token for the thread (header or ``?token=``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket, WebSocketDisconnect

from .. import routes
from ..engine import Stream, StreamClosed
from ..errors import BadRequest, GatewayTimeout, OoblexError, status
from ..frame import Frame, result_json
from .auth import TOKEN_PARAM, require, view_token
from .bodies import InvalidJSON, check_image_type, decode_image, parse_json, read_body
from .clients import caller
from .settings import Settings
from .state import Gateway, gateway

router = APIRouter()
RESERVED = {"output", TOKEN_PARAM}
OUTPUTS = ("jpeg", "json", "both")
CONTROL_EXAMPLE = '{"params": {"name": value}}'


def thread_params(query: Any) -> dict[str, str]:
    """Query parameters that are the thread's keyword parameters (all but the reserved ones)."""
    return {k: v for k, v in query.items() if k not in RESERVED}


def output_mode(query: Any, allowed: tuple[str, ...] = OUTPUTS) -> str:
    mode = query.get("output", "jpeg")
    if mode not in allowed:
        raise BadRequest(f"output must be one of {list(allowed)}, got {mode!r}")
    return mode


def describe_result(frame: Frame) -> dict[str, Any]:
    return {"seq": frame.seq, "result": frame.result, "error": frame.error,
            "latency_ms": {k: round(v, 3) for k, v in frame.durations().items()}}


IMAGE_BODY = {"required": True, "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                            for t in ("image/jpeg", "image/png")}}


@router.post(routes.FRAMES, tags=["frames"], openapi_extra={"requestBody": IMAGE_BODY},
             responses={200: {"content": {"image/jpeg": {}, "application/json": {}}}})
async def process_frame(thread: str, request: Request) -> Response:
    """Process one JPEG/PNG image through ``thread``; query parameters set its parameters."""
    gw = gateway(request)
    granted = require(request, "publish", thread=thread)
    gw.engine.resolve(thread)
    mode = output_mode(request.query_params)
    check_image_type(request.headers.get("content-type"))
    data = await read_body(request, gw.settings.max_image_bytes, "image body")
    image = await decode_image(data, gw.settings.max_image_pixels)
    stream = await gw.open(caller(request, granted), thread, params=thread_params(request.query_params),
                           mode="every", max_in_flight=1)
    try:
        await stream.submit(image, captured=time.time())
        frame = await stream.get(timeout=gw.settings.frame_timeout_s)
    except asyncio.TimeoutError:
        raise GatewayTimeout(f"{thread} did not answer within {gw.settings.frame_timeout_s} s") from None
    finally:
        await stream.close()
    gw.count("http_frames")
    return await frame_response(gw, frame, mode)


async def frame_response(gw: Gateway, frame: Frame, mode: str) -> Response:
    info = describe_result(frame)
    if mode == "json":
        return Response(result_json(info, lenient=True), media_type="application/json")
    body = await gw.jpegs.get(frame)
    if mode == "both":
        info["image"] = base64.b64encode(body).decode()
        return Response(result_json(info, lenient=True), media_type="application/json")
    headers = {"X-Ooblex-Result": result_json(frame.result, lenient=True),
               "X-Ooblex-Latency-Ms": json.dumps(info["latency_ms"])}
    if frame.error:
        headers["X-Ooblex-Error"] = frame.error.encode("ascii", "replace").decode()
    return Response(body, media_type="image/jpeg", headers=headers)


@router.websocket(routes.WS)
async def frames_socket(ws: WebSocket, thread: str) -> None:
    """Pushed stream of JPEG/PNG frames in, results (and processed JPEGs) out."""
    gw = gateway(ws)
    await ws.accept()
    try:
        granted = require(ws, "publish", thread=thread)
        mode = output_mode(ws.query_params, ("jpeg", "json"))
        stream = await gw.open(caller(ws, granted), thread, params=thread_params(ws.query_params), mode="live",
                               max_in_flight=gw.settings.window(gw.engine.resolve(thread)),
                               max_latency_ms=gw.settings.max_latency_ms, evict=lambda: _evicted(ws, gw))
    except OoblexError as exc:
        await _refuse(ws, exc)
        return
    hello = {"stream_id": stream.id, "thread": thread, "params": stream.params}
    token = view_token(ws, granted, stream)
    await ws.send_text(json.dumps({**hello, "view_token": token} if token else hello))
    lock = asyncio.Lock()  # a result's JSON and its JPEG go out back to back
    sender = asyncio.create_task(_send_results(ws, gw, stream, mode, lock))
    try:
        await _receive_frames(ws, gw, stream, lock)
    except (WebSocketDisconnect, StreamClosed):  # gone, or evicted (``_evicted``)
        pass
    finally:
        sender.cancel()
        await stream.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def _evicted(ws: WebSocket, gw: Gateway) -> None:
    reason = f"no frames for {gw.settings.stream_evict_idle_s:g} s and the gateway is full"
    asyncio.ensure_future(ws.close(code=4408, reason=reason)).add_done_callback(
        lambda f: f.cancelled() or f.exception())  # a socket already gone has nothing to close


async def _refuse(ws: WebSocket, exc: Exception) -> None:
    code = status(exc)
    await ws.send_text(json.dumps({"error": str(exc), "status": code}))
    await ws.close(code=4000 + code, reason=str(exc)[:120])


async def _receive_frames(ws: WebSocket, gw: Gateway, stream: Stream, lock: asyncio.Lock) -> None:
    settings = gw.settings
    last_frame = time.monotonic()
    while True:  # only frames keep the socket: text (parameters) can be sent forever without computing anything
        try:
            msg = await asyncio.wait_for(ws.receive(), max(0.0, last_frame + settings.ws_idle_s - time.monotonic()))
        except asyncio.TimeoutError:
            await ws.close(code=4408, reason=f"no frames for {settings.ws_idle_s:g} s (OOBLEX_WS_IDLE_S)")
            return
        if msg["type"] == "websocket.disconnect" or stream.closed:  # gone, or evicted (``_evicted`` closes it)
            return
        text, data = msg.get("text"), msg.get("bytes") or b""
        too_big = _too_big(settings, text, data)
        if too_big:
            await ws.close(code=1009, reason=too_big)
            return
        try:
            if text is not None:
                async with lock:
                    await _control(ws, stream, text, settings.max_json_depth)
                continue
            image = await decode_image(data, settings.max_image_pixels)
        except InvalidJSON as exc:  # not a message of this protocol at all
            await ws.close(code=1007, reason=str(exc).encode()[:123].decode(errors="ignore"))
            return
        except OoblexError as exc:
            async with lock:
                await ws.send_text(json.dumps({"error": str(exc), "status": status(exc)}))
            continue
        await stream.submit(image, captured=time.time())
        last_frame = gw.active(stream.id)
        gw.count("ws_frames")


def _too_big(settings: Settings, text: str | None, data: bytes) -> str | None:
    """Why a message is over its limit (text counted in UTF-8 bytes), or None."""
    if text is not None:
        limit = settings.max_json_bytes
        return f"text message over {limit} bytes (OOBLEX_MAX_JSON_BYTES)" \
            if len(text) > limit or len(text.encode()) > limit else None
    limit = settings.max_image_bytes
    return f"frame is {len(data)} bytes; the limit is {limit} (OOBLEX_MAX_IMAGE_BYTES)" if len(data) > limit else None


async def _control(ws: WebSocket, stream: Stream, text: str, max_depth: int) -> None:
    msg = parse_json(text, CONTROL_EXAMPLE, max_depth)  # InvalidJSON: the caller closes the socket
    try:
        if not isinstance(msg, dict) or not isinstance(msg.get("params"), dict):
            raise BadRequest(f"control messages look like {CONTROL_EXAMPLE}")
        params = stream.set_params(**msg["params"])
    except OoblexError as exc:
        await ws.send_text(json.dumps({"error": str(exc), "status": status(exc)}))
        return
    await ws.send_text(json.dumps({"params": params}))


async def _send_results(ws: WebSocket, gw: Gateway, stream: Stream, mode: str, lock: asyncio.Lock) -> None:
    with contextlib.suppress(StreamClosed, WebSocketDisconnect, RuntimeError):
        while True:
            frame = await stream.get()
            body = await gw.jpegs.get(frame) if mode == "jpeg" and frame.image is not None else None
            async with lock:
                await ws.send_text(result_json(describe_result(frame), lenient=True))
                if body is not None:
                    await ws.send_bytes(body)
