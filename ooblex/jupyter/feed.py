"""Kernel-side sources for the live widget: a video file, RTSP/HTTP-MJPEG URL or a camera of the kernel's machine.

For machines without a browser webcam (remote servers, headless notebook runs). A reader thread
pulls frames from ``ooblex.media.open_source``, paces files to their frame rate (looping them, so
a short clip stands in for a camera) and hands each frame to the session on the loop thread; the
live stream keeps only the newest, so a slow model never builds a backlog. A file's soundtrack is
decoded along, as far as the frames have got, and handed on stamped with the time it is heard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import av
import numpy as np

from ..media import Source, open_source
from ..media.audio import AudioInput, decoded
from ..media.sources import reason
from .recording import SOUND_LEAD_S, SOUND_RATE

log = logging.getLogger("ooblex.live")

Push = Callable[[np.ndarray, float], None]
#: ``hear(samples, at)``: int16 (n, 2) samples at ``SOUND_RATE``, first heard at ``at`` (Unix seconds).
Hear = Callable[[np.ndarray, float], None]


class KernelFeed:
    """Reads ``spec`` on a daemon thread and calls ``push(image, captured)`` for every frame, and
    ``hear(samples, at)`` for its sound, until stopped."""

    def __init__(self, spec: Any, push: Push, on_end: Callable[[str], None], hear: Hear, loop: bool = True) -> None:
        self.spec = spec
        self.push = push
        self.on_end = on_end
        self.hear = hear
        self.loop = loop and not isinstance(spec, Source)
        self.source = open_source(spec)  # raises SourceError now, in the user's cell, if it cannot open
        self.frames = 0
        self._recent: deque[tuple[float, np.ndarray]] = deque()
        self._recent_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ooblex-live-source", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def recent_sound(self) -> list[tuple[float, np.ndarray]]:
        """The sound of the last ``SOUND_LEAD_S`` seconds, as ``(at, samples)``: for a recording that starts now."""
        with self._recent_lock:
            return list(self._recent)

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
        sound = Soundtrack(source.audio, self._heard) if period and source.audio is not None else None
        next_t = time.monotonic()
        try:
            for n, (image, captured, pts) in enumerate(source.timed()):
                if self._stop.is_set():
                    return
                if period:
                    next_t += period
                    delay = next_t - time.monotonic()
                    if delay > 0:
                        self._stop.wait(delay)
                    else:
                        next_t = time.monotonic()  # fell behind: do not try to catch up with a burst
                    late = time.monotonic() - next_t
                    captured = time.time()
                    if sound is not None:  # on the schedule's clock, so a late wake-up does not shift the sound
                        sound.play(n * period if pts is None else pts - sound.origin, period, captured - late)
                self.frames += 1
                self.push(image, captured)
        finally:
            if sound is not None:
                sound.close()

    def _heard(self, samples: np.ndarray, at: float) -> None:
        with self._recent_lock:
            self._recent.append((at, samples))
            while self._recent[0][0] < at - SOUND_LEAD_S:
                self._recent.popleft()
        self.hear(samples, at)


class Soundtrack:
    """A file's audio played along with its frames: decoded only as far as the newest frame, each
    chunk stamped with the wall-clock time it is heard (the clock of the frames' ``captured``)."""

    def __init__(self, audio: AudioInput, hear: Hear) -> None:
        self.origin = audio.origin
        self.path = audio.path
        self.hear = hear
        self._chunks: Generator[av.AudioFrame, None, None] = decoded(audio, SOUND_RATE, "stereo", "s16",
                                                                     SOUND_RATE // 50)
        self._pending: av.AudioFrame | None = None

    def play(self, media_t: float, period: float, wall: float) -> None:
        """The frame at ``media_t`` (seconds from the file's start) is shown at ``wall``: hand on the sound
        up to the next frame, on the same offset (a stall shifts the rest of the sound with the frames).
        A soundtrack that cannot be read is dropped with a warning; the pictures go on."""
        while True:
            try:
                chunk = self._pending if self._pending is not None else next(self._chunks, None)
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                log.warning("ooblex live widget: the sound of %r cannot be read, going on without it: %s",
                            self.path, reason(exc))
                return  # the generator is over: no more sound from this play of the file
            self._pending = None
            if chunk is None:
                return
            t = chunk.pts / SOUND_RATE
            if t >= media_t + period:
                self._pending = chunk
                return
            self.hear(chunk.to_ndarray().reshape(-1, 2), wall - media_t + t)

    def close(self) -> None:
        self._chunks.close()
