"""What every route of one gateway instance shares: the engine, settings, sessions, a JPEG cache."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from fastapi import Request, WebSocket

from .. import jpeg
from ..cluster.jobs import Job
from ..engine import Engine, Stream
from ..frame import Frame
from .sessions import Sessions
from .settings import Settings

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
    counters: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, Job] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.max_sessions)
        self.jpegs = JpegCache(self.settings.jpeg_quality)

    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def stream(self, stream_id: str) -> Stream:
        """The open stream ``stream_id``, or ``KeyError`` naming it."""
        stream = self.engine.streams.get(stream_id)
        if stream is None:
            raise UnknownStream(f"no stream {stream_id!r} (open streams: GET /api/v1/streams)")
        return stream


class UnknownStream(KeyError):
    """No open stream has that id."""

    def __str__(self) -> str:
        return str(self.args[0])


def gateway(conn: Request | WebSocket) -> Gateway:
    return conn.app.state.gateway
