"""Per-stage latency and fps, as p50/p95/p99 over a sliding window of recent frames.

Fixed-size ring buffers: memory stays bounded however long a stream lives, and percentiles
reflect the last few seconds, which is what someone watching a live stream cares about.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from .frame import Frame

if TYPE_CHECKING:
    from .metrics import Sink

WINDOW = 512


class StreamStats:
    """Counters and latency windows for one stream; a ``sink`` (``ooblex.metrics``) gets each count and latency."""

    def __init__(self, window: int = WINDOW, sink: Sink | None = None) -> None:
        self.window = window
        self.sink = sink
        self.latency: dict[str, deque[float]] = {}
        self.out_times: deque[float] = deque(maxlen=window)
        self.in_times: deque[float] = deque(maxlen=window)
        self.counters: dict[str, int] = {"received": 0, "processed": 0, "dropped": 0, "stale": 0, "errors": 0}
        #: latencies recorded per stage since the start (``recent`` tells which ones in the window are new)
        self.recorded: dict[str, int] = {}

    def count(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n
        if self.sink is not None:
            self.sink.count(name, n)

    def received(self) -> None:
        self.count("received")
        self.in_times.append(time.monotonic())

    def record(self, frame: Frame) -> None:
        """Record a processed frame's stage durations (ms)."""
        self.count("processed")
        self.out_times.append(time.monotonic())
        s = frame.stamps
        spans = {
            "queue": ("queued", "started"),
            "compute": ("started", "finished"),
            "return": ("finished", "returned"),
            "engine": ("received", "returned"),
            "total": ("captured" if "captured" in s else "received", "sent" if "sent" in s else "returned"),
        }
        for key, (a, b) in spans.items():
            if a in s and b in s:
                ms = (s[b] - s[a]) * 1e3
                self.latency.setdefault(key, deque(maxlen=self.window)).append(ms)
                self.recorded[key] = self.recorded.get(key, 0) + 1
                if self.sink is not None:
                    self.sink.latency(key, ms)

    def close(self) -> None:
        """The stream is gone: its sink may drop series that were its alone."""
        if self.sink is not None:
            self.sink.close()

    def recent(self, stage: str, seen: int) -> list[float]:
        """Latencies of ``stage`` recorded after the first ``seen`` ones (those still in the window), newest first."""
        values = self.latency.get(stage)
        new = self.recorded.get(stage, 0) - seen
        if not values or new <= 0:
            return []
        return list(itertools.islice(reversed(values), new))

    def snapshot(self) -> dict[str, Any]:
        """``{"fps_in", "fps", "latency_ms": {stage: {p50, p95, p99}}, counters...}``"""
        lat = {}
        for key, values in self.latency.items():
            if values:
                p = np.percentile(np.fromiter(values, float), [50, 95, 99])
                lat[key] = {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3),
                            "p99": round(float(p[2]), 3)}
        return {"fps_in": _rate(self.in_times), "fps": _rate(self.out_times), "latency_ms": lat,
                **self.counters}


def _rate(times: deque[float], horizon: float = 2.0) -> float:
    """Events per second over the last ``horizon`` seconds."""
    now = time.monotonic()
    recent = [t for t in times if now - t <= horizon]
    if len(recent) < 2:
        return 0.0
    span = max(now - recent[0], 1e-6)
    return round(len(recent) / span, 2)
