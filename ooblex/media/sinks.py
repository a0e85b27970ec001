"""Where processed frames go: a video file, an MJPEG HTTP server, a callable, or nowhere (stats only)."""

from __future__ import annotations

import fractions
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import numpy as np

from .. import jpeg
from ..frame import Frame
from .audio import AudioInput, AudioMux, PcmAudio


class Sink:
    """Receives processed frames in output order."""

    def write(self, frame: Frame) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Flush and release."""


class NullSink(Sink):
    """Discards frames: for measuring (the run's stats still count them)."""

    def write(self, frame: Frame) -> None:
        pass


class CallbackSink(Sink):
    def __init__(self, fn: Callable[[Frame], Any]) -> None:
        self.fn = fn

    def write(self, frame: Frame) -> None:
        self.fn(frame)


class VideoFileSink(Sink):
    """Encodes frames to a file with PyAV (H.264 when the FFmpeg build and container allow, else
    MPEG-4, else VP8 as WebM needs).

    Frames with a ``pts`` keep the input's timing (variable frame rates included); others are
    spaced ``1/fps`` apart. With ``audio`` (the input's soundtrack) the sound goes into the same file
    on the same timeline, copied without re-encoding where the container allows (``AudioMux``);
    ``PcmAudio`` (decoded sound) is encoded to the container's own codec (AAC in MP4).
    """

    #: Video time base ticks per frame interval: fine enough for variable frame rates.
    TICKS = 100

    def __init__(self, path: str | Path | IO[bytes], fps: float = 30.0,
                 audio: AudioInput | PcmAudio | None = None) -> None:
        """``path``: a file name, or a file already opened for writing (its name picks the container;
        it is closed with the sink)."""
        import av

        self._file = None if isinstance(path, (str, Path)) else path
        self.path = str(path if self._file is None else self._file.name)
        self._container = av.open(self._file or self.path, mode="w")
        self._fps = max(1, round(fps))
        self._stream: Any = None
        self._av = av
        self._audio_input = audio
        self._audio: AudioMux | None = None
        self._origin = audio.origin if audio is not None else None
        self._count = 0
        self._last_pts = -1

    def _open(self, image: np.ndarray) -> None:
        for codec in [c for c in ("libx264", "h264", "mpeg4", "libvpx") if c in self._container.supported_codecs]:
            try:
                self._stream = self._container.add_stream(codec, rate=self._fps)
                break
            except (self._av.error.FFmpegError, ValueError):
                continue
        if self._stream is None:
            raise RuntimeError("no usable video encoder in this FFmpeg build")
        self._stream.height, self._stream.width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        self._stream.pix_fmt = "yuv420p"
        if self._stream.codec_context.name == "libvpx":  # its default takes seconds per second of video
            self._stream.options = {"deadline": "realtime", "cpu-used": "6"}
        self._stream.codec_context.time_base = fractions.Fraction(1, self._fps * self.TICKS)
        if self._audio_input is not None:  # streams are added before the first packet is written
            self._audio = AudioMux(self._container, self._audio_input)

    def write(self, frame: Frame) -> None:
        img = frame.image
        if img is None:
            return
        if self._stream is None:
            self._open(img)
        img = img[: self._stream.height, : self._stream.width]
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        vf.pts = self._pts(frame)
        vf.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        if self._audio is not None:
            self._audio.write_until(self._seconds(vf.pts + self.TICKS))

    def _pts(self, frame: Frame) -> int:
        """Ticks on the output timeline: the frame's own media time, else its place in the sequence."""
        if frame.pts is not None:
            if self._origin is None:
                self._origin = frame.pts
            pts = round((frame.pts - self._origin) * self._fps * self.TICKS)
        else:
            pts = self._count * self.TICKS
        self._count += 1
        pts = max(pts, self._last_pts + 1)  # strictly increasing, whatever the input says
        self._last_pts = pts
        return pts

    def _seconds(self, ticks: int) -> float:
        return ticks / (self._fps * self.TICKS)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        if self._audio is not None:
            self._audio.close(self._seconds(self._last_pts + self.TICKS))
        self._container.close()
        if self._file is not None:
            self._file.close()


class MJPEGServerSink(Sink):
    """Serves the newest frame as ``multipart/x-mixed-replace`` on ``http://host:port/``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, quality: int = 80) -> None:
        self.quality = quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._closed = False
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                last = None
                try:
                    while True:
                        with sink._cond:
                            sink._cond.wait_for(lambda prev=last: sink._jpeg is not prev or sink._closed, 5.0)
                            if sink._closed:
                                return
                            data = last = sink._jpeg
                        if data is None:
                            continue
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/"
        threading.Thread(target=self._server.serve_forever, name="ooblex-mjpeg", daemon=True).start()

    def write(self, frame: Frame) -> None:
        if frame.image is None:
            return
        data = jpeg.encode(frame.image, self.quality)
        with self._cond:
            self._jpeg = data
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()


def open_sink(spec: Any, fps: float = 30.0, audio: AudioInput | None = None) -> Sink:
    """``None``/``"null"``, ``"out.mp4"``, ``"mjpeg://127.0.0.1:8090"``, a file opened for writing, a ``Sink``
    or a callable.

    ``audio``: the input's soundtrack (``Source.audio``), kept by video file sinks."""
    if isinstance(spec, Sink):
        return spec
    if spec is None or spec == "null":
        return NullSink()
    if hasattr(spec, "write") and hasattr(spec, "name"):  # a file opened for writing
        return VideoFileSink(spec, fps, audio)
    if callable(spec):
        return CallbackSink(spec)
    s = str(spec)
    if s.startswith("mjpeg://"):
        host, _, port = s[len("mjpeg://"):].rstrip("/").rpartition(":")
        return MJPEGServerSink(host or "127.0.0.1", int(port or 0))
    return VideoFileSink(s, fps, audio)
