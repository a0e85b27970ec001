"""Prometheus metrics of one gateway or worker process, in a registry of its own (``prometheus_client``).

Frames are counted and their per-stage latencies observed into histograms labelled by instance
(``gateway`` or ``worker``) and ``thread``, never by stream id unless ``per_stream`` opts in: series
stay few and sum across a cluster (``histogram_quantile`` over ``sum by (le, thread, stage)``).
Each ``StreamStats`` reports through a ``Sink`` with its labels bound (``stats.py``). A worker serves
its registry over HTTP with ``serve`` (a gateway has its ``/metrics`` route: ``gateway/metrics.py``).
docs/observability.md lists every metric.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .errors import Forbidden, Unauthorized
from .tokens import authorize, bearer

#: Latency histogram buckets in seconds: sub-millisecond in-process hops up to the 500 ms staleness budget and past it.
LATENCY_BUCKETS = (.0005, .001, .0025, .005, .01, .015, .025, .035, .05, .075, .1, .15, .25, .5, 1.0, 2.5, 5.0)
#: ``StreamStats`` counter names -> why a frame was dropped (``ooblex_frames_dropped_total{reason}``).
DROP_REASONS = {"dropped": "superseded", "stale": "stale", "lost": "lost"}


class Sink:
    """Where one ``StreamStats`` reports: its counters' and stages' metric children, labels bound."""

    def __init__(self, counters: dict[str, Any], latency: Histogram, labels: tuple[str, ...],
                 owned: list[tuple[Any, tuple[str, ...]]] | None = None) -> None:
        self.counters = counters
        self._latency = latency
        self._labels = labels
        self._stages: dict[str, Any] = {}
        #: (metric, label values) of series this sink alone feeds, removed by ``close`` (per-stream labels)
        self.owned = owned
        self._closed = False

    def count(self, name: str, n: int = 1) -> None:
        counter = self.counters.get(name)
        if counter is not None:
            counter.inc(n)

    def latency(self, stage: str, ms: float) -> None:
        child = self._stages.get(stage)
        if child is None:
            if self._closed:
                return  # a closed stream's late frame must not bring its series back
            child = self._stages[stage] = self._latency.labels(*self._labels, stage)
            if self.owned is not None:
                self.owned.append((self._latency, (*self._labels, stage)))
        child.observe(ms / 1e3)

    def close(self) -> None:
        """Drop the series only this sink fed (a closed stream's), so their number stays bounded."""
        self._closed = True
        for metric, labels in self.owned or ():
            metric.remove(*labels)
        if self.owned is not None:
            self.owned.clear()


class Metrics:
    """The metric families of one process; ``instance`` labels every series (a gateway or a worker id)."""

    def __init__(self, instance: str, *, per_stream: bool = False, registry: CollectorRegistry | None = None) -> None:
        self.instance = instance
        self.per_stream = per_stream
        self.registry = registry or CollectorRegistry()
        r, g = self.registry, ["gateway", "thread", *(["stream"] if per_stream else [])]
        self.frame_latency = Histogram("ooblex_frame_latency_seconds", "Time between two stamps of a frame, by "
                                       "stage (queue, compute, return, engine, total).", [*g, "stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.received = Counter("ooblex_frames_received", "Frames that entered a stream.", g, registry=r)
        self.processed = Counter("ooblex_frames_processed", "Frames that came out of a stream.", g, registry=r)
        self.dropped = Counter("ooblex_frames_dropped", "Frames not processed or not shown: superseded by a "
                               "newer one, stale past the latency budget, or lost at the workers.", [*g, "reason"],
                               registry=r)
        self.errors = Counter("ooblex_frame_errors", "Frames the thread raised on (passed through flagged).", g,
                              registry=r)
        w = ["worker", "thread"]
        self.worker_latency = Histogram("ooblex_worker_latency_seconds", "Worker-side time of a frame: queue "
                                        "(sent by the gateway -> started) and compute.", [*w, "stage"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.worker_frames = Counter("ooblex_worker_frames", "Frames a worker processed.", w, registry=r)
        self.worker_skipped = Counter("ooblex_worker_skipped", "Frames a worker skipped: expired before they "
                                      "could start.", w, registry=r)
        self.worker_errors = Counter("ooblex_worker_errors", "Frames the thread raised on at a worker.", w,
                                     registry=r)
        self.worker_batches = Counter("ooblex_worker_batches", "Calls a worker made (each a batch of frames).", w,
                                      registry=r)

    def stream(self, thread: str, stream_id: str) -> Sink:
        """The sink of one gateway stream (series per thread; per stream only with ``per_stream``)."""
        labels = (self.instance, thread, *((stream_id,) if self.per_stream else ()))
        counters = {"received": self.received.labels(*labels), "processed": self.processed.labels(*labels),
                    "errors": self.errors.labels(*labels),
                    **{name: self.dropped.labels(*labels, reason) for name, reason in DROP_REASONS.items()}}
        owned = None
        if self.per_stream:
            owned = [(m, labels) for m in (self.received, self.processed, self.errors)]
            owned += [(self.dropped, (*labels, reason)) for reason in DROP_REASONS.values()]
        return Sink(counters, self.frame_latency, labels, owned)

    def worker(self, thread: str) -> Sink:
        """The sink of one queue a worker serves."""
        labels = (self.instance, thread)
        counters = {"processed": self.worker_frames.labels(*labels), "skipped": self.worker_skipped.labels(*labels),
                    "errors": self.worker_errors.labels(*labels), "batches": self.worker_batches.labels(*labels)}
        return Sink(counters, self.worker_latency, labels)

    def watch_worker(self, in_flight: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Export ``ooblex_worker_in_flight{worker,thread}``, read from ``in_flight()`` at each scrape."""
        self.registry.register(_InFlight(self.instance, in_flight))


class _InFlight(Collector):
    def __init__(self, instance: str, read: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self.instance, self.read = instance, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("ooblex_worker_in_flight", "Calls a worker is running now, per thread.",
                                   labels=["worker", "thread"])
        totals: dict[str, int] = {}
        for thread, n in self.read():
            totals[thread] = totals.get(thread, 0) + n
        for thread, n in sorted(totals.items()):
            family.add_metric([self.instance, thread], n)
        yield family


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Scrapes every few seconds are not worth a log line each."""


def serve(registry: CollectorRegistry, host: str, port: int, secret: str | bytes | None) -> WSGIServer:
    """Serve ``registry`` over HTTP on ``host:port`` from a daemon thread (``shutdown()`` stops it).

    With ``secret`` a scrape needs a ``control`` token (``Authorization: Bearer``), as a gateway's
    ``/metrics`` does; without one only loopback may be served.
    """
    if not secret and not _loopback(host):
        raise PermissionError(f"refusing to serve metrics on {host} without OOBLEX_SECRET: set it (scrapes then "
                              "need a control token) or keep the metrics on 127.0.0.1")
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            authorize(bearer(environ.get("HTTP_AUTHORIZATION")), "control", secret=secret or "")
        except (Unauthorized, Forbidden) as exc:
            code = "403 Forbidden" if isinstance(exc, Forbidden) else "401 Unauthorized"
            start_response(code, [("Content-Type", "text/plain; charset=utf-8"), ("WWW-Authenticate", "Bearer")])
            return [f"{exc}\n".encode()]
        return metrics(environ, start_response)

    server_class = _Server6 if ":" in host else _Server
    try:
        httpd = make_server(host.strip("[]"), port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:  # taken, or not an address of this machine
        raise ValueError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    threading.Thread(target=httpd.serve_forever, name="ooblex-metrics", daemon=True).start()
    return httpd


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
