"""An audio-video sync test signal, and the measure that finds it again wherever it went.

Once a ``period`` the picture turns white and a tone sounds, starting at the same instant
(``SyncSignal``: pictures, samples, or a file of both). At the far end, ``FlashDetector`` and
``BeepDetector`` find when each flash was seen and each beep heard, and ``offsets`` pairs them.

Sign convention (EBU R37): an offset is *video time minus audio time*, so a positive offset
means the sound came first. R37 asks for +40 ms (sound early) to -60 ms (sound late) end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Picture level (0-255) halfway between the dark and the flash.
FLASH_LEVEL = 128.0
#: Tone amplitude (full scale 1.0) above which a beep has started.
BEEP_LEVEL = 0.1


@dataclass(frozen=True)
class SyncSignal:
    """A flash and a beep at every multiple of ``period`` seconds, each ``flash`` seconds long."""

    period: float = 1.0
    flash: float = 0.1
    fps: float = 30.0
    rate: int = 48000
    tone_hz: float = 1000.0
    amplitude: float = 0.5
    width: int = 320
    height: int = 240

    def on(self, t: float) -> bool:
        """Is the flash (and the tone) on at media time ``t``?"""
        return (t + 1e-9) % self.period < self.flash

    def image(self, n: int) -> np.ndarray:
        """Frame ``n`` (media time ``n / fps``): white during a flash, dark grey otherwise."""
        level = 235 if self.on(n / self.fps) else 16
        return np.full((self.height, self.width, 3), level, np.uint8)

    def samples(self, start: int, count: int) -> np.ndarray:
        """Mono int16 samples ``start`` .. ``start + count`` (sample 0 at media time 0)."""
        idx = np.arange(start, start + count)
        t = idx / self.rate
        on = (t + 1e-9) % self.period < self.flash
        tone = np.sin(2 * math.pi * self.tone_hz * t) * self.amplitude * on
        return (tone * 32767).astype(np.int16)

    def opus(self, seconds: float) -> list[bytes]:
        """``seconds`` of the sound encoded to 20 ms Opus packets (mono), as a WebRTC publisher sends them."""
        import av

        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate, enc.format, enc.layout = self.rate, "s16", "mono"
        step = self.rate // 50
        packets: list[bytes] = []
        for start in range(0, round(seconds * self.rate), step):
            frame = av.AudioFrame.from_ndarray(self.samples(start, step)[None, :], format="s16", layout="mono")
            frame.sample_rate, frame.pts = self.rate, start
            packets += [bytes(p) for p in enc.encode(frame)]
        return packets

    def write(self, path: str | Path, seconds: float, audio_codec: str | None = None) -> Path:
        """A file of ``seconds`` of the signal; the audio codec defaults to the container's own."""
        import av

        path = Path(path)
        with av.open(str(path), "w") as out:
            video = out.add_stream(out.default_video_codec if out.default_video_codec != "mpeg4" else "libx264",
                                   rate=round(self.fps))
            video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
            name = audio_codec or {"opus": "libopus", "mp3": "libmp3lame"}.get(out.default_audio_codec,
                                                                               out.default_audio_codec)
            audio = out.add_stream(name, rate=self.rate)
            audio.layout = "mono"
            audio.codec_context.open()
            size = audio.codec_context.frame_size or 1024
            fmt = audio.codec_context.format.name
            frames, n_samples = round(seconds * self.fps), round(seconds * self.rate)
            for n in range(frames):
                vf = av.VideoFrame.from_ndarray(self.image(n), format="rgb24")
                vf.pts = n
                out.mux(video.encode(vf))
            for start in range(0, n_samples, size):
                pcm = self.samples(start, min(size, n_samples - start))
                data = pcm[None, :] if fmt == "s16" else (pcm.astype(np.float32) / 32768)[None, :]
                af = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
                af.sample_rate, af.pts = self.rate, start
                out.mux(audio.encode(af))
            out.mux(video.encode())
            out.mux(audio.encode())
        return path


class FlashDetector:
    """Finds flashes in received pictures: ``feed(level, t)`` returns the flash's start time or None.

    With ``media_t`` (the frame's own media time, e.g. from a frame number) the start is corrected
    for frames that were dropped at the flash's beginning.
    """

    def __init__(self, signal: SyncSignal, level: float = FLASH_LEVEL) -> None:
        self.signal = signal
        self.level = level
        self._bright = False

    def feed(self, level: float, t: float, media_t: float | None = None) -> float | None:
        bright, was = level > self.level, self._bright
        self._bright = bright
        if not bright or was:
            return None
        if media_t is None:
            return t
        return t - ((media_t + 1e-9) % self.signal.period)


class BeepDetector:
    """Finds beeps in received audio: ``feed(samples, t)`` (sample 0 heard at ``t``) returns beep start
    times; a beep is the first sample above ``level`` after at least half a period of quiet."""

    def __init__(self, signal: SyncSignal, rate: int | None = None, level: float = BEEP_LEVEL) -> None:
        self.signal = signal
        self.rate = rate or signal.rate
        self.level = level
        self._last_loud = -math.inf

    def feed(self, samples: np.ndarray, t: float) -> list[float]:
        """``samples``: mono, float (full scale 1.0) or int16 (``mono`` makes them from an AudioFrame)."""
        x = np.asarray(samples)
        if np.issubdtype(x.dtype, np.integer):
            x = x.astype(np.float32) / 32768.0
        onsets = []
        for i in np.flatnonzero(np.abs(x) > self.level):
            at = float(t + i / self.rate)
            if at - self._last_loud > self.signal.period / 2:
                onsets.append(at)
            self._last_loud = at
        return onsets


def mono(frame: object) -> np.ndarray:
    """The samples of an ``av.AudioFrame`` as one float channel (packed or planar, any layout)."""
    data = frame.to_ndarray()  # type: ignore[attr-defined]
    channels = len(frame.layout.channels)  # type: ignore[attr-defined]
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    if frame.format.is_planar:  # type: ignore[attr-defined]
        return data.mean(axis=0)
    return data.reshape(-1, channels).mean(axis=1)


def offsets(video: list[float], audio: list[float], period: float = 1.0) -> list[float]:
    """Video time minus audio time (ms) for each beep with a flash within half a period of it."""
    out = []
    for a in audio:
        near = [v for v in video if abs(v - a) < period / 2]
        if near:
            v = min(near, key=lambda v: abs(v - a))
            out.append((v - a) * 1e3)
    return out


def summary(values: list[float]) -> dict[str, float]:
    """Median, spread and worst of a list of offsets (ms)."""
    if not values:
        return {}
    arr = np.array(values)
    return {"n": len(values), "median": round(float(np.median(arr)), 1), "min": round(float(arr.min()), 1),
            "max": round(float(arr.max()), 1), "worst": round(float(arr[np.argmax(np.abs(arr))]), 1)}
