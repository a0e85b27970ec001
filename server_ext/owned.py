"""The Jupyter server's own local cluster: started when a kernel calls ``ob.cluster()``, kept across kernel
restarts, shown by the JupyterLab panel, stopped with the server.

Kernels ask over a Unix socket in Jupyter's runtime folder (mode 0600 in a 0700 folder: only this
user can open it), whose path the server puts in its environment as ``OOBLEX_JUPYTER_SOCKET``;
kernels it starts inherit it. ``POST /cluster`` starts the cluster unless it runs (idempotent) and
answers its settings (``OOBLEX_BROKER``, ``OOBLEX_STORE``, ``OOBLEX_SECRET``, ``OOBLEX_GATEWAY``);
``DELETE /cluster`` stops it. While it runs, the extension's own settings point at it, so the
panel, the listings and the gateway proxy use it without ``OOBLEX_*`` set for the server.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_runtime_dir
from tornado import httpserver, netutil, web

from ooblex.cluster.current import SOCKET_ENV
from ooblex.cluster.local import LocalCluster

from .cluster import Settings


class OwnedCluster:
    """At most one local cluster, owned by this server; ``settings`` (shared with every handler) follow it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.configured = dataclasses.replace(settings)  # what the server was started with, restored on stop
        self.local: LocalCluster | None = None
        self._lock = asyncio.Lock()

    async def ensure(self, workers: int) -> dict[str, str]:
        async with self._lock:
            if self.local is None or not self.local.alive:
                self.local = await asyncio.to_thread(LocalCluster(workers=workers).start)
                atexit.register(self.local.stop)  # the server's cluster ends with the server
                env = self.env()
                self._point_at(env["OOBLEX_BROKER"], env["OOBLEX_STORE"], env["OOBLEX_SECRET"], env["OOBLEX_GATEWAY"])
            return self.env()

    def env(self) -> dict[str, str]:
        assert self.local is not None
        return {**self.local.env, "OOBLEX_GATEWAY": self.local.gateway or ""}

    async def stop(self) -> None:
        async with self._lock:
            if self.local is not None:
                await asyncio.to_thread(self.local.stop)
                self.local = None
            c = self.configured
            self._point_at(c.cluster, c.store, c.secret, c.gateway)

    def _point_at(self, cluster: str, store: str, secret: str, gateway: str) -> None:
        """The handlers hold this one ``Settings``: changing its fields moves them all."""
        s = self.settings
        s.cluster, s.store, s.secret, s.gateway = cluster, store, secret, gateway.rstrip("/")


class ClusterSocketHandler(web.RequestHandler):
    """``/cluster`` on the private socket: no Jupyter login (the socket's permissions are the check)."""

    def initialize(self, owned: OwnedCluster) -> None:
        self.owned = owned

    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
            workers = int(body.get("workers", 1))
        except (ValueError, TypeError, AttributeError):
            raise web.HTTPError(400, 'body must be JSON like {"workers": 1}') from None
        if not 1 <= workers <= 64:
            raise web.HTTPError(400, f"workers must be 1..64, got {workers}")
        try:
            env = await self.owned.ensure(workers)
        except Exception as exc:  # noqa: BLE001 - the kernel shows why
            self.set_status(503)
            self.finish({"detail": str(exc)})
            return
        self.finish({"env": env})

    async def delete(self) -> None:
        await self.owned.stop()
        self.finish({"stopped": True})

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        self.finish({"detail": getattr(exc, "log_message", None) or self._reason})


def serve(owned: OwnedCluster, log: Any) -> httpserver.HTTPServer:
    """Listen on the private socket and tell kernels where it is (``OOBLEX_JUPYTER_SOCKET``)."""
    runtime = Path(jupyter_runtime_dir())
    runtime.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = runtime / f"ooblex-{os.getpid()}.sock"
    server = httpserver.HTTPServer(web.Application([(r"/cluster", ClusterSocketHandler, {"owned": owned})]))
    server.add_socket(netutil.bind_unix_socket(str(path), mode=0o600))
    os.environ[SOCKET_ENV] = str(path)
    log.info("ooblex: kernels reach the server's cluster over %s", path)
    return server
