"""What every route of one gateway instance shares: the engine, settings, sessions, a JPEG cache."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request, WebSocket

from .. import jpeg
from ..engine import Engine, Stream
from ..errors import NotFound, TooManyRequests
from ..frame import Frame
from ..metrics import Metrics
from ..webrtc.audio import AudioRelay
from .admission import Governor, LoadMeter
from .history import History
from .sessions import Sessions
from .settings import Settings

if TYPE_CHECKING:  # jobs.py and clients.py import this module
    from .clients import Client
    from .jobs import Job

log = logging.getLogger("ooblex.gateway")

#: Encoded outputs kept for viewers that ask for the same frame (several MJPEG clients).
JPEG_CACHE_SIZE = 16


class JpegCache:
    """Encode each output frame once however many viewers want it (off the event loop)."""

    def __init__(self, quality: int, size: int = JPEG_CACHE_SIZE) -> None:
        self.quality = quality
        self.size = size
        self._items: OrderedDict[tuple[str, int], asyncio.Future[bytes]] = OrderedDict()

    async def get(self, frame: Frame) -> bytes:
        key = (frame.stream_id, frame.seq)
        fut = self._items.get(key)
        if fut is None:
            assert frame.image is not None
            fut = asyncio.ensure_future(asyncio.to_thread(jpeg.encode, frame.image, self.quality))
            # an awaiting viewer gets the error; one that went away must not leave it unobserved
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._items[key] = fut
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return await asyncio.shield(fut)


@dataclass
class Holding:
    """A stream this gateway opened: who holds it, when it last got a frame, how to take it back."""

    client: Client
    #: ``time.monotonic()`` of its newest frame (of its opening until the first).
    active: float
    #: Ends its connection to make room for another client (WebSockets); None: never evicted.
    evict: Callable[[], None] | None = None


@dataclass
class Gateway:
    """State of one gateway instance (``app.state.gateway``)."""

    engine: Engine
    settings: Settings
    sessions: Sessions = field(init=False)
    jpegs: JpegCache = field(init=False)
    #: Measured load, and what it means for new sessions and every stream (``admission.py``).
    meter: LoadMeter = field(init=False)
    governor: Governor = field(init=False)
    #: Per-second aggregates of every open stream, for the console's charts (``history.py``).
    history: History = field(init=False)
    #: Prometheus metrics of this instance, its streams and embedded worker (``/metrics``: ``metrics.py``).
    metrics: Metrics = field(init=False)
    counters: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    #: This instance's tag: its stream and session ids start with it (``ooblex.cluster.gateways``).
    instance: str = field(init=False)

    #: stream id -> who opened it (per-client limits, eviction of idle sockets; pruned as streams close).
    held: dict[str, Holding] = field(default_factory=dict)
    #: stream id -> its WHIP publisher's audio, for WHEP viewers (removed when the session closes).
    audio: dict[str, AudioRelay] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        self.sessions = Sessions(s)
        self.jpegs = JpegCache(s.jpeg_quality)
        self.meter = LoadMeter()
        self.instance = self.engine.reply_to.rsplit(".", 1)[-1]
        self.sessions.prefix = f"{self.instance}."
        self.governor = Governor(s.max_loop_busy, s.max_cpu, s.max_loop_lag_ms, s.min_fps, s.min_scale)
        self.history = History(s.history_s)
        self.metrics = Metrics(self.instance, per_stream=s.metrics_stream_labels)
        if self.engine.metrics is None:  # an engine shared by several apps reports to the first
            self.engine.metrics = self.metrics

    async def open(self, client: Client, thread: str, *, evict: Callable[[], None] | None = None,
                   **options: Any) -> Stream:
        """Open a stream for ``client``, within the per-client and engine stream limits (429 past them).

        ``evict`` ends the stream's connection when the gateway is full and it has sent no frame for
        ``stream_evict_idle_s`` (see ``_make_room``); ``active`` tells when it sends one.
        """
        for sid in [sid for sid in self.held if sid not in self.engine.streams]:
            del self.held[sid]
        limit = self.settings.max_streams_per_client
        for key in client.keys():
            mine = sum(key in h.client.keys() for h in self.held.values())
            if mine >= limit:
                raise TooManyRequests(f"this client ({key}) already has {mine} open streams; the limit is {limit} "
                                      "(OOBLEX_MAX_STREAMS_PER_CLIENT)")
        if len(self.engine.streams) >= self.engine.max_streams:
            await self._make_room(client)
        stream = self.engine.open(thread, stream_id=f"{self.instance}.{secrets.token_urlsafe(12)}", **options)
        self.held[stream.id] = Holding(client, time.monotonic(), evict)
        return stream

    def active(self, stream_id: str) -> float:
        """Note a frame on ``stream_id``; the time it was noted."""
        now = time.monotonic()
        if stream_id in self.held:
            self.held[stream_id].active = now
        return now

    async def _make_room(self, client: Client) -> None:
        """At ``max_streams``: close the longest-idle evictable stream of the client holding the most of them,
        if that is more than ``client`` holds, so sockets that send no frames never lock newcomers out."""
        idle_before = time.monotonic() - self.settings.stream_evict_idle_s
        idle = {sid: h for sid, h in self.held.items() if h.evict is not None and h.active <= idle_before}
        per_client = Counter(h.client.address for h in self.held.values())
        owners = Counter(h.client.address for h in idle.values())
        if not owners:
            return
        greediest = max(owners, key=lambda a: per_client[a])
        if per_client[greediest] <= per_client[client.address]:
            return
        sid = min((sid for sid, h in idle.items() if h.client.address == greediest), key=lambda x: idle[x].active)
        holding = self.held.pop(sid)
        log.info("stream %s of %s: evicted, no frames for %.1f s, for a new stream of %s", sid, greediest,
                 time.monotonic() - holding.active, client.address)
        await self.engine.streams[sid].close()
        if holding.evict is not None:
            holding.evict()

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class UnknownStream(NotFound, KeyError):
    """No open stream has that id."""


def gateway(conn: Request | WebSocket) -> Gateway:
    return conn.app.state.gateway


def client_of(conn: Request | WebSocket) -> str:
    """The caller's address (the real client's, behind a proxy listed in ``trusted_proxies``); per-client
    limits count its network (``clients.py``)."""
    return conn.client.host if conn.client is not None else "unknown"
