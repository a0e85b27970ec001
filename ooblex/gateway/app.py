"""The gateway's FastAPI application: ``create_app`` wires the engine, routes and error mapping.

    from ooblex.gateway import create_app
    app = create_app(threads=[my_thread])          # embedded engine (memory broker)
    app = create_app(broker="redis://host:6379")   # in front of a cluster of workers

Errors are JSON ``{"detail": "..."}`` with a 4xx status that says what was wrong.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..engine import Engine, Stream, UnknownThread
from ..webrtc import allow_loopback
from . import frames, jobs, metrics, mjpeg, whep, whip
from .control import require_control
from .sessions import TooManySessions, UnknownSession
from .settings import Settings
from .state import Gateway, UnknownStream, gateway

STATIC = Path(__file__).parent / "static"


def create_app(engine: Engine | None = None, *, broker: str = "memory://", threads: Iterable[Any] = (),
               settings: Settings | None = None, embedded_worker: bool | None = None,
               store: str | None = None, public_url: str | None = None) -> FastAPI:
    """A gateway app. Pass a started ``engine`` to share one, or let the app own and run its own.

    With a network broker (``redis://``, ``amqp://``) the app's engine is a ``ClusterEngine``: its
    threads follow the cluster's registry (``store``: the Redis store, default the broker or
    ``$OOBLEX_STORE``), and with ``public_url`` it announces itself so ``Deployment.urls`` finds it.
    """
    settings = settings or Settings.from_env()
    owns_engine = engine is None
    if engine is None and broker.split(":", 1)[0].lower() in ("redis", "rediss", "amqp", "amqps") \
            and not embedded_worker:
        from ..cluster.engine import ClusterEngine

        engine = ClusterEngine(broker, store=store, threads=threads, public_url=public_url)
    elif engine is None:
        engine = Engine(broker, threads, embedded_worker=embedded_worker)
    else:
        for t in threads:
            engine.add_thread(t)
    if settings.loopback_candidates:
        allow_loopback(True)
    gw = Gateway(engine, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owns_engine:
            await engine.start()
        try:
            yield
        finally:
            await gw.sessions.close_all()
            if owns_engine:
                await engine.close()

    app = FastAPI(title="Ooblex gateway", version=__version__, lifespan=lifespan,
                  description="Live video through tensor threads: WebRTC (WHIP/WHEP), MJPEG, HTTP and WebSocket.")
    app.state.gateway = gw
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Location", "Link", "X-Ooblex-Stream"])
    for module in (whip, whep, mjpeg, frames, metrics, jobs):
        app.include_router(module.router)
    app.include_router(_api_router())
    _error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _api_router() -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/api/v1/threads")
    async def threads(request: Request) -> list[dict[str, Any]]:
        """Tensor threads this gateway serves, with their parameters (name, type, default, bounds)."""
        return [t.describe() for t in gateway(request).engine.threads.values()]

    @router.get("/api/v1/streams", dependencies=[Depends(require_control)])
    async def streams(request: Request) -> list[dict[str, Any]]:
        """Open streams: thread, params, fps, per-stage latency p50/p95/p99 (ms), counters, viewer URLs."""
        return [_stream_info(s) for s in gateway(request).engine.streams.values()]

    @router.get("/api/v1/streams/{stream_id}")
    async def stream(stream_id: str, request: Request) -> dict[str, Any]:
        """One open stream (404 if it is not open)."""
        return _stream_info(gateway(request).stream(stream_id))

    @router.patch("/api/v1/streams/{stream_id}")
    async def update_stream(stream_id: str, request: Request) -> dict[str, Any]:
        """Change a live stream's thread parameters: body ``{"params": {"name": value}}``."""
        s = gateway(request).stream(stream_id)
        try:
            body = await request.json()
        except ValueError:
            raise ValueError("body must be JSON like {\"params\": {\"name\": value}}") from None
        if not isinstance(body, dict) or not isinstance(body.get("params"), dict):
            raise ValueError('body must be JSON like {"params": {"name": value}}')
        return {"params": s.set_params(**body["params"])}

    @router.get("/api/v1/sessions", dependencies=[Depends(require_control)])
    async def sessions(request: Request) -> list[dict[str, Any]]:
        """Open WebRTC sessions (WHIP ingest and WHEP viewers)."""
        return [s.describe() for s in gateway(request).sessions.items.values()]

    @router.get("/healthz")
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness: ok while the app serves; counts of threads, streams and sessions."""
        gw = gateway(request)
        return {"status": "ok", "version": __version__, "broker": gw.engine.broker.url,
                "threads": len(gw.engine.threads), "streams": len(gw.engine.streams),
                "sessions": len(gw.sessions.items)}

    return router


def _stream_info(s: Stream) -> dict[str, Any]:
    """``Stream.describe()`` plus the newest result/error and where to watch the stream."""
    latest = s.latest
    result = json.loads(frames.to_json(latest.result)) if latest and latest.result is not None else None
    return {**s.describe(), "result": result, "error": latest.error if latest else None,
            "mjpeg": f"/mjpeg/{s.id}", "whep": f"/whep/{s.id}"}


def _error_handlers(app: FastAPI) -> None:
    def handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(request: Request, exc: Exception) -> JSONResponse:
            return JSONResponse({"detail": str(exc)}, status_code=status)
        return handle

    app.add_exception_handler(UnknownThread, handler(404))
    app.add_exception_handler(UnknownStream, handler(404))
    app.add_exception_handler(UnknownSession, handler(404))
    app.add_exception_handler(TooManySessions, handler(429))
    app.add_exception_handler(OverflowError, handler(429))
    app.add_exception_handler(ValueError, handler(400))
