"""Deploys uploaded to the console: a signed artifact, or an ONNX model with its transform.

An upload asks the cluster's workers to run something, so both kinds are checked completely
before anything is stored, within ``Settings.max_upload_bytes``:

- an **artifact** (``ob.deploy(thread, export=...)``) must be signed with the cluster secret
  (``ooblex.cluster.bundle``): its signature and every member's hash are checked, and its code is
  never unpickled here; the parts are then published as a new version, signed by this gateway;
- an **ONNX model** is data, not code: it must parse as ONNX with one image-like input matching the
  form's layout, and hold all its data itself (``ooblex.adapters.onnx.self_contained``: no tensor
  anywhere in it may name external data, which onnxruntime would read from the worker's disk;
  workers check this again before they load it, from bytes); the gateway wraps it into a tensor thread of its own making
  (``ooblex.adapters.onnx.from_weight``) and publishes that, signed with its secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import socket
import time
from dataclasses import dataclass
from typing import IO, Any

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from ..cluster import bundle
from ..cluster.registry import CHUNK, Registry, check_name, describe
from ..errors import BadRequest, Unavailable, UnsupportedMediaType
from .bodies import limited, media_type, spool_body
from .state import client_of, gateway

ARTIFACT_TYPES = (bundle.MEDIA_TYPE, "application/zip", "application/octet-stream")
#: What workers need for an uploaded ONNX model.
ONNX_REQUIREMENTS = ["onnxruntime>=1.17"]
FORM_FIELDS = ("name", "layout", "width", "height", "scale", "mean", "std", "output_scale", "description",
               "license", "keep_versions")


def uploaded_by(request: Request, what: str) -> dict[str, Any]:
    """Where a console deploy came from (a control token names no person: the client address does)."""
    return {"via": what, "client": client_of(request), "gateway": socket.gethostname(), "at": round(time.time(), 3)}


async def publish_artifact(request: Request, registry: Registry, keep_versions: bool) -> dict[str, Any]:
    """``POST /api/v1/cluster/deployments``: verify the uploaded artifact, then publish it."""
    settings = gateway(request).settings
    ctype = media_type(request)
    if ctype not in ARTIFACT_TYPES:
        raise UnsupportedMediaType(f"expected an artifact file (Content-Type {bundle.MEDIA_TYPE}), got "
                                   f"{ctype or 'none'!r}; ONNX models go to /api/v1/cluster/deployments/onnx")
    body = await spool_body(request, settings.max_upload_bytes, "the artifact")
    try:
        return await asyncio.to_thread(_publish_bundle, body, registry, settings.max_upload_bytes, keep_versions,
                                       {"uploaded": uploaded_by(request, "console")})
    finally:
        body.close()


def _publish_bundle(body: IO[bytes], registry: Registry, limit: int, keep_versions: bool,
                    via: dict[str, Any]) -> dict[str, Any]:
    b = bundle.read(body, registry.secret, max_unpacked_bytes=limit)
    return b.publish(registry, keep_versions=keep_versions, via=via)


@dataclass
class OnnxForm:
    """The ONNX upload form: the thread's name and the transform between frames and the model."""

    name: str
    layout: str = "nchw"
    size: tuple[int, int] | None = None
    scale: float = 1 / 255
    mean: list[float] | None = None
    std: list[float] | None = None
    output_scale: float = 255.0
    description: str = ""
    license: str = ""
    keep_versions: bool = False

    @classmethod
    def parse(cls, fields: dict[str, str]) -> OnnxForm:
        unknown = sorted(set(fields) - set(FORM_FIELDS))
        if unknown:
            raise BadRequest(f"unknown form fields {unknown}; the form takes {list(FORM_FIELDS)} and the file 'model'")
        name = fields.get("name", "").strip()
        if not name:
            raise BadRequest("the form needs 'name': the tensor thread's name")
        check_name(name)
        layout = fields.get("layout", "nchw").strip().lower() or "nchw"
        if layout not in ("nchw", "nhwc"):
            raise BadRequest(f"layout must be nchw or nhwc, got {layout!r}")
        w, h = (_number(fields, k, int, None) for k in ("width", "height"))
        if (w is None) != (h is None) or (w is not None and not (0 < w <= 8192 and 0 < h <= 8192)):  # type: ignore[operator]
            raise BadRequest("width and height (the model's input size) go together, each from 1 to 8192")
        return cls(name, layout, (w, h) if w else None, _number(fields, "scale", float, 1 / 255),
                   _floats(fields, "mean"), _floats(fields, "std"), _number(fields, "output_scale", float, 255.0),
                   fields.get("description", "")[:500], fields.get("license", "")[:100],
                   fields.get("keep_versions", "").lower() in ("1", "true", "on", "yes"))


def _number(fields: dict[str, str], key: str, kind: type, default: Any) -> Any:
    raw = fields.get(key, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"{key} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{key} must be finite, got {raw!r}")
    return value


def _floats(fields: dict[str, str], key: str) -> list[float] | None:
    raw = fields.get(key, "").strip()
    if not raw:
        return None
    try:
        values = [float(v) for v in raw.replace(",", " ").split()]
    except ValueError:
        raise BadRequest(f"{key} must be three numbers (one per channel, R G B), got {raw!r}") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values) or key == "std" and 0 in values:
        raise BadRequest(f"{key} must be three finite numbers (R G B){', none zero' if key == 'std' else ''}, "
                         f"got {raw!r}")
    return values


async def publish_onnx(request: Request, registry: Registry) -> dict[str, Any]:
    """``POST /api/v1/cluster/deployments/onnx``: check the model and the form, wrap, publish."""
    settings = gateway(request).settings
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMediaType("expected a multipart/form-data form with the file 'model' and the transform's "
                                   f"fields {list(FORM_FIELDS)}")
    parser = MultiPartParser(request.headers, limited(request, settings.max_upload_bytes, "the upload"),
                             max_files=1, max_fields=len(FORM_FIELDS), max_part_size=settings.max_json_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(f"malformed form: {exc.message}") from None
    try:
        model = form.get("model")
        if not isinstance(model, UploadFile):
            raise BadRequest("the form needs the file 'model': an .onnx model")
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        spec = OnnxForm.parse(fields)
        via = uploaded_by(request, "console (ONNX upload)")
        return await asyncio.to_thread(_publish_onnx, model.file, spec, registry, via)
    finally:
        await form.close()


def _publish_onnx(file: IO[bytes], spec: OnnxForm, registry: Registry, via: dict[str, Any]) -> dict[str, Any]:
    from ..adapters.onnx import from_weight
    from ..cluster.deploy import pickle_thread

    registry.need_secret(f"deploy {spec.name!r}")
    file.seek(0)
    data = file.read()
    size = _check_onnx(data, spec)
    digest = hashlib.sha256(data).hexdigest()
    weight_name = f"{spec.name}-{digest[:12]}.onnx"  # unique: workers register weights by file name
    thread = from_weight(weight_name, name=spec.name, layout=spec.layout, size=size, scale=spec.scale,  # type: ignore[arg-type]
                         mean=spec.mean, std=spec.std, output_scale=spec.output_scale,
                         description=spec.description or f"ONNX model uploaded in the console ({weight_name})")
    registry.put_chunks(digest, len(data), (data[i:i + CHUNK] for i in range(0, len(data), CHUNK)))
    return registry.publish_code(spec.name, describe(thread), pickle_thread(thread), requirements=ONNX_REQUIREMENTS,
                                 weights=[{"name": weight_name, "sha256": digest, "size": len(data)}],
                                 keep_versions=spec.keep_versions,
                                 about={"license": spec.license, "deployed_by": via})


def _check_onnx(data: bytes, spec: OnnxForm) -> tuple[int, int] | None:
    """The model's input size for the transform: the form's, else the model's own fixed one.
    400 naming the problem if the bytes are not an ONNX model or its input does not fit the layout."""
    from ..adapters.onnx import parse, self_contained

    try:
        proto = self_contained(parse(data, "the uploaded file"), "the uploaded model")
    except ImportError:
        raise Unavailable("this gateway cannot check ONNX models: install the onnx package (ooblex[onnx])") from None
    graph = proto.graph
    if not graph.node or not graph.input:
        raise BadRequest("not an ONNX model: the file has no graph (empty or not ONNX)")
    known = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in known]
    if not inputs:
        raise BadRequest("the ONNX model has no input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    shown = "x".join("?" if d is None else str(d) for d in dims)
    if len(dims) != 4:
        raise BadRequest(f"the model's input {inputs[0].name!r} is {shown}: expected a 4-D image batch "
                         f"({spec.layout.upper()})")
    channels, (h, w) = (dims[1], dims[2:]) if spec.layout == "nchw" else (dims[3], dims[1:3])
    if channels not in (None, 3):
        raise BadRequest(f"the model's input {inputs[0].name!r} is {shown}: in {spec.layout.upper()} that is "
                         f"{channels} channels, frames have 3 (RGB); is the layout right?")
    if spec.size is not None:
        if (w, h) != (None, None) and (w not in (None, spec.size[0]) or h not in (None, spec.size[1])):
            raise BadRequest(f"the model's input is {shown} ({spec.layout.upper()}): width x height "
                             f"{spec.size[0]}x{spec.size[1]} does not fit it")
        return spec.size
    return (w, h) if w and h else None
