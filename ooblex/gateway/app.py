"""The gateway's FastAPI application: ``create_app`` wires the engine, routes and error mapping.

    from ooblex.gateway import create_app
    app = create_app(threads=[my_thread])          # embedded engine (memory broker)
    app = create_app(broker="redis://host:6379")   # in front of a cluster of workers

Errors are JSON ``{"detail": "..."}`` with a 4xx status that says what was wrong: every route
answers from one table, ``ooblex.errors.status``. Only our own errors (``OoblexError``) show their
text; any other exception gets a generic answer and a log line. Who may do what: ``auth.py``; who
may reach the gateway at all, and the headers that keep its pages out of other sites: ``guard.py``;
docs/security.md has the whole picture.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.requests import ClientDisconnect
from swagger_ui_bundle import swagger_ui_path

from .. import __version__, routes
from ..broker import kind
from ..broker.base import redact
from ..engine import Engine, Stream
from ..errors import BadRequest, OoblexError, status
from ..frame import result_json
from ..supervision import cancel, supervise
from ..webrtc import internals
from . import console, frames, ice, jobs, login, metrics, mjpeg, whep, whip
from .admission import Admission
from .auth import require_control, stream_for, stream_to_change
from .bodies import read_json
from .guard import Guard, SecurityHeaders, local_hosts
from .peer import EXPOSED
from .peers import FORWARDED, PeerRouter, cluster_streams
from .settings import Settings
from .state import Gateway, gateway

log = logging.getLogger("ooblex.gateway")
STATIC = Path(__file__).parent / "static"
PARAMS_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["params"], "properties": {"params": {"type": "object"}}}}}}


def create_app(engine: Engine | None = None, *, broker: str = "memory://", threads: Iterable[Any] = (),
               settings: Settings | None = None, embedded_worker: bool | None = None,
               store: str | None = None, public_url: str | None = None, peer_url: str | None = None) -> FastAPI:
    """A gateway app. Pass a started ``engine`` to share one, or let the app own and run its own.

    With a network broker (``redis://``, ``amqp://``) the app's engine is a ``ClusterEngine``: its
    threads follow the cluster's registry (``store``: the Redis store, default the broker or
    ``$OOBLEX_STORE``), and with ``public_url`` it announces itself so ``Deployment.urls`` finds it.
    Several such gateways form one service (``peers.py``): each forwards requests about streams
    another holds to that one's ``peer_url`` (default ``public_url``; set it when clients reach the
    gateways through a load balancer) and lists every gateway's streams.
    """
    settings = settings or Settings.from_env()
    owns_engine = engine is None
    if engine is None and kind(broker) != "memory" \
            and not embedded_worker:
        from ..cluster.engine import ClusterEngine

        engine = ClusterEngine(broker, store=store, threads=threads, public_url=public_url, peer_url=peer_url,
                               max_streams=settings.max_streams)
    elif engine is None:
        # lazy: a thread's model (and framework) loads for its first frame, never before the gateway is ready
        engine = Engine(broker, threads, embedded_worker=embedded_worker, max_streams=settings.max_streams, lazy=True)
    else:
        for t in threads:
            engine.add_thread(t)
    gw = Gateway(engine, settings)
    metrics.register(gw)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await internals.check()  # a missing aiortc/aioice internal stops the start, named (webrtc/internals.py)
        if owns_engine:
            await engine.start()
        meter = supervise(lambda: gw.meter.run(gw.governor.update), "gateway:load", logger=log)
        sampler = supervise(lambda: gw.history.run(engine.streams), "gateway:history", logger=log)
        try:
            yield
        finally:
            await cancel(meter, sampler)
            await gw.sessions.close_all()
            if owns_engine:
                await engine.close()

    app = FastAPI(title="Ooblex gateway", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  swagger_ui_oauth2_redirect_url=None,  # /docs is our own page, with local assets (no CDN)
                  description="Live video through tensor threads: WebRTC (WHIP/WHEP), MJPEG, HTTP and WebSocket.")
    app.state.gateway = gw
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=list(EXPOSED))
    public = urlsplit(public_url).hostname if public_url else None
    app.add_middleware(Admission, governor=gw.governor)
    directory = getattr(engine, "directory", None)
    if directory is not None:
        app.add_middleware(PeerRouter, directory=directory, secret=settings.secret)
    app.add_middleware(Guard, hosts=local_hosts(settings.host) | set(settings.allowed_hosts) | {public or ""},
                       origins=settings.cors_origins,
                       loopback_only=not settings.secret and not settings.allow_insecure_network)
    app.add_middleware(SecurityHeaders)
    for module in (whip, whep, ice, mjpeg, frames, metrics, jobs, console, login):
        app.include_router(module.router)
    app.include_router(_api_router())
    _error_handlers(app)
    app.mount("/static/swagger-ui", StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _api_router() -> APIRouter:
    router = APIRouter(tags=["status"])

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @router.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html", headers={"Cache-Control": "no-cache"})

    @router.get(routes.THREADS)
    async def threads(request: Request) -> list[dict[str, Any]]:
        """Tensor threads this gateway serves, with their parameters (name, type, default, bounds)."""
        return [t.describe() for t in gateway(request).engine.threads.values()]

    @router.get(routes.STREAMS, dependencies=[Depends(require_control)])
    async def streams(request: Request, response: Response) -> list[dict[str, Any]]:
        """Open streams: thread, params, fps, per-stage latency p50/p95/p99 (ms), counters, viewer URLs, and
        the ``gateway`` (instance) holding each. In a cluster, every live gateway's streams (any gateway
        forwards requests about a stream to its holder); ``X-Ooblex-Unreachable`` names gateways that did
        not answer."""
        gw = gateway(request)
        mine = [{**_stream_info(s, gw), "gateway": gw.instance} for s in gw.engine.streams.values()]
        directory = getattr(gw.engine, "directory", None)
        if directory is None or FORWARDED in request.headers:
            return mine
        theirs, missing = await cluster_streams(request, directory)
        if missing:
            response.headers["X-Ooblex-Unreachable"] = ",".join(missing)
        return mine + theirs

    @router.get(routes.STREAM)
    async def stream(stream_id: str, request: Request) -> dict[str, Any]:
        """One open stream (404 if it is not open; a ``view`` token with a secret set)."""
        return _stream_info(stream_for(request, stream_id), gateway(request))

    @router.patch(routes.STREAM, openapi_extra={"requestBody": PARAMS_BODY})
    async def update_stream(stream_id: str, request: Request) -> dict[str, Any]:
        """Change a live stream's thread parameters: ``application/json`` body ``{"params": {"name": value}}``
        (a ``publish`` token for the stream's thread with a secret set; 404 as for an unknown id without)."""
        s = stream_to_change(request, stream_id)
        example = '{"params": {"name": value}}'
        body = await read_json(request, gateway(request).settings.max_json_bytes, example)
        if not isinstance(body.get("params"), dict):
            raise BadRequest(f"body must be JSON like {example}")
        return {"params": s.set_params(**body["params"])}

    @router.get(routes.SESSIONS, dependencies=[Depends(require_control)])
    async def sessions(request: Request) -> list[dict[str, Any]]:
        """Open WebRTC sessions (WHIP ingest and WHEP viewers)."""
        return [s.describe() for s in gateway(request).sessions.items.values()]

    @router.get(routes.HEALTH)
    async def healthz(request: Request) -> dict[str, Any]:
        """Liveness: ok while the app serves; counts of threads, streams and sessions."""
        gw = gateway(request)
        return {"status": "ok", "version": __version__, "instance": gw.instance, "broker": redact(gw.engine.broker.url),
                "threads": len(gw.engine.threads), "streams": len(gw.engine.streams),
                "sessions": len(gw.sessions.items), "capacity": gw.governor.describe()}

    return router


def _stream_info(s: Stream, gw: Gateway) -> dict[str, Any]:
    """``Stream.describe()`` plus the newest result/error, its audio pass-through and where to watch it."""
    latest = s.latest
    result = json.loads(result_json(latest.result, lenient=True)) if latest and latest.result is not None else None
    audio = gw.audio.get(s.id)
    return {**s.describe(), "result": result, "error": latest.error if latest else None,
            "audio": audio.describe() if audio else None,
            "mjpeg": routes.path(routes.MJPEG, stream_id=s.id), "whep": routes.path(routes.WHEP, stream_id=s.id)}


def _error_handlers(app: FastAPI) -> None:
    """Our errors: their status (``ooblex.errors.status``) and text; 401s say which scheme to use. Any other
    exception: a generic answer (400 for a ``ValueError``, else 500) that echoes nothing, and a log line."""

    async def ours(request: Request, exc: Exception) -> JSONResponse:
        code = status(exc)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=code, headers=headers)

    async def theirs(request: Request, exc: Exception) -> JSONResponse:
        code = status(exc)
        log.log(logging.WARNING if code < 500 else logging.ERROR, "%s %s: unexpected %s", request.method,
                request.url.path, type(exc).__name__, exc_info=exc)
        if code < 500:
            return JSONResponse({"detail": "the request could not be processed"}, status_code=code)
        # uvicorn closes the connection after an unhandled error: say so, so that clients do not reuse it
        return JSONResponse({"detail": "internal error (logged by the gateway)"}, status_code=code,
                            headers={"Connection": "close"})

    async def gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=400)  # the client left (or was timed out) mid-body: nobody reads this

    app.add_exception_handler(OoblexError, ours)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(ValueError, theirs)
    app.add_exception_handler(Exception, theirs)
