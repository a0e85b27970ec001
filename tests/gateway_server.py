"""Run a real gateway (uvicorn on a free 127.0.0.1 port, in a background thread) for a test.

It is served as ``ooblex demo`` serves it (``ooblex.gateway.server``: header and body deadlines).

    with running_gateway(threads=[my_thread]) as gw:
        httpx.get(gw.url + "/healthz")
        gw.app.state.gateway.sessions   # the live state, for assertions

The server and its engine are shut down when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI

from ooblex.cluster.servers import free_port
from ooblex.gateway import Settings, create_app
from ooblex.gateway.server import config


@dataclass
class RunningGateway:
    url: str
    port: int
    app: FastAPI

    @property
    def state(self) -> Any:
        return self.app.state.gateway


@contextlib.contextmanager
def running_gateway(threads: Any = (), settings: Settings | None = None, port: int | None = None,
                    host: str = "127.0.0.1", **kwargs: Any) -> Iterator[RunningGateway]:
    """``host``: the address to listen on (``"::"`` for IPv6 clients; the URL then names ``[::1]``)."""
    settings = settings or Settings(loopback_candidates=True)
    app = create_app(threads=threads, settings=settings, **kwargs)
    port = port or free_port()
    # config() sets log_config=None: uvicorn's dictConfig would close every existing handler, including
    # ones (absl's, once TensorFlow is imported) that hold pytest's captured streams.
    server = uvicorn.Server(config(app, host, port))
    thread = threading.Thread(target=server.run, name="test-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60  # only catches a hang: demo models load slowly on a busy machine
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test gateway did not start")
        time.sleep(0.02)
    try:
        yield RunningGateway(f"http://{'[::1]' if ':' in host else '127.0.0.1'}:{port}", port, app)
    finally:
        server.should_exit = True
        thread.join(15)
