"""Who may do what on this gateway: scoped bearer tokens (``ooblex.tokens``) checked per route.

With no secret (``Settings.secret`` / ``OOBLEX_SECRET``) every check passes: the gateway then
listens on loopback only (``ooblex.cli`` refuses otherwise). With a secret, a route that starts
work needs ``publish`` for its thread, one that reveals a stream needs ``view`` for it (or
``publish`` for its thread), and listings, metrics and jobs need ``control``. Tokens come as
``Authorization: Bearer <token>`` (WHIP/WHEP clients, RFC 9725) or ``?token=<token>`` (``<img>``
tags and browser WebSockets cannot set headers).
"""

from __future__ import annotations

import time

from fastapi import Request, WebSocket

from ..engine import Stream
from ..errors import Forbidden
from ..tokens import Token, authorize, bearer, mint
from .state import UnknownStream, gateway

#: The query parameter that carries a token; never passed to a thread as a parameter.
TOKEN_PARAM = "token"


def presented(conn: Request | WebSocket) -> str | None:
    """The token the caller presented: the Authorization header first, else ``?token=``."""
    return bearer(conn.headers.get("authorization")) or conn.query_params.get(TOKEN_PARAM) or None


def require(conn: Request | WebSocket, scope: str, *, thread: str | None = None,
            stream: str | None = None) -> Token | None:
    """Raise ``Unauthorized``/``Forbidden`` unless the caller may do ``scope`` (always allowed without a secret)."""
    return authorize(presented(conn), scope, thread=thread, stream=stream,
                     secret=gateway(conn).settings.secret.encode())


def require_control(request: Request) -> None:
    """FastAPI dependency for listings, metrics and jobs."""
    require(request, "control")


def view_token(conn: Request | WebSocket, granted: Token | None, stream: Stream) -> str | None:
    """A ``view`` token for the one stream a publisher just opened, valid as long as the publisher's own:
    shareable with viewers (WHEP, MJPEG) without sharing the right to publish. None without a secret."""
    if granted is None:
        return None
    return mint("view", stream=stream.id, ttl_s=max(1.0, granted.expires - time.time()),
                secret=gateway(conn).settings.secret)


def stream_for(conn: Request | WebSocket, stream_id: str, scope: str = "view") -> Stream:
    """The open stream ``stream_id`` if the caller may ``view`` (or, with ``publish``, tune) it.

    The token is checked before the stream is looked up, so without one nobody learns whether
    an id exists.
    """
    stream = gateway(conn).engine.streams.get(stream_id)
    require(conn, scope, stream=stream_id, thread=stream.thread.name if stream is not None else None)
    if stream is None:
        raise unknown_stream(stream_id)
    return stream


def stream_to_change(conn: Request | WebSocket, stream_id: str) -> Stream:
    """The open stream ``stream_id`` if the caller may tune it (``publish`` for its thread); a token that
    does not cover it gets the same 404 as an unknown id, so a change never tells whether an id exists."""
    try:
        return stream_for(conn, stream_id, "publish")
    except Forbidden:
        raise unknown_stream(stream_id) from None


def unknown_stream(stream_id: str) -> UnknownStream:
    return UnknownStream(f"no stream {stream_id!r} (open streams: GET /api/v1/streams)")
