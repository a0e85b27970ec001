"""Many gateways, one cluster: a request about a stream or session that another gateway holds is
forwarded to that gateway, so clients may reach any of them (behind a load balancer, any is what they get).

The id in the path says who holds it (``ooblex.cluster.gateways``): ``DELETE``/``PATCH`` of a WHIP
session's ``Location``, a WHEP offer for a stream and its ``DELETE``/``PATCH``, an MJPEG viewer, a stream's
status and parameters. ``PeerRouter`` (ASGI middleware) sends such a request, body, token and all, to
the holder's ``peer_url`` and streams the answer back (MJPEG included). The holder checks the token
as for any request; the forwarding gateway first checks that a token verifies at all, so nobody
without one can make gateways talk to each other. A forwarded request carries ``X-Ooblex-Forwarded``
(never forwarded again) and ``X-Forwarded-For`` (the holder's per-client limits count the real
client when the forwarding gateway is in its ``trusted_proxies``).

WebRTC media never passes through here: the answer's ICE candidates are the holder's, so a WHEP
viewer's media flows straight between it and the holder (every gateway must be reachable by UDP, or
through TURN). Why forwarding and not a fan-out of frames through the broker: docs/deploy.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import routes
from ..cluster.gateways import Directory, instance_of
from ..errors import OoblexError
from ..tokens import verify
from .auth import presented, token_rules

log = logging.getLogger("ooblex.gateway")
FORWARDED = "x-ooblex-forwarded"
#: (path pattern with the id that names the holder, methods) of the requests that go to the holder.
ROUTES = [
    (routes.pattern(routes.WHIP_SESSION), "session_id", ("DELETE", "PATCH")),
    (routes.pattern(routes.WHEP), "stream_id", ("POST",)),
    (routes.pattern(routes.WHEP_SESSION), "stream_id", ("DELETE", "PATCH")),
    (routes.pattern(routes.MJPEG), "stream_id", ("GET", "HEAD")),
    (routes.pattern(routes.STREAM), "stream_id", ("GET", "PATCH")),
    (routes.pattern(routes.STREAM_HISTORY), "stream_id", ("GET",)),
]
#: Headers that belong to one connection, not to the request or answer.
HOP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"te", b"upgrade", b"proxy-authorization",
       b"x-forwarded-for", FORWARDED.encode()}
#: The largest body forwarded (SDP offers and JSON parameters are a few KB).
MAX_BODY = 256 * 1024


def routed_id(method: str, path: str) -> str | None:
    """The stream or session id a request is about, if it is one that goes to the id's holder."""
    for pattern, holder, methods in ROUTES:
        m = pattern.match(path)
        if m and method in methods:
            return m.group(holder)
    return None


class PeerRouter:
    """ASGI middleware: forward requests about ids another gateway of the cluster holds (see module docstring)."""

    def __init__(self, app: ASGIApp, directory: Directory, secret: str) -> None:
        self.app = app
        self.directory = directory
        self.secret = secret
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=3.0), follow_redirects=False)
        return self._http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] == "http" and not any(k == FORWARDED.encode() for k, _ in scope["headers"]):
            ident = routed_id(scope["method"], scope["path"])
            if ident is not None and instance_of(ident) not in (None, self.directory.instance) \
                    and self._token_verifies(scope):
                owner = await self.directory.owner(ident)
                if owner is not None:
                    await self.forward(scope, receive, send, ident, owner)
                    return
        await self.app(scope, receive, send)  # ours, unknown (404 there), or no valid token (401 there)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        finally:
            if self._http is not None:
                await self._http.aclose()

    def _token_verifies(self, scope: Scope) -> bool:
        if not self.secret:
            return True
        token = presented(Request(scope))
        try:
            return token is not None and verify(token, self.secret, rules=token_rules(scope["app"])) is not None
        except OoblexError:
            return False

    async def forward(self, scope: Scope, receive: Receive, send: Send, ident: str, owner: dict[str, Any]) -> None:
        """Send the request to ``owner``'s ``peer_url`` and stream its answer back. If the owner cannot be
        reached and its record is gone (it stopped), the request is answered here: 404 like any unknown id."""
        body = await _body(receive)
        if body is None:
            await _answer(send, 413, f"request body over {MAX_BODY} bytes")
            return
        query = scope.get("query_string", b"").decode("latin-1")
        url = owner["peer_url"].rstrip("/") + scope["path"] + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP]
        client = scope["client"][0] if scope.get("client") else "unknown"
        headers += [(FORWARDED.encode(), self.directory.instance.encode()), (b"x-forwarded-for", client.encode())]
        streaming = scope["path"].startswith(routes.prefix(routes.MJPEG))
        request = self.http.build_request(scope["method"], url, headers=headers, content=body,
                                          timeout=httpx.Timeout(30.0, connect=3.0, read=None if streaming else 30.0))
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            if await self.directory.owner(ident, max_age_s=0) is None:
                await self.app(scope, _replay(body, receive), send)
                return
            log.warning("gateway %s (%s) holding %s did not answer: %s", owner.get("instance"), owner["peer_url"],
                        scope["path"], exc)
            await _answer(send, 502, f"the gateway holding this stream ({owner.get('instance')}) did not answer; "
                                     "it may have just stopped")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw if k.lower() not in HOP]})
            gone = asyncio.ensure_future(_disconnected(receive))
            try:
                async for chunk in response.aiter_raw():
                    if gone.done():
                        return
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                gone.cancel()
        except (httpx.HTTPError, OSError) as exc:
            log.info("forwarding %s from %s ended: %s", scope["path"], owner.get("instance"), exc)
        finally:
            await response.aclose()


async def cluster_streams(request: Request, directory: Directory, timeout_s: float = 3.0
                          ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every other live gateway's streams (``GET /api/v1/streams`` there, with the caller's token), and the
    instances that did not answer."""
    answers, missing = await ask_peers(request, directory, routes.STREAMS, timeout_s)
    return [s for a in answers for s in a], missing


async def ask_peers(request: Request, directory: Directory, path: str, timeout_s: float = 3.0,
                    params: dict[str, str] | None = None) -> tuple[list[Any], list[str]]:
    """``GET path`` on every other live gateway with the caller's token (marked forwarded, so they answer
    for themselves only): the JSON answers, and the instances that did not answer."""
    peers = await directory.peers()
    headers = {FORWARDED: directory.instance}
    if "authorization" in request.headers:
        headers["authorization"] = request.headers["authorization"]
    query = {**(params or {}), **{k: v for k, v in request.query_params.items() if k == "token"}}

    async def ask(http: httpx.AsyncClient, peer: dict[str, Any]) -> Any:
        try:
            r = await http.get(peer["peer_url"].rstrip("/") + path, headers=headers, params=query)
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async with httpx.AsyncClient(timeout=timeout_s) as http:
        answers = await asyncio.gather(*(ask(http, p) for p in peers))
    missing = [str(p.get("instance")) for p, a in zip(peers, answers, strict=True) if a is None]
    return [a for a in answers if a is not None], missing


async def _body(receive: Receive) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if size > MAX_BODY:
            return None
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was already read: the body once, then the connection's messages."""
    sent = False

    async def again() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
