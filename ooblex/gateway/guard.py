"""Who may reach the gateway at all: loopback only without a secret; no foreign Host or Origin from browsers.

Without ``Settings.secret`` nothing asks for a token, so only this machine may be served: a request
from any other address gets 403 (however the app is served: ``ooblex demo``, or ``create_app`` under
one's own uvicorn), unless ``Settings.allow_insecure_network`` (``--insecure``) says otherwise.

A web page the user visits can send requests to ``http://127.0.0.1:8800`` from the user's browser,
and by DNS rebinding can even make its own name resolve there. Two checks stop both, for plain
HTTP and WebSocket alike (browsers do not apply CORS to WebSockets):

- the ``Host`` header must name this gateway (its listen address, localhost, this machine's
  addresses and names when listening on all interfaces, or ``Settings.allowed_hosts``): 400;
- a state-changing request (anything but GET/HEAD/OPTIONS) or a WebSocket handshake that carries
  an ``Origin`` must come from this gateway's own origin or one in ``Settings.cors_origins``: 403.

``SecurityHeaders`` keeps the gateway's pages (the demo, ``/console``, ``/docs``) to their own scripts
and out of other sites' frames (clickjacking), and stops browsers from sniffing content types.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
#: Headers on every response that sets none of its own. Pages run only the gateway's own scripts and styles
#: (no inline code, no CDN), talk only to the gateway, and may not be framed; URLs with ``?token=`` stay
#: out of Referer headers.
HEADERS = {"Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
                                      "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; "
                                      "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
LOOPBACK_ONLY = ("this gateway has no OOBLEX_SECRET, so it serves this machine (loopback) only; set OOBLEX_SECRET "
                 "and hand out tokens (ooblex token ...), or set OOBLEX_ALLOW_INSECURE_NETWORK=1 (--insecure) on a "
                 "network you trust")


def is_loopback(address: str) -> bool:
    """``127.0.0.0/8``, ``::1`` (also IPv4-mapped) or ``localhost``; names and other addresses are not."""
    address = address.strip("[]").lower()
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def local_hosts(bind: str) -> set[str]:
    """Host names that reach a gateway listening on ``bind``."""
    hosts = {"localhost", "127.0.0.1", "::1", bind.strip("[]").lower()}
    if bind in WILDCARD_BINDS:
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        hosts |= set(_interface_addresses())
    return hosts - {""}


def _interface_addresses() -> Iterable[str]:
    import ifaddr  # aioice's own dependency: always there with the gateway extra

    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            yield (ip.ip[0] if isinstance(ip.ip, tuple) else ip.ip).split("%")[0].lower()


class Guard:
    """ASGI middleware applying the loopback, Host and Origin checks above."""

    def __init__(self, app: ASGIApp, hosts: Iterable[str], origins: Iterable[str], loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only
        patterns = {h.lower() for h in hosts}
        self.any_host = "*" in patterns
        self.hosts = {h for h in patterns if "*" not in h}
        self.host_patterns = [h for h in patterns if "*" in h and h != "*"]
        self.origins = {o.rstrip("/").lower() for o in origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            problem = self.check(scope, headers)
            if problem is not None:
                await _refuse(scope, receive, send, *problem)
                return
        await self.app(scope, receive, send)

    def check(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        """``(status, reason)`` when the request must be refused, else None."""
        client = scope.get("client")
        if self.loopback_only and client and not is_loopback(str(client[0])):  # no client: a Unix socket
            return 403, LOOPBACK_ONLY
        host = headers.get("host", "")
        if not self.host_allowed(host):
            return 400, (f"Host header {host!r} is not allowed: add it to OOBLEX_ALLOWED_HOSTS if this gateway "
                         "is reached under that name")
        origin = headers.get("origin")
        unsafe = scope["type"] == "websocket" or scope.get("method", "GET") not in SAFE_METHODS
        if origin is not None and unsafe and not self.origin_allowed(origin, host):
            return 403, (f"cross-origin request from {origin!r} refused: add the origin to OOBLEX_CORS_ORIGINS "
                         "to allow pages there to use this gateway")
        return None

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if self.any_host:
            return True
        return name in self.hosts or any(fnmatch.fnmatchcase(name, p) for p in self.host_patterns)

    def origin_allowed(self, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins or "*" in self.origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and parts.netloc == host.lower()


class SecurityHeaders:
    """ASGI middleware adding ``HEADERS`` to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _host_name(host: str) -> str:
    """``"[::1]:8800"`` -> ``"::1"``; ``"Example.com:80"`` -> ``"example.com"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, reason: str) -> None:
    body = json.dumps({"detail": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if scope["type"] == "websocket":  # ASGI WebSocket denial response (uvicorn sends it as HTTP)
        await receive()  # websocket.connect
        message: dict[str, Any] = {"type": "websocket.http.response.start", "status": status, "headers": headers}
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 4000 + status, "reason": reason[:120]})
            return
        await send(message)
        await send({"type": "websocket.http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
