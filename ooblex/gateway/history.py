"""The last minutes of every open stream, one aggregate per second, so the console's charts fill at once.

Once a second the gateway samples each stream: frames in and out per second, dropped, stale and
failed frames in that second, and the median of each stage's latency over the frames finished
in that second (``StreamStats.recent``), plus the 95th percentile of the total. Each stream keeps
a ring buffer of ``Settings.history_s`` samples; a closed stream's history goes with it.
``since(t)`` answers in columns (one list per field), the shape chart libraries take.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..engine import Stream

STAGES = ("queue", "compute", "return", "engine", "total")
COUNTERS = ("dropped", "stale", "errors")
FIELDS = ("t", "fps_in", "fps", *COUNTERS, *STAGES, "total_p95")


@dataclass
class _Track:
    """One stream's ring buffer and what the previous sample had counted."""

    thread: str
    samples: deque[tuple[Any, ...]]
    at: float
    counters: dict[str, int]
    recorded: dict[str, int] = field(default_factory=dict)


class History:
    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.tracks: dict[str, _Track] = {}

    def sample(self, streams: Iterable[Stream], now: float | None = None) -> None:
        """Add one sample per stream (the aggregates since the previous call); forget closed streams."""
        now = time.time() if now is None else now
        seen = set()
        for s in streams:
            seen.add(s.id)
            counters, recorded = dict(s.stats.counters), dict(s.stats.recorded)
            track = self.tracks.get(s.id)
            if track is None:  # counted from the start: a stream's first second is not lost
                track = self.tracks[s.id] = _Track(s.thread.name, deque(maxlen=max(1, self.seconds)),
                                                   min(s.created, now - 1e-3), {})
            span = max(now - track.at, 1e-3)
            delta = {k: counters.get(k, 0) - track.counters.get(k, 0) for k in ("received", "processed", *COUNTERS)}
            lat = {st: s.stats.recent(st, track.recorded.get(st, 0)) for st in STAGES}
            total = lat["total"]
            track.samples.append((
                round(now, 3), round(delta["received"] / span, 2), round(delta["processed"] / span, 2),
                *(delta[k] for k in COUNTERS),
                *(_pct(lat[st], 50) for st in STAGES), _pct(total, 95)))
            track.at, track.counters, track.recorded = now, counters, recorded
        for gone in set(self.tracks) - seen:
            del self.tracks[gone]

    def since(self, t: float = 0.0, ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        """Samples newer than ``t`` (Unix seconds) per stream id, in columns: ``{"thread", "t": [...], ...}``."""
        wanted = self.tracks if ids is None else {i: self.tracks[i] for i in ids if i in self.tracks}
        out = {}
        for sid, track in wanted.items():
            rows = [r for r in track.samples if r[0] > t]
            out[sid] = {"thread": track.thread, **{f: [r[i] for r in rows] for i, f in enumerate(FIELDS)}}
        return out

    async def run(self, streams: Any, every_s: float = 1.0) -> None:
        """Sample ``streams`` (a dict of open streams, read at each tick) every ``every_s`` seconds, forever."""
        while True:
            await asyncio.sleep(every_s - time.time() % every_s)  # on the second: samples line up across streams
            self.sample(list(streams.values()))


def _pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (linear, as numpy's default), in plain Python: a second's frames are few, and
    this runs on the event loop for every stream and stage."""
    if not values:
        return None
    ordered = sorted(values)
    at = (len(ordered) - 1) * q / 100
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return round(ordered[low] + (ordered[high] - ordered[low]) * (at - low), 2)
