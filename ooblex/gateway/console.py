"""``/console``: the operations page, and the JSON it reads (the registry, workers, per-second stream history).

The page is static (``static/console.*``) and holds no data; everything comes from the endpoints
below, which need a ``control`` token when a secret is set (the page asks for one and keeps it in
the tab's session storage, never in a URL). Deploy, rollback and undeploy go through the
cluster's registry (``ooblex.cluster.registry``: signed states), uploads through ``uploads.py``.
A gateway without a cluster (the embedded ``memory://`` engine) shows its streams only.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse

from .. import routes
from ..cluster import overview
from ..cluster.registry import Registry
from ..errors import BadRequest, Conflict
from . import uploads
from .auth import require_control, stream_for
from .bodies import read_json
from .peers import FORWARDED, ask_peers
from .state import gateway

router = APIRouter(tags=["console"])
STATIC = Path(__file__).parent / "static"
#: The page runs only its own scripts and talks only to this gateway; nobody may frame it.
PAGE_HEADERS = {"Cache-Control": "no-cache", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                           "style-src 'self'; frame-ancestors 'none'; form-action 'none'"}
ARTIFACT_BODY = {"required": True, "content": {t: {"schema": {"type": "string", "format": "binary"}}
                                               for t in uploads.ARTIFACT_TYPES}}
ONNX_BODY = {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["model", "name"],
    "properties": {"model": {"type": "string", "format": "binary"}, "name": {"type": "string"},
                   "layout": {"type": "string", "enum": ["nchw", "nhwc"]}, "width": {"type": "integer"},
                   "height": {"type": "integer"}, "scale": {"type": "number"},
                   "mean": {"type": "string", "description": "three numbers, R G B"},
                   "std": {"type": "string", "description": "three numbers, R G B"},
                   "output_scale": {"type": "number"}, "description": {"type": "string"},
                   "license": {"type": "string"}, "keep_versions": {"type": "boolean"}}}}}}
ACTIVATE_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["version"], "properties": {"version": {"type": "integer"}}}}}}


@router.get(routes.CONSOLE, include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(STATIC / "console.html", headers=PAGE_HEADERS)


def registry_of(request: Request) -> Registry | None:
    """The cluster registry behind this gateway's engine (a ``ClusterEngine``), or None."""
    return getattr(gateway(request).engine, "registry", None)


def need_registry(request: Request) -> Registry:
    reg = registry_of(request)
    if reg is None:
        raise Conflict("this gateway runs its own embedded engine, not a cluster: deploys need one "
                       "(ooblex up, or ooblex gateway --broker redis://...)")
    return reg


@router.get(routes.CLUSTER, dependencies=[Depends(require_control)])
async def cluster(request: Request) -> dict[str, Any]:
    """The cluster behind this gateway: ``deployments`` (each thread's stored versions, newest first, with
    when and by whom each was deployed, requirements, licence, whether its signature verifies, and which
    workers serve or refuse it, with the reason and next retry), ``workers`` (host, threads served,
    in-flight frames, fps, heartbeat age, CPU/GPU, Ooblex version) and live ``gateways``.
    ``"cluster": false`` on a gateway with an embedded engine."""
    reg = registry_of(request)
    if reg is None:
        return {"cluster": False, "deployments": [], "workers": [], "gateways": [], "secret": False}
    return {"cluster": True, **await asyncio.to_thread(overview.cluster, reg)}


@router.post(routes.DEPLOYMENTS, status_code=201, dependencies=[Depends(require_control)],
             openapi_extra={"requestBody": ARTIFACT_BODY})
async def deploy_artifact(request: Request, keep_versions: bool = False) -> dict[str, Any]:
    """Deploy an artifact file (``ob.deploy(thread, export="x.ooblex")``, ``ooblex deploy ... --export``) as
    the thread's new active version. Body: the file, ``Content-Type: application/vnd.ooblex.artifact+zip``.
    It must be signed with the cluster secret (403 otherwise) and be an intact artifact (400) within
    ``max_upload_bytes`` (413); it is checked completely before anything is stored."""
    return _summary(await uploads.publish_artifact(request, need_registry(request), keep_versions))


@router.post(routes.ONNX_DEPLOYMENTS, status_code=201, dependencies=[Depends(require_control)],
             openapi_extra={"requestBody": ONNX_BODY})
async def deploy_onnx(request: Request) -> dict[str, Any]:
    """Deploy an ONNX model: a ``multipart/form-data`` form with the file ``model`` and the transform
    (``name``; ``layout`` nchw/nhwc; ``width``/``height`` the model's input size, default its own fixed one;
    ``scale``, ``mean``, ``std``, ``output_scale``; ``description``, ``license``, ``keep_versions``). The
    gateway checks the model, wraps it into a tensor thread and signs the deploy with its own secret."""
    return _summary(await uploads.publish_onnx(request, need_registry(request)))


@router.post(routes.ACTIVATE, dependencies=[Depends(require_control)],
             openapi_extra={"requestBody": ACTIVATE_BODY})
async def activate(name: str, request: Request) -> dict[str, Any]:
    """Make a stored version the active one (roll back or forward): ``application/json`` body ``{"version": 2}``."""
    reg = need_registry(request)
    body = await read_json(request, gateway(request).settings.max_json_bytes, '{"version": 2}')
    version = body.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadRequest('body must be like {"version": 2}: a version number of the thread')
    await asyncio.to_thread(reg.activate, name, version)
    return {"name": name, "active": version}


@router.delete(routes.DEPLOYMENT, dependencies=[Depends(require_control)])
async def undeploy(name: str, request: Request) -> dict[str, Any]:
    """Undeploy every version of ``name``: workers stop serving it within a poll (404 if it is not deployed)."""
    await asyncio.to_thread(need_registry(request).remove, name)
    return {"name": name, "undeployed": True}


@router.get(routes.HISTORY, dependencies=[Depends(require_control)])
async def history(request: Request, response: Response,
                  since: float = Query(0.0, ge=0, allow_inf_nan=False)) -> dict[str, Any]:
    """Per-second history of every open stream (the last ``history_s`` seconds), newer than ``since`` (Unix
    seconds), in columns: ``{"streams": {id: {"thread", "t": [...], "fps_in", "fps", "dropped", "stale",
    "errors", "queue", "compute", "return", "engine", "total" (p50 ms), "total_p95"}}}``. In a cluster, every
    live gateway's streams (``X-Ooblex-Unreachable`` names gateways that did not answer)."""
    gw = gateway(request)
    streams = gw.history.since(since)
    directory = getattr(gw.engine, "directory", None)
    if directory is not None and FORWARDED not in request.headers:  # the other gateways' streams too
        answers, missing = await ask_peers(request, directory, routes.HISTORY, params={"since": repr(since)})
        for a in answers:
            streams.update(a.get("streams", {}) if isinstance(a, dict) else {})
        if missing:
            response.headers["X-Ooblex-Unreachable"] = ",".join(missing)
    return {"seconds": gw.settings.history_s, "streams": streams}


@router.get(routes.STREAM_HISTORY)
async def stream_history(stream_id: str, request: Request,
                         since: float = Query(0.0, ge=0, allow_inf_nan=False)) -> dict[str, Any]:
    """One stream's per-second history (as ``/api/v1/history``; a ``view`` token for it with a secret set)."""
    s = stream_for(request, stream_id)
    gw = gateway(request)
    return {"seconds": gw.settings.history_s, "stream": gw.history.since(since, [s.id]).get(s.id)}


def _summary(manifest: dict[str, Any]) -> dict[str, Any]:
    return {k: manifest.get(k) for k in ("name", "version", "code", "requirements", "weights", "license",
                                         "deployed_by", "python", "created")}
