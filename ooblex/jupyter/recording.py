"""Frames handed back to Python: one ``Shot`` per processed frame, ``Recording``s of many.

A recording fills from the live loop thread while the notebook does anything else; in a notebook
its progress line updates in place (a display with an id) until it is done. With a kernel-side
source that has sound (a video file's soundtrack) it keeps that sound too, stamped on the same
clock as the frames' ``captured`` times, so ``save`` puts both in step into one file.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..media.audio import PcmAudio

#: Recorded sound is int16 stereo at this rate.
SOUND_RATE = 48000
#: Seconds of sound kept from before a recording starts: its first frames were captured before they came out.
SOUND_LEAD_S = 2.0


@dataclass(slots=True)
class Shot:
    """One processed frame: input and output pixels (RGB uint8), the thread's result and error."""

    input: np.ndarray | None
    output: np.ndarray | None
    result: dict[str, Any] | None
    error: str | None
    seq: int
    latency_ms: float | None
    #: When the input was captured (Unix seconds): recordings keep the real spacing of frames when saved.
    captured: float | None = None

    def picture(self) -> np.ndarray | None:
        """Input and output side by side (the output alone when the input is not kept), RGB uint8."""
        images = [im for im in (self.input, self.output) if im is not None]
        if not images:
            return None
        height = max(im.shape[0] for im in images)
        padded = [np.pad(im, ((0, height - im.shape[0]), (0, 0), (0, 0))) for im in images]
        return np.concatenate(padded, axis=1) if len(padded) > 1 else padded[0]

    def _repr_jpeg_(self) -> bytes | None:
        """Shown as a picture in a notebook, and kept in the saved file (a widget's live view is not)."""
        from .. import jpeg

        picture = self.picture()
        return None if picture is None else jpeg.encode(np.ascontiguousarray(picture), 85)


class Recording:
    """Processed frames collected for ``seconds`` (at most ``max_frames``), or until ``stop()``; and the
    sound heard meanwhile, when the source has some."""

    def __init__(self, seconds: float, max_frames: int = 300, name: str = "") -> None:
        if seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames!r}")
        self.seconds = seconds
        self.max_frames = max_frames
        self.name = name
        self.started = time.time()
        self.ends = self.started + seconds
        self.shots: list[Shot] = []
        self._sound: list[tuple[float, np.ndarray]] = []
        self._lock = threading.Lock()

    def add(self, shot: Shot) -> None:
        with self._lock:
            if time.time() <= self.ends and len(self.shots) < self.max_frames:
                self.shots.append(shot)

    def add_sound(self, samples: np.ndarray, at: float) -> None:
        """Sound first heard at ``at`` (Unix seconds, the clock of ``Shot.captured``): int16 (n, 2) at
        ``SOUND_RATE``. Kept from ``SOUND_LEAD_S`` before the start until the recording is over."""
        with self._lock:
            if at + len(samples) / SOUND_RATE >= self.started - SOUND_LEAD_S and at <= self.ends \
                    and len(self.shots) < self.max_frames:
                self._sound.append((at, samples))

    @property
    def has_sound(self) -> bool:
        with self._lock:
            return bool(self._sound)

    def stop(self) -> Recording:
        """End now (the Record button does this)."""
        self.ends = min(self.ends, time.time())
        return self

    @property
    def done(self) -> bool:
        return time.time() > self.ends or len(self.shots) >= self.max_frames

    @property
    def elapsed(self) -> float:
        return min(time.time(), self.ends) - self.started

    def wait(self) -> Recording:
        """Block until the recording is over."""
        while not self.done:
            time.sleep(min(0.05, max(self.ends - time.time(), 0.001)))
        return self

    @property
    def frames(self) -> list[np.ndarray]:
        """Processed output images, oldest first."""
        return [s.output for s in self._copy() if s.output is not None]

    @property
    def inputs(self) -> list[np.ndarray]:
        return [s.input for s in self._copy() if s.input is not None]

    @property
    def results(self) -> list[dict[str, Any] | None]:
        return [s.result for s in self._copy()]

    def array(self) -> np.ndarray:
        """Output frames stacked as an (N, H, W, 3) array (all frames must share one size)."""
        frames = self.frames
        if not frames:
            raise ValueError("the recording has no frames (was the widget running?)")
        return np.stack(frames)

    def save(self, path: str | Path) -> Path:
        """Write the processed frames to ``path``: a video (``.mp4``, ``.mkv``, ``.mov``, ``.webm``, ``.avi``,
        encoded as ``ooblex.run`` writes files) or an animated ``.gif`` (256 colours), at the pace they were
        captured. Returns the path.

        A video file keeps the sound where there is some: a kernel-side video file's soundtrack, as it
        played while recording, in step with the frames (AAC in ``.mp4``/``.mov``; the container's own
        codec otherwise). The browser webcam sends pictures only, and RTSP, MJPEG and kernel cameras
        are read without sound, so their recordings save video only; so does every ``.gif``."""
        out = Path(path).expanduser()
        suffix = out.suffix.lower()
        if suffix not in SAVE_SUFFIXES:
            raise ValueError(f"cannot save a recording as {out.name!r}: use one of {', '.join(SAVE_SUFFIXES)}")
        shots = [s for s in self._copy() if s.output is not None]
        if not shots:
            raise ValueError("the recording has no frames (was the widget running?)")
        times = _capture_times(shots)
        if suffix == ".gif":
            _write_gif(out, [s.output for s in shots], times)  # type: ignore[misc]
            return out
        fps = (len(times) - 1) / times[-1] if len(times) > 1 and times[-1] > 0 else 30.0
        sound = None
        if shots[0].captured is not None:  # the sound's clock: capture times, known for kernel-side sources
            with self._lock:
                heard = list(self._sound)
            sound = _soundtrack(heard, shots[0].captured, times[-1] + 1 / fps)
        _write_video(out, [s.output for s in shots], times, fps, sound)  # type: ignore[misc]
        return out

    def _copy(self) -> list[Shot]:
        with self._lock:
            return list(self.shots)

    def __len__(self) -> int:
        return len(self.shots)

    def __repr__(self) -> str:
        state = "done" if self.done else f"{max(self.ends - time.time(), 0):.1f}s left"
        name = f" {self.name}:" if self.name else ""
        return f"<Recording{name} {len(self.shots)} frames over {self.seconds:g}s, {state}>"


#: What ``Recording.save`` writes.
SAVE_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi", ".gif")


def _capture_times(shots: list[Shot]) -> list[float]:
    """Seconds from the first frame, strictly increasing; 30 fps spacing where capture times are unknown."""
    times, last = [], -1.0
    for i, s in enumerate(shots):
        t = s.captured - shots[0].captured if s.captured is not None and shots[0].captured is not None else i / 30
        last = max(t, last + 1e-3)
        times.append(last)
    return times


def _soundtrack(heard: list[tuple[float, np.ndarray]], start: float, seconds: float) -> PcmAudio | None:
    """The sound heard from ``start`` (Unix seconds) for ``seconds``, silent where none was; None if none was."""
    total = round(seconds * SOUND_RATE)
    pcm = np.zeros((total, 2), np.int16)
    any_heard = False
    for at, samples in heard:
        i = round((at - start) * SOUND_RATE)
        lo, hi = max(i, 0), min(i + len(samples), total)
        if lo < hi:
            pcm[lo:hi] = samples[lo - i:hi - i]
            any_heard = True
    return PcmAudio(pcm, SOUND_RATE) if any_heard else None


def _write_video(path: Path, images: list[np.ndarray], times: list[float], fps: float,
                 sound: PcmAudio | None) -> None:
    from ..frame import Frame
    from ..media.sinks import VideoFileSink

    sink = VideoFileSink(path, fps=fps, audio=sound)
    try:
        for img, t in zip(images, times, strict=True):
            sink.write(Frame(img, pts=t))
    finally:
        sink.close()


def _write_gif(path: Path, images: list[np.ndarray], times: list[float]) -> None:
    """GIF frame times are in hundredths of a second; colours are FFmpeg's 3-3-2 palette."""
    import fractions

    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=100)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "rgb8"
        stream.codec_context.time_base = fractions.Fraction(1, 100)
        last = -1
        for img, t in zip(images, times, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img[: stream.height, : stream.width]),
                                               format="rgb24")
            frame.pts = last = max(round(t * 100), last + 1)
            frame.time_base = stream.codec_context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


class Progress:
    """A notebook output line showing recordings as they fill; a no-op outside a Jupyter kernel."""

    def __init__(self, recordings: list[Recording]) -> None:
        self.recordings = recordings
        self.handle = None
        if in_kernel():
            from IPython.display import display

            self.handle = display(self._view(), display_id=True)

    def update(self) -> None:
        if self.handle is not None:
            self.handle.update(self._view())

    def follow(self, every: float = 0.25) -> None:
        """Keep updating from a daemon thread until every recording is done (returns at once)."""
        if self.handle is None:
            return

        def run() -> None:
            while not all(r.done for r in self.recordings):
                time.sleep(every)
                self.update()
            self.update()

        threading.Thread(target=run, name="ooblex-record-progress", daemon=True).start()

    def _view(self) -> Any:
        from IPython.display import Pretty

        return Pretty("\n".join(repr(r) for r in self.recordings))


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where display updates reach the notebook)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None
