"""Overload: measured load decides whether new work may start, and how much each stream may take.

A gateway past capacity must neither stall nor let one stream starve the others. It measures
itself every ``every_s`` (``LoadMeter``):

- ``loop``: the share of wall time its event loop thread spent on the CPU (``time.thread_time``).
  Signalling, RTP/SRTP, colour conversion and the engine all run there, so near 1.0 every frame
  waits for the loop. Other processes on the machine do not raise it (it is our own CPU time).
- ``cpu``: this process's CPU time (loop, codec threads, JPEG encodes) per second, as a share of
  the cores it may run on (its affinity, or a container's CPU limit).
- ``lag_ms``: how late a timer fires: what the loop's backlog (or a starved machine) adds to every frame.

Over a threshold (``Settings.max_loop_busy``, ``max_cpu``, ``max_loop_lag_ms``) for ``SUSTAIN`` samples in a row:
1. new sessions and streams get ``503 Service Unavailable`` with ``Retry-After`` (``Admission``,
   an ASGI middleware: a load balancer can retry them on another gateway), and
2. every stream degrades the same way (``Governor``): first a lower frame-rate cap, down to
   ``min_fps``, then a lower resolution (``min_scale``), which also lowers the encoders' bitrate.
   Frames over the cap are skipped before colour conversion, so they cost only their decode.
   When the load falls below ``RECOVER`` times the thresholds the steps are undone, one at a time.
   Between that and the thresholds a step is undone only as a probe, after ``PROBE_S``: the cap saves
   less than its share of the frames (every frame is still received and decoded), so a gateway that
   one burst pushed down could otherwise stay there with room for its full rate. A probe that
   overloads again within ``PROBE_WINDOW_S`` doubles the wait for the next (libwebrtc's CPU
   adaptation backs off its ramp-ups the same way).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from .. import routes

#: Frame-rate caps tried in turn when overloaded (0 = no cap); those below ``min_fps`` are left out.
FPS_STEPS = (0.0, 24.0, 20.0, 15.0, 12.0, 10.0, 8.0, 5.0)
#: Resolution scales tried once the frame rate is at its floor.
SCALE_STEPS = (1.0, 0.75, 0.5, 0.375, 0.25)
#: Samples in a row over a threshold before the gateway counts as overloaded (x ``every_s`` = 1.5 s).
SUSTAIN = 3
#: Steps are undone once every measure is below this share of its threshold.
RECOVER = 0.7
#: Seconds the load must stay low before one step is undone (quick down, slow up: no flapping).
RECOVER_S = 3.0
#: Seconds in the band between ``RECOVER`` and the thresholds before a step is undone as a probe; the
#: wait doubles after each probe that overloads within ``PROBE_WINDOW_S``, up to ``PROBE_MAX_S``.
PROBE_S = 10.0
PROBE_WINDOW_S = 6.0
PROBE_MAX_S = 160.0
#: Frames a stream may have in hand under a frame-rate cap (a token bucket of this depth, filled at the
#: cap): deeper than one so that each frame of a faster source keeps the fraction of a frame it brings
#: (30 fps under a 24 fps cap gives 24, 4 frames of 5, not 15 by taking every other one), also when a
#: busy decoder hands its frames over in pairs; shallow so that after a pause at most three go through.
BURST = 3.0
#: Routes that start new work, by method: the ones refused with 503 when overloaded.
NEW_WORK = {"POST": tuple(routes.prefix(t) for t in (routes.WHIP, routes.WHEP, routes.FRAMES, routes.JOBS)),
            "GET": (routes.prefix(routes.WS), routes.prefix(routes.MJPEG))}


@dataclass
class Load:
    """One measurement (each a share of capacity, 0..1, except the lag)."""

    loop: float = 0.0
    cpu: float = 0.0
    lag_ms: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"loop": round(self.loop, 3), "cpu": round(self.cpu, 3), "lag_ms": round(self.lag_ms, 1)}


class LoadMeter:
    """Measures this process every ``every_s`` (smoothed); ``run()`` is the loop, ``load`` the latest."""

    def __init__(self, every_s: float = 0.5, smoothing: float = 0.5) -> None:
        self.every_s = every_s
        self.smoothing = smoothing
        self.cores = usable_cores()
        self.load = Load()
        self.samples = 0

    async def run(self, on_sample: Any = None) -> None:
        while True:
            wall0, loop0, cpu0 = time.monotonic(), time.thread_time(), time.process_time()
            await asyncio.sleep(self.every_s)
            wall = time.monotonic() - wall0
            self.add(Load(loop=(time.thread_time() - loop0) / wall,
                          cpu=(time.process_time() - cpu0) / wall / self.cores,
                          lag_ms=max(0.0, wall - self.every_s) * 1e3))
            if on_sample is not None:
                on_sample(self.load)

    def add(self, sample: Load) -> None:
        a = self.smoothing if self.samples else 1.0
        self.samples += 1
        self.load = Load(*(a * new + (1 - a) * old for new, old in
                           zip((sample.loop, sample.cpu, sample.lag_ms),
                               (self.load.loop, self.load.cpu, self.load.lag_ms), strict=True)))


def _since(start: float | None, now: float) -> float:
    """When a condition that holds now began: ``start`` if it held already, else now."""
    return now if start is None else start


def usable_cores() -> float:
    """Cores this process may use: its CPU affinity, capped by a cgroup v2 quota (a container's CPU limit)."""
    cores = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(float(quota) / float(period), 0.01))
    except (OSError, ValueError):
        pass
    return cores


class Governor:
    """One policy for every stream: the current frame-rate cap and resolution scale, from the load.

    ``allow(stream_id)`` says whether a stream may take its next frame now (the cap, per stream,
    so all streams get the same rate); ``scale`` is the resolution factor for frames it takes.
    """

    def __init__(self, max_loop_busy: float = 0.9, max_cpu: float = 0.9, max_lag_ms: float = 500.0,
                 min_fps: float = 10.0, min_scale: float = 0.5, sustain: int = SUSTAIN) -> None:
        self.limits = (max_loop_busy, max_cpu, max_lag_ms)
        self.sustain = sustain
        self._over = 0  # consecutive samples over a threshold
        self.steps = [(f, 1.0) for f in FPS_STEPS if f == 0 or f >= min_fps]
        self.steps += [(self.steps[-1][0], s) for s in SCALE_STEPS[1:] if s >= min_scale]
        self.level = 0
        self.load = Load()
        self._low_since: float | None = None  # below RECOVER since
        self._calm_since: float | None = None  # below the thresholds since
        self._probed_at: float | None = None  # the last probe, until it has held for PROBE_WINDOW_S
        self.probe_wait_s = PROBE_S
        self._bucket: dict[str, tuple[float, float]] = {}  # stream -> (frames in hand, when last filled)
        self.skipped = 0  # frames left out under a frame-rate cap
        self.refused = 0  # requests refused with 503 (``Admission``)

    @property
    def fps_cap(self) -> float:
        return self.steps[self.level][0]

    @property
    def scale(self) -> float:
        return self.steps[self.level][1]

    @property
    def overloaded(self) -> bool:
        """Over a threshold for ``sustain`` samples in a row (a burst of a second is no overload)."""
        return self._over >= self.sustain

    def _ratio(self, load: Load) -> float:
        """The highest measure as a share of its threshold (thresholds of 0 are off)."""
        pairs = zip((load.loop, load.cpu, load.lag_ms), self.limits, strict=True)
        return max((v / limit for v, limit in pairs if limit > 0), default=0.0)

    def update(self, load: Load, now: float | None = None) -> None:
        """Take a new measurement: one step down per sample while overloaded; one up after ``RECOVER_S``
        below ``RECOVER``, or as a probe after ``probe_wait_s`` below the thresholds."""
        now = time.monotonic() if now is None else now
        self.load = load
        ratio = self._ratio(load)
        self._over = self._over + 1 if ratio > 1.0 else 0
        if self._probed_at is not None and now - self._probed_at > PROBE_WINDOW_S:
            self._probed_at, self.probe_wait_s = None, PROBE_S  # the probe held
        if self.overloaded:
            if self._probed_at is not None:  # the probe failed: wait longer before the next
                self._probed_at, self.probe_wait_s = None, min(2 * self.probe_wait_s, PROBE_MAX_S)
            self.level = min(self.level + 1, len(self.steps) - 1)
        self._low_since = _since(self._low_since, now) if ratio < RECOVER else None
        self._calm_since = _since(self._calm_since, now) if ratio <= 1.0 else None
        if self.level == 0 or self.overloaded:
            return
        if self._low_since is not None and now - self._low_since >= RECOVER_S:
            self._step_up(now, probe=False)
        elif self._calm_since is not None and now - self._calm_since >= self.probe_wait_s:
            self._step_up(now, probe=True)

    def _step_up(self, now: float, probe: bool) -> None:
        """Undo one step; the next waits its full time again from now."""
        self.level -= 1
        self._low_since = None if self._low_since is None else now
        self._calm_since = now
        self._probed_at = now if probe else None

    def allow(self, stream_id: str, now: float | None = None) -> bool:
        """True if ``stream_id`` may take a frame now under the current cap (then it counts as taken).

        A token bucket per stream (``BURST`` deep, filled at the cap): the rate it lets through is the
        cap's for any source faster than it, however the source's frames are spaced or jittered."""
        cap = self.fps_cap
        if not cap:
            self._bucket.pop(stream_id, None)
            return True
        now = time.monotonic() if now is None else now
        tokens, filled = self._bucket.get(stream_id, (1.0, now))
        tokens = min(BURST, tokens + (now - filled) * cap)
        if tokens < 1.0 - 1e-6:  # (the tolerance: float sums of 1/30 s x 15 fall short of 1 by an ulp)
            self._bucket[stream_id] = (tokens, now)
            self.skipped += 1
            return False
        self._bucket[stream_id] = (tokens - 1.0, now)
        return True

    def forget(self, stream_id: str) -> None:
        self._bucket.pop(stream_id, None)

    def describe(self) -> dict[str, Any]:
        return {"overloaded": self.overloaded, "level": self.level, "fps_cap": self.fps_cap, "scale": self.scale,
                "skipped": self.skipped, "refused": self.refused, "probe_wait_s": self.probe_wait_s,
                "load": self.load.as_dict()}


class Admission:
    """ASGI middleware: while ``governor`` says overloaded, requests that start work get 503 + Retry-After."""

    def __init__(self, app: ASGIApp, governor: Governor, retry_after_s: int = 2) -> None:
        self.app = app
        self.governor = governor
        self.retry_after_s = retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and self.governor.overloaded and starts_work(scope):
            self.governor.refused += 1
            await self._refuse(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        load = self.governor.load.as_dict()
        body = json.dumps({"detail": f"this gateway is at capacity (load {load}); try again in "
                                     f"{self.retry_after_s} s or another gateway"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"retry-after", str(self.retry_after_s).encode())]
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            if "websocket.http.response" in scope.get("extensions", {}):
                await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 4503, "reason": "gateway at capacity"})
            return
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def starts_work(scope: Scope) -> bool:
    """A request that would open a session, stream, viewer or job (never one that ends or reads one)."""
    method = "GET" if scope["type"] == "websocket" else scope.get("method", "GET")
    path = scope.get("path", "")
    if routes.pattern(routes.WHIP_SESSION).match(path):
        return False  # a session's own resource: not a new session
    return any(path.startswith(p) for p in NEW_WORK.get(method, ()))
