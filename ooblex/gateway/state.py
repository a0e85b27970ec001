"""What every route of one gateway instance shares: the engine, settings, sessions, a JPEG cache."""

from __future__ import annotations

import asyncio
import secrets
from collections import OrderedDict
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

if TYPE_CHECKING:  # jobs.py imports this module
    from .jobs import Job

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

    #: stream id -> the client address that opened it (per-client limits; pruned as streams close).
    owners: dict[str, str] = field(default_factory=dict)
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

    def open(self, client: str, thread: str, **options: Any) -> Stream:
        """Open a stream for ``client``, within the per-client and engine stream limits (429 past them)."""
        for sid in [sid for sid in self.owners if sid not in self.engine.streams]:
            del self.owners[sid]
        mine = sum(c == client for c in self.owners.values())
        limit = self.settings.max_streams_per_client
        if mine >= limit:
            raise TooManyRequests(f"this client ({client}) already has {mine} open streams; the limit is {limit} "
                                  "(OOBLEX_MAX_STREAMS_PER_CLIENT)")
        stream = self.engine.open(thread, stream_id=f"{self.instance}.{secrets.token_urlsafe(12)}", **options)
        self.owners[stream.id] = client
        return stream

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


class UnknownStream(NotFound, KeyError):
    """No open stream has that id."""


def gateway(conn: Request | WebSocket) -> Gateway:
    return conn.app.state.gateway


def client_of(conn: Request | WebSocket) -> str:
    """The caller's address (the real client's, behind a proxy listed in ``trusted_proxies``)."""
    return conn.client.host if conn.client is not None else "unknown"
