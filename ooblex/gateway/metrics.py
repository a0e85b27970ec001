"""``GET /metrics``: this gateway's Prometheus metrics (``ooblex.metrics``) plus its state read at each scrape.

Frames, drops, errors and stage latencies are counted as they happen (``Gateway.metrics``); streams,
sessions, jobs and the capacity governor's state are read when Prometheus asks (``GatewayCollector``).
Every series carries ``gateway`` (the instance id), none a stream id unless ``metrics_stream_labels``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .. import routes
from ..webrtc.protection import protection_stats
from .auth import require_control
from .state import Gateway, gateway

router = APIRouter()


@router.get(routes.METRICS, response_class=PlainTextResponse, tags=["status"], dependencies=[Depends(require_control)])
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text format, or OpenMetrics when asked). With a secret set, it needs a control
    token: Prometheus sends one with ``authorization: {credentials: <token>}``."""
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encode(gateway(request).metrics.registry), media_type=content_type)


def register(gw: Gateway) -> None:
    """Add ``gw``'s scrape-time state to its registry."""
    gw.metrics.registry.register(GatewayCollector(gw))


class GatewayCollector(Collector):
    """Streams, sessions, jobs and capacity of one gateway, as they are at the scrape."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    def collect(self) -> Iterator[Metric]:
        gw, g = self.gw, self.gw.governor
        me = [gw.instance]

        def gauge(name: str, help_: str, value: float) -> Metric:
            return _one(GaugeMetricFamily(name, help_, labels=["gateway"]), me, value)

        streams = GaugeMetricFamily("ooblex_streams", "Open streams per thread.", labels=["gateway", "thread"])
        per_thread = Counter(s.thread.name for s in list(gw.engine.streams.values()))
        for thread in sorted(set(gw.engine.threads) | set(per_thread)):
            streams.add_metric([*me, thread], per_thread[thread])
        yield streams
        sessions = GaugeMetricFamily("ooblex_sessions", "Open WebRTC sessions.", labels=["gateway", "kind"])
        for kind in ("whip", "whep"):
            sessions.add_metric([*me, kind], gw.sessions.count(kind))
        yield sessions
        yield _fec(gw, me)
        yield _one(CounterMetricFamily("ooblex_sessions_rejected", "WebRTC sessions refused at the limit.",
                                       labels=["gateway"]), me, gw.sessions.rejected)
        yield _one(CounterMetricFamily("ooblex_sessions_evicted", "Unconnected WebRTC sessions closed to make room "
                                       "for another client.", labels=["gateway"]), me, gw.sessions.evicted)
        jobs = GaugeMetricFamily("ooblex_jobs", "Jobs by state (finished ones until pruned).",
                                 labels=["gateway", "state"])
        states = Counter(j.state for j in list(gw.jobs.values()))
        for state in ("running", "done", "failed", "cancelled"):
            jobs.add_metric([*me, state], states[state])
        yield jobs
        yield gauge("ooblex_gateway_overloaded", "1 while past a load threshold (streams degraded, new work 503).",
                    float(g.overloaded))
        load = GaugeMetricFamily("ooblex_gateway_load", "Measured load: event loop busy share, process CPU share "
                                 "of usable cores, event loop lag (ms).", labels=["gateway", "measure"])
        for measure, value in g.load.as_dict().items():
            load.add_metric([*me, measure], value)
        yield load
        yield gauge("ooblex_gateway_fps_cap", "Frame-rate cap of every stream while overloaded (0: none).", g.fps_cap)
        yield gauge("ooblex_gateway_scale", "Resolution scale of every stream while overloaded.", g.scale)
        yield _one(CounterMetricFamily("ooblex_gateway_refused", "Requests refused with 503 at capacity.",
                                       labels=["gateway"]), me, g.refused)
        yield _one(CounterMetricFamily("ooblex_gateway_skipped_frames", "Input frames skipped under the "
                                       "frame-rate cap.", labels=["gateway"]), me, g.skipped)
        events = CounterMetricFamily("ooblex_gateway_events", "Streams and viewers started, by kind.",
                                     labels=["gateway", "kind"])
        for kind, n in sorted(gw.counters.items()):
            events.add_metric([*me, kind], n)
        yield events
        poisoned = gw.engine.broker.poisoned.count
        yield _one(CounterMetricFamily("ooblex_broker_poisoned", "Broker messages dropped because they could "
                                       "not be decoded or handled.", labels=["gateway"]), me, poisoned)


def _fec(gw: Gateway, me: list[str]) -> Metric:
    """Forward error correction on the open sessions: whether parity goes out, and what it rebuilt."""
    fec = GaugeMetricFamily("ooblex_fec", "Forward error correction on the open WebRTC sessions: parity packets "
                            "sent, packets rebuilt from peers' parity, malformed packets dropped, NACKs sent twice "
                            "for loss on the way back, NACKs for frames that stopped arriving (tail probes), "
                            "highest loss rate a peer reports.",
                            labels=["gateway", "measure"])
    stats = [protection_stats(s.pc) for s in list(gw.sessions.items.values())]
    for measure in ("parity_sent", "rebuilt", "malformed", "nack_copies", "tail_probes"):
        fec.add_metric([*me, measure], sum(s[measure] for s in stats))
    fec.add_metric([*me, "peer_loss"], max((s["peer_loss"] for s in stats), default=0.0))
    return fec


def _one(family: GaugeMetricFamily | CounterMetricFamily, labels: list[str], value: float) -> Metric:
    family.add_metric(labels, value)
    return family
