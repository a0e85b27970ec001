"""The last minutes of every open stream, one aggregate per second, so the console's charts fill at once.

Once a second the gateway samples each stream: frames in and out per second, dropped, stale and
failed frames in that second, and the median of each stage's latency over the frames finished
in that second (``StreamStats.recent``), plus the 95th percentile of the total. Each stream keeps
a ring buffer of ``Settings.history_s`` samples; a closed stream's history goes with it.
``since(t)`` answers in columns (one list per field), the shape chart libraries take.

A sample is stamped with its whole second, and a stream gets at most one per second: a timer
that wakes a little early (a loaded loop) must not add a second sample a millisecond later,
whose few frames over a tiny span would read as 1000 fps. Rates are counter differences over at
least a second, and a counter that went backwards (a restarted stream's) starts again from zero,
so neither a new stream nor a reconnect makes a spike. A second with no sample (the loop was
stalled) is answered as a row of nulls, so charts show the gap instead of drawing across it.
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
        """Add one sample per stream (the aggregates since its previous one), stamped with the whole second
        ``now`` falls in (rounded); a stream already sampled in that second is left alone. Forget closed streams."""
        now = time.time() if now is None else now
        second = round(now)
        seen = set()
        for s in streams:
            seen.add(s.id)
            track = self.tracks.get(s.id)
            if track is None:  # counted from the start: a stream's first second is not lost
                track = self.tracks[s.id] = _Track(s.thread.name, deque(maxlen=max(1, self.seconds)),
                                                   min(s.created, now), {})
            elif track.samples and track.samples[-1][0] >= second:
                continue
            counters, recorded = dict(s.stats.counters), dict(s.stats.recorded)
            span = max(now - track.at, 1.0)  # a partial first second counts as one: its frames, not a rate spike
            delta = {k: _grew(counters.get(k, 0), track.counters.get(k, 0)) for k in ("received", "processed",
                                                                                      *COUNTERS)}
            lat = {st: s.stats.recent(st, track.recorded.get(st, 0)) for st in STAGES}
            total = lat["total"]
            track.samples.append((
                second, round(delta["received"] / span, 2), round(delta["processed"] / span, 2),
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
            rows = [r for r in _with_gaps(track.samples) if r[0] > t]
            out[sid] = {"thread": track.thread, **{f: [r[i] for r in rows] for i, f in enumerate(FIELDS)}}
        return out

    async def run(self, streams: Any) -> None:
        """Sample ``streams`` (a dict of open streams, read at each tick) once a second, on the second, forever."""
        while True:
            # Just past the next whole second (samples line up across streams and gateways); a timer that
            # fires early still lands in the right second, which ``sample`` takes once.
            await asyncio.sleep(1.0 - time.time() % 1.0 + 0.01)
            self.sample(list(streams.values()))


def _grew(now: int, before: int) -> int:
    """How much a counter grew; one that went backwards was reset (a restarted stream) and counts from zero."""
    return now - before if now >= before else now


def _with_gaps(rows: Iterable[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``rows`` with a row of nulls (but its second) for every second missing between two samples."""
    out: list[tuple[Any, ...]] = []
    for r in rows:
        if out:
            out.extend((second,) + (None,) * (len(FIELDS) - 1) for second in range(out[-1][0] + 1, r[0]))
        out.append(r)
    return out


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
