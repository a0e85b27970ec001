"""A deployed lane over WebRTC: the kernel publishes the lane's frames to the gateway with WHIP and gets
the processed video back on the same peer connection, as a browser or camera would.

VP8 both ways (the gateway's production path: its jitter buffer, loss recovery and encoders), one frame
in flight. A returned frame is matched to the frame sent by its RTP timestamp: asked with ``Prefer:
return-timestamps=input``, the gateway gives each processed frame its input's timestamp, and each sender
adds a constant random origin, so the first frame back fixes the offset and every later one must match
exactly (late ones are dropped). The thread's JSON result does not travel in video: the lane shows
the stream's latest one, with the gateway's own latency (``gateway_ms``: its p50 from decoded to sent),
read from ``GET /api/v1/streams/{id}`` once a second. aiortc runs on a loop thread of its own, never on
the kernel's loop or the live widgets' loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import fractions
import threading
import time
from typing import Any
from urllib.parse import urlencode

import av
import httpx
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from .. import routes
from ..cluster.deploy import Deployment
from ..errors import Unavailable
from ..supervision import cancel
from ..webrtc.client import WebRTCError, WhipClient
from .loop import LoopThread

#: 90 kHz: the RTP clock of video.
VIDEO_CLOCK = 90000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
#: Seconds for the peer connection to be up and its first frame back (ICE, DTLS, first keyframe).
CONNECT_TIMEOUT_S = 10.0
#: Seconds to wait for one processed frame before it counts as lost.
FRAME_TIMEOUT_S = 1.0
#: Frames lost in a row before the connection is presumed dead and reopened.
MAX_LOST = 5
#: Seconds between reads of the stream's stats (latest result, gateway latency).
STATS_EVERY_S = 1.0
#: Token lifetime; the connection is reopened with a fresh token when it fails.
TOKEN_TTL = "1h"


class PushTrack(MediaStreamTrack):
    """A video track that sends what ``push`` hands it, newest only, each frame with the timestamp given."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._next: asyncio.Queue[av.VideoFrame] = asyncio.Queue(maxsize=1)

    def push(self, image: np.ndarray, pts: int) -> None:
        """On the peer's loop: queue ``image`` to leave next (replacing one not yet sent)."""
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, TIME_BASE
        if self._next.full():
            self._next.get_nowait()
        self._next.put_nowait(frame)

    async def recv(self) -> av.VideoFrame:
        return await self._next.get()


class Matcher:
    """Pairs returned frames with the frame in flight by RTP timestamp (see the module docstring)."""

    def __init__(self) -> None:
        self.offset: int | None = None
        self.waiting: tuple[int, cf.Future[np.ndarray]] | None = None

    def expect(self, pts: int) -> cf.Future[np.ndarray]:
        future: cf.Future[np.ndarray] = cf.Future()
        self.waiting = (pts, future)
        return future

    def returned(self, pts: int, frame: av.VideoFrame) -> None:
        if self.waiting is None:
            return
        sent, future = self.waiting
        if self.offset is None:
            self.offset = (pts - sent) % 2**32
        if (pts - self.offset) % 2**32 == sent % 2**32 and not future.done():
            self.waiting = None
            future.set_result(frame.to_ndarray(format="rgb24"))

    def lost_track(self) -> None:
        """Several frames lost in a row: the offset may have been learnt from a late frame; learn it again."""
        self.offset = None


class PeerCall:
    """Calls a deployment through its gateway over one WHIP peer connection (reopened on failure)."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.label = dep.queue
        self._params: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loop: LoopThread | None = None
        self._client: WhipClient | None = None
        self._track: PushTrack | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._matcher = Matcher()
        self._lost = 0
        self._t0 = time.monotonic()
        self._last_pts = -1
        #: The stream's latest stats from its gateway: ``result`` and ``latency_ms``.
        self.stats: dict[str, Any] = {}

    def __call__(self, frame: np.ndarray, **params: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
        with self._lock:
            if params != self._params:  # new control values: a connection opened with them in its query
                self.close()
                self._params = params
            fresh = self._client is None
            if fresh:
                self._run(self._connect(), CONNECT_TIMEOUT_S)
            started = time.perf_counter()
            image = self._trip(np.ascontiguousarray(frame), CONNECT_TIMEOUT_S if fresh else FRAME_TIMEOUT_S)
        trip = round((time.perf_counter() - started) * 1e3, 1)
        total = (self.stats.get("latency_ms") or {}).get("total") or {}
        result: dict[str, Any] = {"trip_ms": trip, "gateway_ms": total.get("p50")}
        if image is None:
            result["lost"] = True
        if self.stats.get("result") is not None:
            result["cluster"] = self.stats["result"]
        return image, result

    def _trip(self, frame: np.ndarray, timeout: float) -> np.ndarray | None:
        pts = max(int((time.monotonic() - self._t0) * VIDEO_CLOCK), self._last_pts + 1)
        self._last_pts = pts
        future = self._matcher.expect(pts)
        track = self._track
        assert track is not None and self._loop is not None
        self._loop.call(track.push, frame, pts)
        try:
            image = future.result(timeout)
        except cf.TimeoutError:
            return self._missed()
        self._lost = 0
        return image

    def _missed(self) -> None:
        """A frame did not come back in time: lost, unless the connection is gone or keeps losing them."""
        self._lost += 1
        client = self._client
        if client is not None and client.pc.connectionState in ("failed", "closed"):
            self.close()
            raise Unavailable(f"the connection to the gateway for {self.label} {client.pc.connectionState}")
        if self._lost >= MAX_LOST:
            self.close()
            raise TimeoutError(f"{self.label}: no processed frame came back for {MAX_LOST} frames in a row")
        if self._lost >= 2:
            self._matcher.lost_track()
        return None

    def _run(self, coro: Any, timeout: float) -> Any:
        if self._loop is None:
            self._loop = LoopThread(name=f"ooblex-peer-{self.label}")
        try:
            return self._loop.run(coro).result(timeout)
        except cf.TimeoutError:
            self.close()
            raise TimeoutError(f"{self.label}: no WebRTC connection to the gateway within {timeout:g} s (if UDP cannot "
                               "pass between this kernel and the gateway, ob.live(..., transport='websocket') needs "
                               "only HTTP)") from None
        except WebRTCError as exc:
            self.close()
            raise Unavailable(f"the gateway refused {self.label}: {exc}") from None
        except BaseException:  # e.g. a gateway that cannot keep timestamps: no half-open connection stays
            self.close()
            raise

    async def _connect(self) -> None:
        url = self.dep.version_urls.get("whip")
        if not url:
            raise Unavailable(f"no gateway of this cluster is up to serve {self.label} (ob.cluster() starts one)")
        query = urlencode({k: v for k, v in self._params.items() if v is not None})
        token = self.dep.publish_token(TOKEN_TTL, this_version=True)
        self._track = PushTrack()
        self._matcher = Matcher()
        prefer = routes.PREFER_INPUT_TIMESTAMPS
        client = WhipClient(f"{url}?{query}" if query else url, self._track, token=token, prefer=prefer)
        self._client = client
        await client.start()
        if client.applied != prefer:
            raise Unavailable(f"the gateway serving {self.label} cannot keep frame timestamps (Prefer: "
                              f"{prefer}): upgrade it, or use transport='websocket'")
        assert client.remote is not None
        self._tasks = [asyncio.ensure_future(self._receive(client.remote)),
                       asyncio.ensure_future(self._poll_stats(url, client, token))]

    async def _receive(self, remote: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await remote.recv()
                self._matcher.returned(frame.pts, frame)

    async def _poll_stats(self, whip: str, client: WhipClient, token: str) -> None:
        if not client.stream_id:
            return
        url = whip.split("/whip/")[0] + routes.path(routes.STREAM, stream_id=client.stream_id)
        async with httpx.AsyncClient(timeout=5, headers={"Authorization": f"Bearer {token}"}) as http:
            while True:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    resp = await http.get(url)
                    if resp.status_code == 200:
                        self.stats = resp.json()
                await asyncio.sleep(STATS_EVERY_S)

    async def _disconnect(self, client: WhipClient, tasks: list[asyncio.Task[None]]) -> None:
        await cancel(*tasks)
        with contextlib.suppress(Exception):  # the gateway may be gone already: closing must still succeed
            await client.close()

    def close(self) -> None:
        """End the peer connection (DELETE on the gateway); the next call opens a new one."""
        client, self._client = self._client, None
        tasks, self._tasks = self._tasks, []
        self._track, self._lost, self.stats = None, 0, {}
        if client is not None and self._loop is not None:
            with contextlib.suppress(cf.TimeoutError, Exception):
                self._loop.run(self._disconnect(client, tasks)).result(5)

    def shutdown(self) -> None:
        """``close`` and end the loop thread (the lane is gone)."""
        self.close()
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.loop.call_soon_threadsafe(loop.loop.stop)
