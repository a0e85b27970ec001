"""``/ooblex/gateway/<path>``: the cluster gateway's MJPEG, WHIP and WHEP endpoints through Jupyter.

For browsers that can reach only the Jupyter origin. Responses are streamed chunk by chunk
(an endless MJPEG stream flows through without buffering); ``Location`` headers of WHIP/WHEP
sessions are rewritten to stay on this proxy. The browser's Jupyter credentials (cookie, token)
are never forwarded; the control token derived from the server's ``OOBLEX_SECRET`` is sent instead
(when the cluster package is installed: it defines the derivation).

Only the gateway paths in ``ALLOWED`` are forwarded, and the check is made on the path the gateway
will see: the raw request path is split into segments and each is percent-decoded (and decoded
again, so double encoding hides nothing); a segment that is or hides ``.`` or ``..``, a slash or
backslash (``%2f``, ``%5c``), a control character, or is empty, is refused with 400, and the
upstream URL is rebuilt from the decoded segments, each quoted again. So neither this proxy, nor
httpx, nor the gateway can resolve ``api/v1/%2e%2e/%2e%2e/metrics`` into ``/metrics``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

import httpx
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ooblex import routes

from .cluster import Settings

#: Gateway paths the proxy forwards; anything else is 404 (the proxy is not an open relay).
#: One ending in "/" needs at least one segment more; the others must match exactly.
ALLOWED = tuple(p.lstrip("/") for p in (routes.prefix(routes.MJPEG), routes.prefix(routes.WHIP),
                                         routes.prefix(routes.WHEP), routes.API + "/", routes.HEALTH))
#: Rounds of percent-decoding a path segment may need before it stops changing (more: refused).
MAX_DECODES = 3
#: Characters a rebuilt path segment keeps as they are (RFC 3986 pchar, less "%").
SAFE = "!$&'()*+,;=:@"
#: Headers never copied across: hop-by-hop ones, and the caller's Jupyter credentials.
SKIP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "content-length", "host", "cookie", "authorization", "x-xsrftoken",
        "set-cookie"}
TIMEOUT = httpx.Timeout(10.0, read=60.0)


class GatewayProxyHandler(APIHandler):
    def initialize(self, settings: Settings) -> None:
        self.ob_settings = settings

    @web.authenticated
    async def get(self, path: str) -> None:
        await self._proxy()

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._proxy()

    @web.authenticated
    async def patch(self, path: str) -> None:
        await self._proxy()

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self._proxy()

    async def _proxy(self) -> None:
        if not self.ob_settings.gateway:
            raise web.HTTPError(503, "gateway not configured: set OOBLEX_GATEWAY for the Jupyter server")
        path = upstream_path(self._raw_path())
        url = f"{self.ob_settings.gateway}{path}" + (f"?{self.request.query}" if self.request.query else "")
        headers = {k: v for k, v in self.request.headers.get_all() if k.lower() not in SKIP}
        token = self.ob_settings.control_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            request = client.build_request(self.request.method or "GET", url, headers=headers,
                                           content=self.request.body or None)
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise web.HTTPError(502, f"gateway {self.ob_settings.gateway} unreachable: {exc}") from None
            try:
                await self._relay(response)
            finally:
                await response.aclose()

    def _raw_path(self) -> str:
        """The request's path after ``ooblex/gateway/``, still percent-encoded as the client sent it
        (the handler's ``path`` argument has been decoded once already)."""
        prefix = url_path_join(self.base_url, "ooblex", "gateway") + "/"
        raw = self.request.path
        if not raw.startswith(prefix):
            raise web.HTTPError(404, "not a gateway proxy path")
        return raw[len(prefix):]

    async def _relay(self, response: httpx.Response) -> None:
        self.set_status(response.status_code, reason=response.reason_phrase or None)
        self.clear_header("Content-Type")
        for key, value in response.headers.multi_items():
            if key.lower() not in SKIP:
                self.add_header(key, self._local(value) if key.lower() == "location" else value)
        try:
            async for chunk in response.aiter_raw():
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            return  # the viewer went away; leaving the context closes the upstream too
        except httpx.HTTPError as exc:
            self.log.warning("ooblex gateway proxy: upstream %s broke off: %s", response.url, exc)
        if not self._finished:
            self.finish()

    def _local(self, location: str) -> str:
        """A gateway Location (absolute path or URL on the gateway) as a URL on this proxy."""
        gateway = self.ob_settings.gateway
        if location.startswith(gateway):
            location = location[len(gateway):]
        if not location.startswith("/"):
            return location
        return url_path_join(self.base_url, "ooblex", "gateway", location.lstrip("/"))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.clear_header("Content-Type")
        self.set_header("Content-Type", "application/json")
        super().write_error(status_code, **kwargs)


def upstream_path(raw: str) -> str:
    """The gateway path for ``raw`` (the encoded part after ``ooblex/gateway/``), rebuilt from its
    decoded segments: 400 for a segment that is or hides a dot segment, a slash or backslash, a
    control character, or is empty; 404 for a path outside ``ALLOWED``."""
    segments = [_segment(s) for s in raw.split("/")]
    path = "/".join(segments)
    if not any(path.startswith(p) and len(path) > len(p) if p.endswith("/") else path == p for p in ALLOWED):
        raise web.HTTPError(404, f"the gateway proxy forwards only {', '.join(ALLOWED)}; not {path!r}")
    return "/" + "/".join(quote(s, safe=SAFE) for s in segments)


def _segment(raw: str) -> str:
    """One path segment decoded once (what the gateway will see), after checking it and each deeper decoding."""
    forms = [raw]
    try:
        for _ in range(MAX_DECODES + 1):
            forms.append(unquote(forms[-1], errors="strict"))
    except UnicodeDecodeError:
        raise web.HTTPError(400, f"the gateway proxy refuses paths that do not decode as UTF-8; not {raw!r}") from None
    if forms[-1] != forms[-2]:
        raise web.HTTPError(400, f"the gateway proxy refuses paths encoded more than {MAX_DECODES} times over")
    for form in forms:
        if form in ("", ".", "..") or "/" in form or "\\" in form or any(ord(c) < 32 or ord(c) == 127 for c in form):
            raise web.HTTPError(400, "the gateway proxy refuses empty and dot segments, encoded slashes and "
                                     f"backslashes, and control characters in paths; not {raw!r}")
    return forms[1]
