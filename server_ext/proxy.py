"""``/ooblex/gateway/<path>``: the cluster gateway's MJPEG, WHIP and WHEP endpoints through Jupyter.

For browsers that can reach only the Jupyter origin. Responses are streamed chunk by chunk
(an endless MJPEG stream flows through without buffering); ``Location`` headers of WHIP/WHEP
sessions are rewritten to stay on this proxy. The browser's Jupyter credentials (cookie, token)
are never forwarded; the control token derived from the server's ``OOBLEX_SECRET`` is sent instead
(when the cluster package is installed: it defines the derivation).
"""

from __future__ import annotations

from typing import Any

import httpx
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.iostream import StreamClosedError

from ooblex import routes

from .cluster import Settings

#: Gateway paths the proxy forwards; anything else is 404 (the proxy is not an open relay).
ALLOWED = tuple(p.lstrip("/") for p in (routes.prefix(routes.MJPEG), routes.prefix(routes.WHIP),
                                         routes.prefix(routes.WHEP), routes.API + "/", routes.HEALTH))
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
        await self._proxy(path)

    @web.authenticated
    async def post(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def patch(self, path: str) -> None:
        await self._proxy(path)

    @web.authenticated
    async def delete(self, path: str) -> None:
        await self._proxy(path)

    async def _proxy(self, path: str) -> None:
        if not self.ob_settings.gateway:
            raise web.HTTPError(503, "gateway not configured: set OOBLEX_GATEWAY for the Jupyter server")
        if not path.startswith(ALLOWED):
            raise web.HTTPError(404, f"the gateway proxy forwards only {', '.join(ALLOWED)}; not {path!r}")
        url = f"{self.ob_settings.gateway}/{path}" + (f"?{self.request.query}" if self.request.query else "")
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
