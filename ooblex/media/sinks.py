"""Where processed frames go: a video file, an MJPEG HTTP server, a callable, or nowhere (stats only)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from .. import jpeg
from ..frame import Frame


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
    """Encodes frames to a file with PyAV (H.264 when the FFmpeg build has it, else MPEG-4)."""

    def __init__(self, path: str | Path, fps: float = 30.0) -> None:
        import av

        self.path = str(path)
        self._container = av.open(self.path, mode="w")
        self._fps = max(1, round(fps))
        self._stream: Any = None
        self._av = av

    def _open(self, image: np.ndarray) -> None:
        for codec in ("libx264", "h264", "mpeg4"):
            try:
                self._stream = self._container.add_stream(codec, rate=self._fps)
                break
            except (self._av.error.FFmpegError, ValueError):
                continue
        if self._stream is None:
            raise RuntimeError("no usable video encoder in this FFmpeg build")
        self._stream.height, self._stream.width = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: Frame) -> None:
        img = frame.image
        if img is None:
            return
        if self._stream is None:
            self._open(img)
        img = img[: self._stream.height, : self._stream.width]
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)

    def close(self) -> None:
        if self._stream is not None:
            for packet in self._stream.encode():
                self._container.mux(packet)
        self._container.close()


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


def open_sink(spec: Any, fps: float = 30.0) -> Sink:
    """``None``/``"null"``, ``"out.mp4"``, ``"mjpeg://127.0.0.1:8090"``, a ``Sink`` or a callable."""
    if isinstance(spec, Sink):
        return spec
    if spec is None or spec == "null":
        return NullSink()
    if callable(spec):
        return CallbackSink(spec)
    s = str(spec)
    if s.startswith("mjpeg://"):
        host, _, port = s[len("mjpeg://"):].rstrip("/").rpartition(":")
        return MJPEGServerSink(host or "127.0.0.1", int(port or 0))
    return VideoFileSink(s, fps)
