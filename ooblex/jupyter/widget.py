"""``LiveWidget``: webcam (or kernel-side source) and processed output side by side, with live controls.

Transport is the widget's own comm channel, so it works wherever the notebook does (JupyterLab,
Notebook 7, a remote JupyterHub): the browser sends JPEG frames as binary buffers, at most
``max_in_flight`` unanswered at once; the kernel answers each processed frame with a JPEG whose
``ack`` names the newest browser frame it covers (older ones were dropped: latest-frame-wins).
The comm handler only hands bytes to the live loop thread, so the kernel stays responsive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import anywidget
import traitlets as t

from ..thread import TensorThread
from .controls import controls
from .feed import KernelFeed
from .loop import LoopThread, shared_loop
from .session import LiveSession, Recording, Shot

log = logging.getLogger("ooblex.live")

#: Largest browser frame accepted (bytes); a 1080p JPEG is well under this.
MAX_FRAME_BYTES = 8 << 20
START_TIMEOUT_S = 120.0


class LiveWidget(anywidget.AnyWidget):
    """Created by ``ob.live``; see docs/jupyter.md."""

    _esm = Path(__file__).with_name("live.js")
    _css = Path(__file__).with_name("live.css")

    thread_name = t.Unicode("").tag(sync=True)
    version = t.Int(1).tag(sync=True)
    controls = t.List([]).tag(sync=True)
    params = t.Dict({}).tag(sync=True)
    running = t.Bool(False).tag(sync=True)
    source_kind = t.Unicode("browser").tag(sync=True)
    source_label = t.Unicode("webcam").tag(sync=True)
    constraints = t.Dict({}).tag(sync=True)
    quality = t.Float(0.8).tag(sync=True)
    max_in_flight = t.Int(1).tag(sync=True)
    status = t.Unicode("").tag(sync=True)

    def __init__(self, thread: TensorThread, source: Any = "webcam", *, params: dict[str, Any] | None = None,
                 constraints: dict[str, Any] | None = None, max_in_flight: int = 1, max_latency_ms: float = 500.0,
                 quality: float = 0.8, autostart: bool = True, loop_file: bool = True) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        values = thread.resolve_params(params or {})
        super().__init__(thread_name=thread.name, controls=controls(thread), params=values,
                         max_in_flight=max_in_flight, quality=quality, constraints=constraints or {})
        self.thread = thread
        self._loop: LoopThread = shared_loop()
        self._session = LiveSession(self._post, max_in_flight=max_in_flight, max_latency_ms=max_latency_ms)
        self._feed: KernelFeed | None = None
        self._source: Any = None
        self._loop_file = loop_file
        self._closed = False
        self._loop.run(self._session.start(thread, values)).result(START_TIMEOUT_S)
        self._ticker = self._loop.run(self._tick())
        self.on_msg(self._on_custom)
        self.observe(self._on_params, "params")
        self.observe(self._on_running, "running")
        self.set_source(source)
        self.running = autostart

    # --- public API --------------------------------------------------------------------------
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

    def swap(self, thread: TensorThread, params: dict[str, Any] | None = None) -> None:
        """Run ``thread`` from now on, keeping current parameter values that still apply."""
        keep = {}
        for name, value in self.params.items():
            if name in thread.params:
                with contextlib.suppress(ValueError):
                    keep[name] = thread.params[name].coerce(value)
        values = thread.resolve_params({**keep, **(params or {})})
        self._loop.run(self._session.start(thread, values)).result(START_TIMEOUT_S)
        self.thread = thread
        with self.hold_sync():
            self.thread_name = thread.name
            self.controls = controls(thread)
            self.params = values
            self.version += 1
            self.status = f"swapped in new code (version {self.version})"
        self._post({"type": "reset"}, [])

    def set_params(self, **params: Any) -> dict[str, Any]:
        """Change parameters while frames flow (same as moving the controls)."""
        values = self.thread.resolve_params(params, base=dict(self.params))
        self.params = values
        return values

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def snapshot(self, timeout: float = 5.0) -> Shot:
        """The newest processed frame: ``.input``/``.output`` numpy images (RGB), ``.result``, ``.error``."""
        if self._session.latest is None and self.source_kind == "kernel" and self.running:
            self._session.got_shot.wait(timeout)
        shot = self._session.latest
        if shot is None:
            hint = ("press Start and allow the camera, then call snapshot() in a later cell (browser frames "
                    "cannot arrive while this cell runs)") if self.source_kind == "browser" else "is it running?"
            raise RuntimeError(f"no processed frame yet: {hint}")
        return shot

    def record(self, seconds: float, *, block: bool | None = None, max_frames: int = 300) -> Recording:
        """Collect processed frames for ``seconds``. Blocks for kernel-side sources; for the browser
        webcam it returns at once (frames arrive only while no cell runs) - read it in a later cell."""
        if block is None:
            block = self.source_kind == "kernel"
        if block and self.source_kind == "browser":
            raise ValueError("record(block=True) cannot receive browser frames while this cell runs: "
                             "use rec = live.record(s) and look at rec in a later cell")
        if not self.running:
            raise RuntimeError("the live widget is stopped: call start() (or press Start) before record()")
        rec = Recording(seconds, max_frames)
        self._loop.call(self._session.recordings.append, rec)
        return rec.wait() if block else rec

    def stats(self) -> dict[str, Any]:
        """fps, per-stage latency percentiles (ms), browser round trip (when measured) and counters."""
        return self._loop.run(_call(self._session.describe)).result(5)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_feed()
        self._ticker.cancel()
        if not self._loop.here:
            with contextlib.suppress(Exception):
                self._loop.run(self._session.close()).result(10)
        super().close()

    # --- plumbing ------------------------------------------------------------------------------
    def _post(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        """Thread-safe: ipykernel's iopub socket accepts sends from any thread."""
        if not self._closed and self.comm is not None:
            self.send(content, buffers or None)

    def _on_custom(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        if not isinstance(content, dict):
            return self._session.bad_message(f"content is {type(content).__name__}, not an object")
        kind = content.get("type")
        if kind == "frame":
            return self._on_frame(content, buffers)
        if kind == "rtt":
            samples = content.get("ms")
            if not isinstance(samples, list):
                return self._session.bad_message("rtt message without a list 'ms'")
            return self._loop.call(self._session.add_rtt, samples)
        self._session.bad_message(f"unknown message type {kind!r}")

    def _on_frame(self, content: dict[str, Any], buffers: list[Any]) -> None:
        seq = content.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool):
            return self._session.bad_message(f"frame message with seq {seq!r} (expected an integer)")
        if len(buffers) != 1:
            self._session.bad_message(f"frame {seq} carries {len(buffers)} buffers (expected one JPEG)")
            return self._post({"type": "ack", "ack": seq}, [])
        data = bytes(buffers[0])
        if not data or len(data) > MAX_FRAME_BYTES:
            self._session.bad_message(f"frame {seq} has {len(data)} bytes (expected 1..{MAX_FRAME_BYTES})")
            return self._post({"type": "ack", "ack": seq}, [])
        if not self.running or self.source_kind != "browser":
            return self._post({"type": "ack", "ack": seq}, [])
        self._loop.call(self._session.submit_jpeg, data, seq, time.time())

    def _on_params(self, change: dict[str, Any]) -> None:
        try:
            values = self.thread.resolve_params(dict(change["new"]))
        except ValueError as exc:
            self.status = str(exc)
            self.params = change["old"]
            return
        if values != change["new"]:
            self.params = values  # coerced (e.g. "3" -> 3); observed again with equal values
            return
        self._loop.call(_quiet, self._session.set_params, values)

    def _on_running(self, change: dict[str, Any]) -> None:
        if self.source_kind == "kernel":
            self._start_feed() if change["new"] else self._stop_feed()
        self.status = "running" if change["new"] else "stopped"

    def _start_feed(self) -> None:
        if self._feed is None or not self._feed.running:
            self._feed = KernelFeed(self._source, lambda img, ts: self._loop.call(self._session.submit_image, img, ts),
                                    self._feed_ended, loop=self._loop_file)

    def _stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.stop()
            self._feed = None

    def _feed_ended(self, reason: str) -> None:
        if reason != "stopped" and not self._closed:
            self.status = reason
            self.running = False

    async def _tick(self) -> None:
        """Push stats to the browser twice a second while running."""
        while True:
            await asyncio.sleep(0.5)
            if self.running:
                self._post({"type": "stats", "stats": self._session.describe()}, [])


async def _call(fn: Any) -> Any:
    return fn()


def _quiet(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except ValueError as exc:
        log.warning("ooblex live widget: %s", exc)


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
