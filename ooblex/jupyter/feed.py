"""Kernel-side sources for the live widget: a video file, RTSP/HTTP-MJPEG URL or a camera of the kernel's machine.

For machines without a browser webcam (remote servers, headless notebook runs). A reader thread
pulls frames from ``ooblex.media.open_source``, paces files to their frame rate (looping them, so
a short clip stands in for a camera) and hands each frame to the session on the loop thread; the
live stream keeps only the newest, so a slow model never builds a backlog.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..media import Source, open_source

log = logging.getLogger("ooblex.live")

Push = Callable[[np.ndarray, float], None]


class KernelFeed:
    """Reads ``spec`` on a daemon thread and calls ``push(image, captured)`` for every frame until stopped."""

    def __init__(self, spec: Any, push: Push, on_end: Callable[[str], None], loop: bool = True) -> None:
        self.spec = spec
        self.push = push
        self.on_end = on_end
        self.loop = loop and not isinstance(spec, Source)
        self.source = open_source(spec)  # raises SourceError now, in the user's cell, if it cannot open
        self.frames = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ooblex-live-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        reason = "stopped"
        try:
            while not self._stop.is_set():
                self._play(self.source)
                if self._stop.is_set() or self.source.live or not self.loop:
                    reason = "stopped" if self._stop.is_set() else "source ended"
                    break
                self.source.close()
                self.source = open_source(self.spec)
        except Exception as exc:  # noqa: BLE001 - reported in the widget, not lost in a thread
            log.warning("ooblex live widget: source %r failed: %s", self.spec, exc)
            reason = f"source failed: {exc}"
        finally:
            self.source.close()
        self.on_end(reason)

    def _play(self, source: Source) -> None:
        period = 0.0 if source.live else 1.0 / (source.fps or 30.0)
        next_t = time.monotonic()
        for image, captured in source:
            if self._stop.is_set():
                return
            if period:
                next_t += period
                delay = next_t - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_t = time.monotonic()  # fell behind: do not try to catch up with a burst
                captured = time.time()
            self.frames += 1
            self.push(image, captured)
