"""A file's soundtrack beside its processed pictures: copied into the output file, or read for sending.

Tensor threads see pictures only, so the sound of a file needs no processing: ``AudioMux`` copies
the input's audio packets into the output container as they are (no re-encode) whenever that
container can hold the codec, and re-encodes to the container's own audio codec only when it
cannot (AAC into WebM, say). Both streams keep the input's timeline (the container's start is 0 in
the output), and audio is written as the video reaches it, so the file is interleaved. ``PcmAudio``
is sound already decoded (a live widget's recording): always encoded, to the container's own codec.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

log = logging.getLogger("ooblex.media")

#: Encoders for a container's default audio codec (FFmpeg's own Opus and Vorbis encoders are experimental).
ENCODERS = {"opus": "libopus", "vorbis": "libvorbis", "mp3": "libmp3lame"}


@dataclass(frozen=True)
class AudioInput:
    """The first audio stream of a media file, and where its timeline starts."""

    path: str
    index: int
    codec: str
    #: Seconds: the container's start (its earliest stream), media time 0 in an output.
    origin: float
    #: Seconds: where the input's video ends (a sink that got that far copies the whole soundtrack).
    video_end: float | None
    #: Opens the input again (a confined job source must not be reopened by path); None: ``av.open(path)``.
    reopen: Callable[[], Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def probe(cls, container: Any, path: str, reopen: Callable[[], Any] | None = None) -> AudioInput | None:
        """The audio of an open input ``container`` (None when it has none)."""
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        origin = container.start_time / av.time_base if container.start_time is not None else 0.0
        video = container.streams.video[0] if container.streams.video else None
        video_end = None
        if video is not None and video.duration is not None and video.time_base is not None:
            video_end = float(((video.start_time or 0) + video.duration) * video.time_base)
        elif container.duration is not None:
            video_end = origin + container.duration / av.time_base
        return cls(path, stream.index, stream.codec_context.name, origin, video_end, reopen)

    def open(self) -> tuple[Any, Any]:
        """A demuxer of its own (the video is read elsewhere) and the audio stream in it."""
        container = self.reopen() if self.reopen is not None else av.open(self.path)
        return container, container.streams[self.index]


@dataclass(frozen=True)
class PcmAudio:
    """Decoded sound: int16 stereo ``samples`` shaped (n, 2) at ``rate`` Hz, sample 0 at output time 0."""

    samples: np.ndarray
    rate: int = 48000
    #: The output timeline starts with the sound, and all of it is written (the owner trimmed it).
    origin: float = 0.0
    video_end: float | None = None

    def frames(self, rate: int, layout: str, fmt: str, frame_size: int) -> Iterator[av.AudioFrame]:
        """The samples as ``frame_size`` frames of ``fmt``/``layout``/``rate``, ``pts`` in 1/``rate`` s."""
        resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=frame_size)
        step = self.rate // 10
        for start in range(0, len(self.samples), step):
            chunk = np.ascontiguousarray(self.samples[start:start + step]).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
            frame.sample_rate, frame.pts = self.rate, start
            yield from resampler.resample(frame)
        yield from resampler.resample(None)


class AudioMux:
    """Writes ``audio`` into the open output ``container`` up to the time its video has reached."""

    def __init__(self, container: Any, audio: AudioInput | PcmAudio) -> None:
        self.audio = audio
        self._out = container
        self.copied = isinstance(audio, AudioInput) and audio.codec in container.supported_codecs
        self._in: Any = None
        self._encoder: Any = None
        if self.copied:  # the packets as they are
            self._in, in_stream = audio.open()
            self._stream = container.add_stream_from_template(in_stream)
            self._items: Iterator[Any] = (p for p in self._in.demux(in_stream) if p.pts is not None)
        else:  # the container's own audio codec
            name = container.default_audio_codec
            self._encoder = container.add_stream(ENCODERS.get(name, name), rate=48000)
            self._encoder.layout = "stereo"
            cc = self._encoder.codec_context
            cc.open()
            size = cc.frame_size or 1024
            if isinstance(audio, PcmAudio):
                self._items = audio.frames(cc.sample_rate, "stereo", cc.format.name, size)
            else:
                self._items = decoded(audio, cc.sample_rate, "stereo", cc.format.name, size)
                log.info("%s: %s audio cannot go into %s; re-encoding it to %s", audio.path, audio.codec,
                         container.format.name, cc.name)
        self._pending: Any = None

    def write_until(self, t: float | None) -> None:
        """Mux the input's audio that starts before output time ``t`` seconds (None: all of it)."""
        while True:
            item = self._pending if self._pending is not None else next(self._items, None)
            self._pending = None
            if item is None:
                return
            start = float(item.pts * item.time_base)
            if self.copied:
                start -= self.audio.origin
            if t is not None and start >= t:
                self._pending = item
                return
            self._write(item)

    def _write(self, item: Any) -> None:
        if self._encoder is not None:  # a decoded frame, already on the output timeline
            for packet in self._encoder.encode(item):
                self._out.mux(packet)
            return
        shift = round(self.audio.origin / item.time_base)
        item.pts -= shift
        if item.dts is not None:
            item.dts -= shift
        item.stream = self._stream
        self._out.mux(item)

    def close(self, video_end: float | None) -> None:
        """Write the rest: all of it when the video reached the input's end, else up to ``video_end``."""
        complete = self.audio.video_end is None or video_end is None or \
            video_end >= self.audio.video_end - self.audio.origin - 0.1
        self.write_until(None if complete else video_end)
        if self._encoder is not None:
            for packet in self._encoder.encode():
                self._out.mux(packet)
        if self._in is not None:
            self._in.close()


def decoded(audio: AudioInput, rate: int = 48000, layout: str = "stereo", fmt: str = "s16",
            frame_size: int = 960) -> Iterator[av.AudioFrame]:
    """The input's audio decoded and cut into ``frame_size`` frames of ``fmt``/``layout``/``rate``,
    ``pts`` in 1/``rate`` s on the output timeline (the input's start is 0)."""
    container, stream = audio.open()
    resampler = av.AudioResampler(format=fmt, layout=layout, rate=rate, frame_size=frame_size)
    shift = round(audio.origin * rate)
    try:
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                out.pts = (out.pts or 0) - shift
                yield out
        for out in resampler.resample(None):
            out.pts = (out.pts or 0) - shift
            yield out
    finally:
        container.close()
