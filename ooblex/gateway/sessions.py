"""WebRTC sessions (WHIP ingest, WHEP viewers): a bounded registry, cleanup and a liveness watchdog.

A peer that vanishes without a DELETE (closed laptop, killed process) sends nothing more: no
media, no RTCP, no ICE consent checks. The watchdog notices within ``idle_s`` and closes the
session, its tasks and its stream. Any authenticated packet from the peer counts as life
(``ooblex.webrtc.liveness``), so a viewer that only reports every 5-7 s (RFC 3550) stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from ..engine import Stream
from ..errors import NotFound, TooManyRequests
from ..webrtc.liveness import Liveness
from .settings import Settings

log = logging.getLogger("ooblex.gateway")


class TooManySessions(TooManyRequests):
    """A WebRTC session limit (gateway-wide or per client) is reached."""


class UnknownSession(NotFound, KeyError):
    """No open session of that kind has that id."""


class Session:
    """One peer connection, the tasks serving it and (for WHIP) the stream it owns."""

    def __init__(self, registry: Sessions, kind: str, client: str, pc: RTCPeerConnection, stream: Stream,
                 owns_stream: bool) -> None:
        self.id = registry.prefix + secrets.token_urlsafe(12)
        self.registry = registry
        self.kind = kind
        self.client = client
        #: ICE and DTLS are done; until then the session counts against its client's pending budget.
        self.connected = False
        self.pc = pc
        self.stream = stream
        self.owns_stream = owns_stream
        self.created = time.monotonic()
        self.closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._on_close: list[Callable[[], None]] = []
        self._closer: asyncio.Future[None] | None = None
        pc.on("connectionstatechange", self._on_state)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` for the session's lifetime; the session closes when it ends."""
        task = asyncio.create_task(coro, name=f"{self.kind}:{self.id}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def discard(self, track: MediaStreamTrack) -> None:
        """Read and drop a track nobody uses (audio, a viewer's camera), so it cannot pile up frames."""
        self.spawn(_drain(track), f"discard-{track.kind}")

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when the session closes (release what it holds)."""
        self._on_close.append(callback)

    def watch(self, idle_s: float, connect_s: float) -> None:
        """Close the session once its peer has sent nothing (media, RTCP, ICE checks) for ``idle_s``,
        or nothing at all within ``connect_s`` of the answer: a peer that never connects holds its
        slot for ``connect_s`` at most. Call after the offer/answer exchange."""
        self.spawn(self._watchdog(Liveness(self.pc), idle_s, connect_s), "watchdog")

    async def _watchdog(self, heard: Liveness, idle_s: float, connect_s: float) -> None:
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            last = heard.last  # 0.0 until the peer's first check or packet
            limit = idle_s if last else connect_s
            if time.monotonic() - (last or self.created) > limit:
                log.info("%s session %s: peer silent for %.1f s, closing", self.kind, self.id, limit)
                return

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s session %s: task %s failed", self.kind, self.id, task.get_name(),
                      exc_info=task.exception())
        self.close_soon()

    def close_soon(self) -> None:
        """Close from a callback (no await possible); the task is kept until done."""
        if not self.closed and self._closer is None:
            self._closer = asyncio.ensure_future(self.close())

    async def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self.connected = True
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        """Idempotent: stop tasks, the peer connection and an owned stream."""
        if self.closed:
            return
        self.closed = True
        self.registry.items.pop(self.id, None)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        for callback in self._on_close:
            callback()
        if self.owns_stream:
            await self.stream.close()
        with contextlib.suppress(Exception):
            await self.pc.close()

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "stream": self.stream.id, "client": self.client,
                "state": self.pc.connectionState,
                "age_s": round(time.monotonic() - self.created, 1)}


class Sessions:
    """All live sessions of one gateway, within the gateway-wide and per-client limits of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Session ids start with it: the gateway instance's tag, so any gateway of a cluster finds the holder.
        self.prefix = ""
        self.items: dict[str, Session] = {}
        self.opened = 0
        self.rejected = 0

    def check_room(self, client: str) -> None:
        """Raise ``TooManySessions`` (429) naming the limit when ``client`` may not open another session."""
        s = self.settings
        mine = [x for x in self.items.values() if x.client == client]
        pending = sum(not x.connected for x in mine)
        if len(self.items) >= s.max_sessions:
            problem = f"too many WebRTC sessions (limit {s.max_sessions}, OOBLEX_MAX_SESSIONS)"
        elif len(mine) >= s.max_sessions_per_client:
            problem = (f"this client ({client}) has {len(mine)} WebRTC sessions "
                       f"(limit {s.max_sessions_per_client}, OOBLEX_MAX_SESSIONS_PER_CLIENT)")
        elif pending >= s.max_pending_per_client:
            problem = (f"this client ({client}) has {pending} WebRTC sessions that have not connected yet "
                       f"(limit {s.max_pending_per_client}, OOBLEX_MAX_PENDING_PER_CLIENT; they expire after "
                       f"{s.connect_timeout_s:g} s)")
        else:
            return
        self.rejected += 1
        raise TooManySessions(f"{problem}; try again later")

    def add(self, kind: str, client: str, pc: RTCPeerConnection, stream: Stream, owns_stream: bool) -> Session:
        self.check_room(client)
        session = Session(self, kind, client, pc, stream, owns_stream)
        self.items[session.id] = session
        self.opened += 1
        return session

    def get(self, kind: str, session_id: str) -> Session:
        session = self.items.get(session_id)
        if session is None or session.kind != kind:
            raise UnknownSession(f"no {kind.upper()} session {session_id!r}")
        return session

    def count(self, kind: str) -> int:
        return sum(s.kind == kind for s in self.items.values())

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.items.values())))


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
