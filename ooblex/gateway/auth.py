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
from typing import Any

from fastapi import Request, WebSocket

from ..engine import Stream
from ..errors import Forbidden
from ..token_keys import keys_for
from ..tokens import Rules, Token, authorize, bearer, mint, verified
from .state import UnknownStream, gateway

#: The query parameter that carries a token; never passed to a thread as a parameter.
TOKEN_PARAM = "token"


def presented(conn: Request | WebSocket) -> str | None:
    """The token the caller presented: the Authorization header first, else ``?token=``."""
    return bearer(conn.headers.get("authorization")) or conn.query_params.get(TOKEN_PARAM) or None


def token_rules(app: Any) -> Rules:
    """This gateway's token rules (``Settings``), with the keyring in its cluster store if it has one
    (read in the background every ``token_keys_refresh_s``); made on first use."""
    rules = getattr(app.state, "token_rules", None)
    if rules is None:
        gw = app.state.gateway
        s, registry = gw.settings, getattr(gw.engine, "registry", None)
        keys = keys_for(s.secret.encode(), s.token_keys, registry.url if registry is not None else None,
                        s.token_keys_refresh_s, watch=True)
        rules = app.state.token_rules = Rules(s.token_audience, s.max_token_ttl_s, s.max_token_ttl_control_s, keys)
    return rules


def require(conn: Request | WebSocket, scope: str, *, thread: str | None = None,
            stream: str | None = None) -> Token | None:
    """Raise ``Unauthorized``/``Forbidden`` unless the caller may do ``scope`` (always allowed without a secret)."""
    return authorize(presented(conn), scope, thread=thread, stream=stream,
                     secret=gateway(conn).settings.secret.encode(), rules=token_rules(conn.app))


def require_control(request: Request) -> None:
    """FastAPI dependency for listings, metrics and jobs."""
    require(request, "control")


def view_token(conn: Request | WebSocket, granted: Token | None, stream: Stream) -> str | None:
    """A ``view`` token for the one stream a publisher just opened, valid as long as the publisher's own (within
    the view maximum): shareable with viewers (WHEP, MJPEG) without sharing the right to publish. Its subject is
    the publisher's plus ``/viewers``: everyone watching through it is one client for per-client limits, but not
    the publisher, whose own sessions their viewing never uses up. None without a secret."""
    if granted is None:
        return None
    rules = token_rules(conn.app)
    ttl = min(max(1.0, granted.expires - time.time()), rules.max_ttl("view"))
    return mint("view", stream=stream.id, ttl_s=ttl, subject=f"{granted.subject}/viewers",
                secret=gateway(conn).settings.secret, rules=rules)


def stream_for(conn: Request | WebSocket, stream_id: str, scope: str = "view") -> Stream:
    """The open stream ``stream_id`` if the caller may ``view`` (or, with ``publish``, tune) it.

    Nothing here tells a caller about a stream it may not use: no token (or an invalid one) is 401 and
    a token whose scope cannot do ``scope`` to any stream is 403, both before the stream is looked up;
    an unknown id and a stream the token does not cover are the same 404.
    """
    secret = gateway(conn).settings.secret
    claims = verified(presented(conn), scope, secret=secret, rules=token_rules(conn.app)) if secret else None
    if claims is not None and not claims.may(scope):
        raise Forbidden(f"this token (scope {claims.scope!r}) does not allow {scope} on streams")
    stream = gateway(conn).engine.streams.get(stream_id)
    if stream is None or (claims is not None and not claims.allows(scope, thread=stream.thread.name,
                                                                   stream=stream_id)):
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
