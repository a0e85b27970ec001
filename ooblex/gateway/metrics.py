"""``GET /metrics``: Prometheus text exposition of streams, sessions and gateway counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from .. import routes
from .auth import require_control
from .state import Gateway, gateway

router = APIRouter()
QUANTILES = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}


@router.get(routes.METRICS, response_class=PlainTextResponse, tags=["status"], dependencies=[Depends(require_control)])
async def metrics(request: Request) -> str:
    """Prometheus metrics (text format 0.0.4). With a secret set, it needs a control token (its labels
    name every stream): Prometheus sends one with ``authorization: {credentials: <token>}``."""
    return render(gateway(request))


def render(gw: Gateway) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, Any], float]]) -> None:
        lines.append(f"# HELP {name} {help_}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(labels)} {value}")

    streams = [(s, s.describe()) for s in gw.engine.streams.values()]
    metric("ooblex_streams", "gauge", "Open streams.", [({}, len(streams))])
    metric("ooblex_sessions", "gauge", "Open WebRTC sessions.",
           [({"kind": k}, gw.sessions.count(k)) for k in ("whip", "whep")])
    metric("ooblex_sessions_rejected_total", "counter", "WebRTC sessions refused at the limit.",
           [({}, gw.sessions.rejected)])
    metric("ooblex_sessions_evicted_total", "counter", "Unconnected WebRTC sessions closed to make room for "
           "another client.", [({}, gw.sessions.evicted)])
    g = gw.governor
    metric("ooblex_gateway_load", "gauge", "Measured load: event loop busy share, process CPU share of usable "
           "cores, event loop lag (ms).", [({"measure": k}, v) for k, v in g.load.as_dict().items()])
    metric("ooblex_gateway_fps_cap", "gauge", "Frame-rate cap of every stream while overloaded (0: none).",
           [({}, g.fps_cap)])
    metric("ooblex_gateway_scale", "gauge", "Resolution scale of every stream while overloaded.", [({}, g.scale)])
    metric("ooblex_gateway_refused_total", "counter", "Requests refused with 503 at capacity.", [({}, g.refused)])
    metric("ooblex_gateway_skipped_frames_total", "counter", "Input frames skipped under the frame-rate cap.",
           [({}, g.skipped)])
    metric("ooblex_gateway_events_total", "counter", "Gateway requests by kind.",
           [({"kind": k}, v) for k, v in sorted(gw.counters.items())])
    metric("ooblex_stream_frames_total", "counter", "Frames per stream by outcome.",
           [({"stream": s.id, "thread": s.thread.name, "outcome": k}, d[k])
            for s, d in streams for k in ("received", "processed", "dropped", "stale", "errors")])
    metric("ooblex_stream_fps", "gauge", "Processed frames per second.",
           [({"stream": s.id, "thread": s.thread.name}, d["fps"]) for s, d in streams])
    metric("ooblex_stream_latency_ms", "gauge", "Per-stage latency percentiles over recent frames.",
           [({"stream": s.id, "thread": s.thread.name, "stage": stage, "quantile": QUANTILES.get(q, q)}, v)
            for s, d in streams for stage, ps in d["latency_ms"].items() for q, v in ps.items()])
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in labels.items())
    return "{" + body + "}"
