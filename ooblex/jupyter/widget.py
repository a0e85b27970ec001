"""``LiveWidget``: webcam (or kernel-side source) and processed output side by side, with live controls.

Two paths carry frames (``docs/jupyter.md``): the **side channel** (``channel.py``: the browser's
WebSocket, proxied by the Jupyter server extension to a Unix socket served by the live loop thread,
so frames keep flowing while a cell runs) and, where that is not reachable, the widget's own
**comm** (works wherever the notebook does, but the kernel reads it only between cells). Messages
and frames are the same on both (``frames.py``); the browser says which path it uses. At most
``max_in_flight`` browser frames are unanswered at once; a reply's ``ack`` names the newest frame it
covers (older ones were dropped: latest-frame-wins). Compare mode runs one lane per thread on the
same frames.

Telling the truth (``live.js``): the kernel sends stats twice a second while running and a ``beat``
every 2 s while stopped, so a view can tell a silent kernel from a stopped one; ``poster`` keeps a small
JPEG of the newest input | output(s), refreshed every ``POSTER_EVERY_S`` while frames flow, which the
view saves with the notebook and shows when it is reopened without this kernel.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import anywidget
import cv2
import numpy as np
import traitlets as t

from .. import jpeg
from ..thread import TensorThread
from . import frames
from .channel import Connection, Peer, shared_channel
from .controls import controls
from .deployed import DeployedThread
from .feed import KernelFeed
from .loop import LoopThread, shared_loop
from .recording import Progress, Recording, Shot, in_kernel
from .session import Intake, LiveSession

log = logging.getLogger("ooblex.live")

START_TIMEOUT_S = 120.0
#: How often the poster (the newest frames, kept in a saved notebook) is refreshed while frames flow.
POSTER_EVERY_S = 2.0
#: Poster height in pixels (its width follows: input and each output side by side) and JPEG quality.
POSTER_HEIGHT = 240
POSTER_QUALITY = 70
#: Seconds between heartbeats while stopped (while running the stats messages, twice a second, are the beat).
BEAT_EVERY_S = 2.0


class LiveWidget(anywidget.AnyWidget):
    """Created by ``ob.live``; see docs/jupyter.md."""

    _esm = Path(__file__).with_name("live.js")
    _css = Path(__file__).with_name("live.css")

    title = t.Unicode("").tag(sync=True)
    version = t.Int(1).tag(sync=True)
    lanes = t.List([]).tag(sync=True)      # per thread: name, label, controls
    values = t.List([]).tag(sync=True)     # per thread: its parameter values
    running = t.Bool(False).tag(sync=True)
    source_kind = t.Unicode("browser").tag(sync=True)
    source_label = t.Unicode("webcam").tag(sync=True)
    constraints = t.Dict({}).tag(sync=True)
    quality = t.Float(0.8).tag(sync=True)
    codec = t.Unicode("jpeg").tag(sync=True)
    max_in_flight = t.Int(1).tag(sync=True)
    channel = t.Dict({}).tag(sync=True)    # {"widget": id} and, when the kernel serves a side channel, "kernel": id
    poster = t.Bytes(b"").tag(sync=True)   # JPEG of the newest input | output(s): the saved notebook's picture
    status = t.Unicode("").tag(sync=True)

    def __init__(self, threads: list[TensorThread], source: Any = "webcam", *, params: dict[str, Any] | None = None,
                 constraints: dict[str, Any] | None = None, max_in_flight: int = 1, max_latency_ms: float = 500.0,
                 quality: float = 0.8, codec: str = "jpeg", autostart: bool = True, loop_file: bool = True,
                 max_record_s: float = 60.0) -> None:
        if not threads:
            raise ValueError("ob.live needs at least one tensor thread")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if codec not in frames.CODECS:
            raise ValueError(f"codec must be one of {frames.CODECS}, got {codec!r}")
        values = _split_params(threads, params or {})
        super().__init__(title=_title(threads), lanes=_lanes(threads), values=values, max_in_flight=max_in_flight,
                         quality=quality, codec=codec, constraints=constraints or {})
        self.threads = list(threads)
        self.max_record_s = max_record_s
        self.snapshots: list[Shot | list[Shot]] = []
        self.recordings: list[Recording | list[Recording]] = []
        self.counters = {"bad_messages": 0, "refused": 0}
        self._loop: LoopThread = shared_loop()
        self._pool = cf.ThreadPoolExecutor(2, thread_name_prefix="ooblex-live-codec")
        self._broadcast = _Broadcast(self)
        self._comm_peer = _CommPeer(self)
        self._conns: set[Connection] = set()
        self._browser_path = ""  # what the browser last said over the comm ("comm: <why>")
        self._button_recording: list[Recording] | None = None
        self._sessions = [LiveSession(i, self._broadcast, self._pool, max_in_flight=max_in_flight,
                                      max_latency_ms=max_latency_ms, codec=codec, quality=round(quality * 100))
                          for i in range(len(threads))]
        self._intake = Intake(self._pool, lambda: self._sessions, self.counters, self._bad)
        self._feed: KernelFeed | None = None
        self._source: Any = None
        self._loop_file = loop_file
        self._closed = False
        self._poster_seqs: list[int | None] = []
        for session, thread, v in zip(self._sessions, threads, values, strict=True):
            self._loop.run(session.start(thread, v)).result(START_TIMEOUT_S)
        self._ticker = self._loop.run(self._tick())
        side = shared_channel()
        if side is not None and side.kernel_id:
            side.register(self.model_id, self)
            self.channel = {"kernel": side.kernel_id, "widget": self.model_id}
        else:
            self.channel = {"widget": self.model_id}
        self.on_msg(self._on_custom)
        self.observe(self._on_values, "values")
        self.observe(self._on_running, "running")
        self.set_source(source)
        self.running = autostart

    # --- public API --------------------------------------------------------------------------
    @property
    def thread(self) -> TensorThread:
        """The (first) tensor thread."""
        return self.threads[0]

    @property
    def compare(self) -> bool:
        """Several threads on the same frames (``ob.live([a, b])``)."""
        return len(self.threads) > 1

    @property
    def params(self) -> dict[str, Any] | list[dict[str, Any]]:
        """Current parameter values (one dict per thread in compare mode)."""
        return self._one(list(self.values))

    @property
    def transport(self) -> str:
        """How frames reach the kernel: ``side channel``, ``comm: <why>``, or why none do yet."""
        if self.source_kind == "kernel":
            return "kernel-side source"
        if self._conns:
            return "side channel"
        return self._browser_path or "no browser view connected yet"

    def set_source(self, source: Any) -> None:
        """Switch between the browser webcam (``"webcam"``) and a kernel-side source (path, URL, index)."""
        kind, label = _describe_source(source)
        was_running = self.running
        self._stop_feed()
        self._source = source
        if kind == "browser" and hasattr(source, "constraints"):
            self.constraints = _camera_stream_constraints(source)
        self.source_kind, self.source_label = kind, label
        if was_running and kind == "kernel":
            self._start_feed()

    def swap(self, threads: list[TensorThread], params: dict[str, Any] | None = None) -> None:
        """Run ``threads`` (one per lane) from now on, keeping parameter values that still apply."""
        if len(threads) != len(self.threads):
            raise ValueError(f"this widget compares {len(self.threads)} thread(s), not {len(threads)}")
        kept = []
        for thread, old in zip(threads, self.values, strict=True):
            keep = {}
            for name, value in old.items():
                if name in thread.params:
                    with contextlib.suppress(ValueError):
                        keep[name] = thread.params[name].coerce(value)
            kept.append(thread.resolve_params(keep))
        values = _split_params(threads, params or {}, base=kept)
        for session, thread, v in zip(self._sessions, threads, values, strict=True):
            self._loop.run(session.start(thread, v)).result(START_TIMEOUT_S)
        self.threads = list(threads)
        with self.hold_sync():
            self.title = _title(threads)
            self.lanes = _lanes(threads)
            self.values = values
            self.version += 1
            self.status = f"swapped in new code (version {self.version})"
        self._broadcast.send({"type": "reset"}, [])

    def set_params(self, **params: Any) -> dict[str, Any] | list[dict[str, Any]]:
        """Change parameters while frames flow (same as moving the controls). In compare mode each
        value goes to every thread that declares it."""
        per_lane = _split_params(self.threads, params, base=list(self.values))
        self.values = per_lane
        return self._one(per_lane)

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def snapshot(self, timeout: float = 30.0) -> Shot | list[Shot]:
        """The newest processed frame: ``.input``/``.output`` numpy images (RGB), ``.result``, ``.error``.
        Waits up to ``timeout`` s for a first frame (in compare mode: one ``Shot`` per thread)."""
        if any(s.latest is None for s in self._sessions):
            self._wait_for_frame(lambda: all(s.latest is not None for s in self._sessions), timeout, "snapshot()")
        return self._one([s.latest for s in self._sessions])

    def record(self, seconds: float, *, max_frames: int = 300, timeout: float = 30.0, block: bool | None = None,
               progress: bool | None = None) -> Recording | list[Recording]:
        """Collect processed frames for ``seconds``, starting with the next frame (waits up to ``timeout``
        s for it). Blocks until done, with a progress line in the notebook, unless the browser's frames
        travel over the comm (they cannot arrive while this cell runs): then it fills in the background."""
        if not self.running:
            raise RuntimeError("the live widget is stopped: call start() (or press Start) before record()")
        if block is None:
            block = not (self.source_kind == "browser" and not self._conns and self._browser_path.startswith("comm"))
        if block:
            first, after = self._sessions[0], self._sessions[0].delivered
            self._wait_for_frame(lambda: first.delivered > after, timeout, "record()")
        recs = [Recording(seconds, max_frames, name=lane["label"] if self.compare else "") for lane in self.lanes]
        for session, rec in zip(self._sessions, recs, strict=True):
            self._loop.call(self._begin, session, rec)
        shown = Progress(recs) if (in_kernel() if progress is None else progress) else None
        if not block:
            if shown is not None:
                shown.follow()
            return self._one(recs)
        while not all(r.done for r in recs):
            time.sleep(0.2)
            if shown is not None:
                shown.update()
        if shown is not None:
            shown.update()
        return self._one(recs)

    def stats(self) -> dict[str, Any] | list[dict[str, Any]]:
        """fps, per-stage latency percentiles (ms), browser round trip (when measured) and counters."""
        lanes = self._loop.run(_call(lambda: [s.describe() for s in self._sessions])).result(5)
        return self._one([{**d, **self.counters, "transport": self.transport} for d in lanes])

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_feed()
        self._ticker.cancel()
        side = shared_channel()
        if side is not None:
            side.unregister(self.model_id)
        for conn in list(self._conns):
            self._loop.call(conn.writer.close)
        if not self._loop.here:
            for session in self._sessions:
                with contextlib.suppress(Exception):
                    self._loop.run(session.close()).result(10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self.running else "stopped"
        return f"<LiveWidget {self.title} v{self.version} · {self.source_label} · {state}>"

    # --- side channel (called on the loop thread) ----------------------------------------------
    def attach(self, conn: Connection) -> None:
        self._conns.add(conn)

    def detach(self, conn: Connection) -> None:
        self._conns.discard(conn)

    def on_channel(self, conn: Connection, header: dict[str, Any], payloads: list[memoryview]) -> None:
        kind = header.get("type")
        if kind == "frame":
            self._frame(header, payloads, conn)
        elif kind == "params":
            self._channel_params(conn, header)
        else:
            self._control(header, conn)

    def _channel_params(self, conn: Connection, header: dict[str, Any]) -> None:
        """A control moved: applied at once (the comm's state update arrives between cells)."""
        lane, values = header.get("lane"), header.get("params")
        if not (isinstance(lane, int) and 0 <= lane < len(self._sessions) and isinstance(values, dict)):
            return self._bad(f"params message for lane {lane!r} with {type(values).__name__}")
        session = self._sessions[lane]
        try:
            resolved = self.threads[lane].resolve_params(values)
        except ValueError as exc:
            current = session.stream.params if session.stream is not None else {}
            return conn.send({"type": "params", "lane": lane, "params": current, "error": str(exc)}, [])
        session.set_params(resolved)

    # --- comm (called on the kernel's main thread, between cells) -------------------------------
    def _on_custom(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        if not isinstance(content, dict):
            return self._bad(f"content is {type(content).__name__}, not an object")
        kind = content.get("type")
        if kind == "frame":
            return self._frame(content, buffers, self._comm_peer)
        if kind == "hello":
            why = content.get("why")
            self._browser_path = f"comm: {why}" if isinstance(why, str) and why else "comm"
            return None
        self._loop.call(self._control, content, self._comm_peer)
        return None

    # --- messages from either path -------------------------------------------------------------
    def _frame(self, content: dict[str, Any], buffers: list[Any], origin: Peer) -> None:
        try:
            msg = frames.incoming(content, buffers)
        except frames.BadMessage as exc:
            self._bad(str(exc))
            if exc.seq is not None:
                origin.send({"type": "ack", "ack": exc.seq, "lane": None}, [])
            return
        if not self.running or self.source_kind != "browser":
            return origin.send({"type": "ack", "ack": msg.seq, "lane": None}, [])
        self._loop.call(self._intake.submit, msg, time.time(), origin)

    def _control(self, content: dict[str, Any], origin: Peer) -> None:
        """Small messages (loop thread): round-trip samples and the Snapshot/Record buttons."""
        kind = content.get("type")
        if kind == "rtt":
            samples, lane = content.get("ms"), content.get("lane", 0)
            if not isinstance(samples, list) or not isinstance(lane, int) or not 0 <= lane < len(self._sessions):
                return self._bad("rtt message without a list 'ms' and a valid 'lane'")
            return self._sessions[lane].add_rtt(samples)
        if kind == "snapshot":
            shots = [s.latest for s in self._sessions]
            if any(s is None for s in shots):
                return origin.send({"type": "note", "text": "no processed frame to keep yet"}, [])
            self.snapshots.append(self._one(shots))
            return origin.send({"type": "note", "text": f"kept as live.snapshots[{len(self.snapshots) - 1}]"}, [])
        if kind == "record":
            return self._button_record(bool(content.get("on")), origin)
        return self._bad(f"unknown message type {kind!r}")

    def _button_record(self, on: bool, origin: Peer) -> None:
        if self._button_recording is not None:
            for rec in self._button_recording:
                rec.stop()
            n = len(self._button_recording[0])
            self._button_recording = None
            origin.send({"type": "note", "text": f"recorded {n} frames: live.recordings[{len(self.recordings) - 1}]"},
                        [])
        if on:
            recs = [Recording(self.max_record_s, 10**6, name=lane["label"] if self.compare else "")
                    for lane in self.lanes]
            for session, rec in zip(self._sessions, recs, strict=True):
                self._begin(session, rec)
            self._button_recording = recs
            self.recordings.append(self._one(recs))

    def _begin(self, session: LiveSession, rec: Recording) -> None:
        """Start filling ``rec`` (loop thread), with the kernel source's sound of the last moments: its
        first frames were captured before it started."""
        if self._feed is not None:
            for at, samples in self._feed.recent_sound():
                rec.add_sound(samples, at)
        session.recordings.append(rec)

    def _bad(self, why: str) -> None:
        self.counters["bad_messages"] += 1
        log.warning("ooblex live widget: ignoring a bad message: %s", why)

    def _wait_for_frame(self, ready: Any, timeout: float, what: str) -> None:
        if not self.running:
            raise RuntimeError(f"{what}: the live widget is stopped: call start() (or press Start) first")
        if not self._sessions[0].wait_frame(ready, timeout):
            raise TimeoutError(f"{what}: no processed frame within {timeout:g} s: {self._no_frames_hint()}")

    def _no_frames_hint(self) -> str:
        if self.source_kind == "kernel":
            return f"the source {self.source_label} gives no frames ({self.status or 'no status'})"
        if self._conns:
            return "the browser is connected over the side channel but sends no frames: allow the camera, " \
                   "or pick another one in the widget"
        if self._browser_path.startswith("comm"):
            return f"this widget's frames travel over the {self._browser_path}; the kernel reads the comm only " \
                   "between cells, so call this in a later cell, or enable the ooblex server extension " \
                   "(docs/jupyter.md)"
        return "no browser view of the widget is connected: is its output shown and the camera allowed? " \
               "(Without the ooblex server extension, browser frames arrive only between cells.)"

    # --- plumbing ------------------------------------------------------------------------------
    def _one(self, per_lane: list[Any]) -> Any:
        return per_lane if self.compare else per_lane[0]

    def _send_comm(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        """Thread-safe: ipykernel's iopub socket accepts sends from any thread."""
        if not self._closed and self.comm is not None:
            self.send(content, buffers or None)

    def _on_values(self, change: dict[str, Any]) -> None:
        new = change["new"]
        try:
            if not isinstance(new, list) or len(new) != len(self.threads):
                raise ValueError(f"expected {len(self.threads)} parameter set(s)")
            resolved = [th.resolve_params(dict(v)) for th, v in zip(self.threads, new, strict=True)]
        except (ValueError, TypeError) as exc:
            self.status = str(exc)
            self.values = change["old"]
            return
        if resolved != new:
            self.values = resolved  # coerced (e.g. "3" -> 3); observed again with equal values
            return
        for session, v in zip(self._sessions, resolved, strict=True):
            self._loop.call(_quiet, session.set_params, v)

    def _on_running(self, change: dict[str, Any]) -> None:
        if self.source_kind == "kernel":
            self._start_feed() if change["new"] else self._stop_feed()
        self.status = "running" if change["new"] else "stopped"

    def _start_feed(self) -> None:
        if self._feed is None or not self._feed.running:
            self._feed = KernelFeed(self._source, lambda img, ts: self._loop.call(self._fan_out, img, ts),
                                    self._feed_ended, lambda pcm, at: self._loop.call(self._hear, pcm, at),
                                    loop=self._loop_file)

    def _fan_out(self, image: Any, captured: float) -> None:
        for session in self._sessions:
            asyncio.ensure_future(session.submit(image, captured))

    def _hear(self, samples: np.ndarray, at: float) -> None:
        for session in self._sessions:
            for rec in session.recordings:
                rec.add_sound(samples, at)

    def _stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None

    def _feed_ended(self, reason: str) -> None:
        if reason != "stopped" and not self._closed:
            self.status = reason
            self.running = False

    async def _tick(self) -> None:
        """Push stats to the browser twice a second while running (a heartbeat every ``BEAT_EVERY_S`` while
        stopped), refresh the poster, and end a Record-button recording at its limit."""
        beat = poster = 0.0
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            recs = self._button_recording
            if recs is not None and all(r.done for r in recs):
                self._button_record(False, self._broadcast)
                self._broadcast.send({"type": "recording", "on": False}, [])
            if self.running:
                rec = {"frames": len(recs[0]), "seconds": round(recs[0].elapsed, 1)} if recs else None
                self._broadcast.send({"type": "stats", "lanes": [s.describe() for s in self._sessions],
                                      "counters": self.counters, "recording": rec, "running": True}, [])
                beat = now
            elif now - beat >= BEAT_EVERY_S:
                self._broadcast.send({"type": "beat", "running": False}, [])
                beat = now
            if now - poster >= POSTER_EVERY_S:
                poster = now
                await self._refresh_poster()

    async def _refresh_poster(self) -> None:
        shots = [s.latest for s in self._sessions]
        seqs = [None if s is None else s.seq for s in shots]
        if shots[0] is None or seqs == self._poster_seqs:
            return
        self._poster_seqs = seqs
        try:
            data = await asyncio.get_running_loop().run_in_executor(self._pool, _poster, shots)
        except Exception as exc:  # noqa: BLE001 - closing (pool shut down) or an odd frame: the ticker goes on
            log.debug("ooblex live widget: no poster: %s", exc)
            return
        if data and not self._closed:
            self.poster = data


class _CommPeer:
    """Replies to frames that came over the comm."""

    def __init__(self, widget: LiveWidget) -> None:
        self.widget = widget

    def send(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        self.widget._send_comm(content, buffers)


class _Broadcast:
    """Messages for every view: each side-channel connection, or the comm when there is none."""

    def __init__(self, widget: LiveWidget) -> None:
        self.widget = widget

    def send(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        conns = list(self.widget._conns)
        for conn in conns:
            conn.send(content, buffers)
        if not conns:
            self.widget._send_comm(content, buffers)


async def _call(fn: Any) -> Any:
    return fn()


def _quiet(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ValueError as exc:
        log.warning("ooblex live widget: %s", exc)


def _poster(shots: list[Shot | None]) -> bytes:
    """The newest input and each lane's output side by side, ``POSTER_HEIGHT`` pixels high, as a JPEG."""
    images = [shots[0].input] if shots[0] is not None else []
    images += [None if s is None else s.output for s in shots]
    scaled = [cv2.resize(im, (max(1, round(im.shape[1] * POSTER_HEIGHT / im.shape[0])), POSTER_HEIGHT),
                         interpolation=cv2.INTER_AREA)
              for im in images if isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3
              and im.shape[2] == 3 and im.size]
    if not scaled:
        return b""
    return jpeg.encode(np.ascontiguousarray(np.concatenate(scaled, axis=1)), POSTER_QUALITY)


def _title(threads: list[TensorThread]) -> str:
    return " vs ".join(th.name for th in threads)


def _lanes(threads: list[TensorThread]) -> list[dict[str, Any]]:
    return [{"name": th.name, "label": _label(th, i, threads), "controls": controls(th)}
            for i, th in enumerate(threads)]


def _label(thread: TensorThread, i: int, threads: list[TensorThread]) -> str:
    """Where each lane runs when some run on the cluster ("blur (notebook)", "blur@3 (cluster)"); else the
    name, numbered if two lanes share it."""
    if any(isinstance(th, DeployedThread) for th in threads):
        return f"{thread.name} ({'cluster' if isinstance(thread, DeployedThread) else 'notebook'})"
    names = [th.name for th in threads]
    return f"{thread.name} ({i + 1})" if names.count(thread.name) > 1 else thread.name


def _split_params(threads: list[TensorThread], params: dict[str, Any],
                  base: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per thread: its values with ``params`` applied where it declares them (each name must be declared
    by at least one thread)."""
    unknown = [k for k in params if not any(k in th.params for th in threads)]
    if unknown:
        names = " / ".join(th.name for th in threads)
        known = sorted({p for th in threads for p in th.params}) or ["none"]
        raise ValueError(f"{names} has no parameter {unknown[0]!r} (parameters: {', '.join(known)})")
    return [th.resolve_params({k: v for k, v in params.items() if k in th.params},
                              base=None if base is None else dict(base[i])) for i, th in enumerate(threads)]


def _describe_source(source: Any) -> tuple[str, str]:
    if isinstance(source, str) and source in ("webcam", "browser"):
        return "browser", "webcam (browser)"
    if type(source).__name__ == "CameraStream" and hasattr(source, "constraints"):
        return "browser", "ipywebrtc CameraStream (browser)"
    if isinstance(source, int):
        return "kernel", f"camera {source} (kernel)"
    return "kernel", str(source) if isinstance(source, (str, Path)) else type(source).__name__


def _camera_stream_constraints(stream: Any) -> dict[str, Any]:
    """An ipywebrtc ``CameraStream``'s getUserMedia video constraints (its own capture is not used)."""
    video = (getattr(stream, "constraints", None) or {}).get("video", True)
    return video if isinstance(video, dict) else {}


__all__ = ["LiveWidget", "Recording", "Shot"]
