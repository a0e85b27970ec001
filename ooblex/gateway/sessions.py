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
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from ..engine import Stream
from ..errors import NotFound, TooManyRequests
from ..webrtc.liveness import Liveness
from .settings import Settings

if TYPE_CHECKING:  # clients.py imports this module's importers
    from .clients import Client

log = logging.getLogger("ooblex.gateway")


class TooManySessions(TooManyRequests):
    """A WebRTC session limit (gateway-wide or per client) is reached."""


class UnknownSession(NotFound, KeyError):
    """No open session of that kind has that id."""


def unknown(kind: str, session_id: str) -> UnknownSession:
    """The one 404 for a session id that does not exist or is not the caller's."""
    return UnknownSession(f"no {kind.upper()} session {session_id!r}")


class Session:
    """One peer connection, the tasks serving it and (for WHIP) the stream it owns."""

    def __init__(self, registry: Sessions, kind: str, client: Client, target: str, pc: RTCPeerConnection,
                 stream: Stream, owns_stream: bool) -> None:
        self.id = registry.prefix + secrets.token_urlsafe(12)
        self.registry = registry
        self.kind = kind
        self.client = client
        #: What the session's URL names: the thread (WHIP) or the stream (WHEP) it was opened on.
        self.target = target
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
        or when it has not connected (ICE + DTLS) within ``connect_s`` of the answer, whatever it sent:
        a peer that never connects holds its slot for ``connect_s`` at most. Call after the offer/answer
        exchange."""
        self.spawn(self._watchdog(Liveness(self.pc), idle_s, connect_s), "watchdog")

    async def _watchdog(self, heard: Liveness, idle_s: float, connect_s: float) -> None:
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = time.monotonic()
            if not self.connected and now - self.created > connect_s:
                log.info("%s session %s: not connected after %.1f s, closing", self.kind, self.id, connect_s)
                return
            if self.connected and now - (heard.last or self.created) > idle_s:
                log.info("%s session %s: peer silent for %.1f s, closing", self.kind, self.id, idle_s)
                return

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s session %s: task %s failed", self.kind, self.id, task.get_name(),
                      exc_info=task.exception())
        self.close_soon()

    def evict(self) -> None:
        """Give up the slot now (its room goes to a newcomer) and close in the background."""
        self.registry.items.pop(self.id, None)
        self.registry.evicted += 1
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
        return {"id": self.id, "kind": self.kind, "stream": self.stream.id, "client": str(self.client),
                "state": self.pc.connectionState,
                "age_s": round(time.monotonic() - self.created, 1)}


class Sessions:
    """All live sessions of one gateway, within the gateway-wide and per-client limits of ``settings``.

    Connected sessions keep their room until they end. Unconnected ones have their own smaller cap
    (``max_pending_sessions``) and give way to newcomers (``check_room``), so peers that never connect
    cannot lock anyone out; viewers have their own cap (``max_viewer_sessions``), so publishers keep room.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Session ids start with it: the gateway instance's tag, so any gateway of a cluster finds the holder.
        self.prefix = ""
        self.items: dict[str, Session] = {}
        self.opened = 0
        self.rejected = 0
        #: Unconnected sessions closed to make room for another client.
        self.evicted = 0

    def check_room(self, kind: str, client: Client) -> None:
        """Make room for ``client``'s new ``kind`` session, or raise ``TooManySessions`` (429) naming the limit."""
        problem = self._client_problem(client) or self._viewer_problem(kind) or self._make_room(client)
        if problem:
            self.rejected += 1
            raise TooManySessions(f"{problem}; try again later")

    def _client_problem(self, client: Client) -> str | None:
        s = self.settings
        for key in client.keys():
            mine = [x for x in self.items.values() if key in x.client.keys()]
            pending = sum(not x.connected for x in mine)
            if len(mine) >= s.max_sessions_per_client:
                return (f"this client ({key}) has {len(mine)} WebRTC sessions "
                        f"(limit {s.max_sessions_per_client}, OOBLEX_MAX_SESSIONS_PER_CLIENT)")
            if pending >= s.max_pending_per_client:
                return (f"this client ({key}) has {pending} WebRTC sessions that have not connected yet "
                        f"(limit {s.max_pending_per_client}, OOBLEX_MAX_PENDING_PER_CLIENT; they expire after "
                        f"{s.connect_timeout_s:g} s)")
        return None

    def _viewer_problem(self, kind: str) -> str | None:
        limit = self.settings.max_viewer_sessions
        if kind == "whep" and self.count("whep") >= limit:
            return f"too many WHEP viewers (limit {limit}, OOBLEX_MAX_VIEWER_SESSIONS)"
        return None

    def _make_room(self, client: Client) -> str | None:
        """At a gateway-wide cap, evict the oldest unconnected session of the client with the most of them,
        if it has more than ``client``; the problem if that frees nothing."""
        s = self.settings
        pending = [x for x in self.items.values() if not x.connected]
        if len(self.items) >= s.max_sessions:
            problem = f"too many WebRTC sessions (limit {s.max_sessions}, OOBLEX_MAX_SESSIONS)"
        elif len(pending) >= s.max_pending_sessions:
            problem = (f"too many WebRTC sessions that have not connected yet (limit {s.max_pending_sessions}, "
                       "OOBLEX_MAX_PENDING_SESSIONS)")
        else:
            return None
        per_client = Counter(x.client.address for x in pending)
        greediest, most = per_client.most_common(1)[0] if per_client else ("", 0)
        if most <= per_client[client.address]:
            return problem
        victim = min((x for x in pending if x.client.address == greediest), key=lambda x: x.created)
        log.info("%s session %s of %s: evicted, unconnected, for a new session of %s", victim.kind, victim.id,
                 greediest, client.address)
        victim.evict()
        return None

    def add(self, kind: str, client: Client, target: str, pc: RTCPeerConnection, stream: Stream,
            owns_stream: bool) -> Session:
        self.check_room(kind, client)
        session = Session(self, kind, client, target, pc, stream, owns_stream)
        self.items[session.id] = session
        self.opened += 1
        return session

    def owned(self, kind: str, session_id: str, target: str, caller: Client | None) -> Session:
        """The ``kind`` session ``session_id`` if it was opened on ``target`` (the URL's thread or stream) by
        ``caller``'s credential (None: any, a ``control`` token); else ``UnknownSession``, exactly as for an
        id that does not exist, so nobody learns of sessions not theirs."""
        session = self.items.get(session_id)
        if (session is None or session.kind != kind or session.target != target
                or (caller is not None and session.client.owner != caller.owner)):
            raise unknown(kind, session_id)
        return session

    def count(self, kind: str) -> int:
        return sum(s.kind == kind for s in self.items.values())

    async def close_all(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self.items.values())))


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
