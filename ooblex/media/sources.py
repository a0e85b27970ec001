"""Where frames come from: video files, webcams, RTSP and HTTP-MJPEG URLs, still images.

Every source yields RGB uint8 frames with their capture time. Live sources (webcam, RTSP,
MJPEG) are read by a background thread that keeps only the newest frame, so a slow consumer
sees a fresh picture instead of a growing backlog in the camera's buffer.
"""

from __future__ import annotations

import base64
import functools
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from .. import jpeg
from ..errors import BadRequest, OoblexError, PayloadTooLarge
from .audio import AudioInput

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


class SourceError(BadRequest):
    """The source cannot be opened or read."""


class Source:
    """Iterate for ``(image, captured_at)`` pairs. ``live`` sources drop frames; others do not."""

    live: bool = False
    fps: float = 30.0
    frame_count: int | None = None
    #: The soundtrack of a media file, for sinks that keep it (None: the source has no sound).
    audio: AudioInput | None = None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        raise NotImplementedError

    def timed(self) -> Iterator[tuple[np.ndarray, float, float | None]]:
        """``(image, captured_at, pts)``: ``pts`` is the frame's media time in seconds, None if unknown."""
        for image, captured in self:
            yield image, captured, None

    def close(self) -> None:
        """Release the device or connection."""


class AVSource(Source):
    """Files and RTSP streams decoded by PyAV (FFmpeg).

    ``opener``: how to open the container instead of by ``url``; returns ``(container, file or None)``
    (confined job sources, ``ooblex.media.confined``). ``name``: how errors call the source.
    """

    def __init__(self, url: str, live: bool, opener: Callable[[], tuple[Any, Any]] | None = None,
                 name: str | None = None) -> None:
        import av

        self.name = name or url
        self._open = opener or functools.partial(_open_url, url, live)
        try:
            self._container, self._file = self._open()
        except OoblexError:
            raise
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self.name!r}: {reason(exc)}") from None
        if not self._container.streams.video:
            self.close()
            raise SourceError(f"{self.name!r} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        self.live = live
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 30.0
        self.frame_count = self._stream.frames or None
        self.audio = None if live else AudioInput.probe(self._container, self.name,
                                                        reopen=lambda: self._open()[0])

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        for image, captured, _ in self.timed():
            yield image, captured

    def timed(self) -> Iterator[tuple[np.ndarray, float, float | None]]:
        for frame in self._container.decode(self._stream):
            pts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            yield frame.to_ndarray(format="rgb24"), time.time(), pts

    def close(self) -> None:
        self._container.close()
        if self._file is not None:
            self._file.close()


def _open_url(url: str, live: bool) -> tuple[Any, None]:
    import av

    # Live: no demuxer buffering. RTSP transport is left to FFmpeg (UDP, falling back to TCP).
    options = {"fflags": "nobuffer", "flags": "low_delay"} if live else {}
    return av.open(url, options=options, timeout=10), None


def reason(exc: BaseException) -> str:
    """Why an open or read failed, in FFmpeg's or the OS's fixed words: never the text of a server's
    answer or FFmpeg's log (PyAV appends the last log line, which can quote a server)."""
    return getattr(exc, "strerror", None) or type(exc).__name__


class WebcamSource(Source):
    """A local camera by index, through OpenCV."""

    live = True

    def __init__(self, index: int) -> None:
        import cv2

        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            raise SourceError(f"cannot open webcam {index} (is a camera attached and free?)")
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or 30.0

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                return
            yield np.ascontiguousarray(bgr[:, :, ::-1]), time.time()

    def close(self) -> None:
        self._cap.release()


class MJPEGSource(Source):
    """An HTTP ``multipart/x-mixed-replace`` stream of JPEGs (IP cameras, ``/mjpeg/...``).

    Redirects are refused (a URL that was checked must not lead somewhere unchecked); ``address``:
    connect there (the address a URL check approved) instead of resolving the name again;
    ``max_pixels``: refuse a frame whose header declares more. Errors name the status at most,
    never the server's words (reason phrase, headers, body).
    """

    live = True

    def __init__(self, url: str, timeout: float = 10.0, address: tuple[str, int] | None = None,
                 max_pixels: int | None = None) -> None:
        parts = urlsplit(url)
        https = parts.scheme.lower() == "https"
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise SourceError("an MJPEG source is an http:// or https:// URL with a host")
        self._max_pixels = max_pixels
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {"Accept": "multipart/x-mixed-replace, */*"}
        if parts.username is not None:
            credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(credentials).decode()
        try:
            self._conn = _connection(parts.hostname, parts.port or (443 if https else 80), https, timeout, address)
            self._conn.request("GET", target, headers=headers)
            self._resp = self._conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            raise SourceError(f"cannot open the MJPEG URL: {reason(exc)}") from None
        status = self._resp.status
        if 300 <= status < 400:
            self.close()
            raise SourceError(f"the HTTP server redirects ({status}); redirects are not followed: use the final URL")
        if status != 200:
            self.close()
            raise SourceError(f"the HTTP server refused the stream (status {status})")
        if "multipart" not in self._resp.headers.get("Content-Type", ""):
            self.close()
            raise SourceError("the URL is not an MJPEG stream (its Content-Type is not multipart)")

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        for data in iter_multipart_jpegs(self._resp):
            if self._max_pixels is not None:
                size = jpeg.image_size(data)
                if size is None or size[0] * size[1] > self._max_pixels:
                    raise PayloadTooLarge(f"an MJPEG frame is not a JPEG or is over {self._max_pixels} pixels "
                                          "(OOBLEX_MAX_IMAGE_PIXELS)")
            yield jpeg.decode(data), time.time()

    def close(self) -> None:
        self._conn.close()


def _connection(host: str, port: int, https: bool, timeout: float,
                address: tuple[str, int] | None) -> http.client.HTTPConnection:
    """An HTTP(S) connection to ``host`` (its name in ``Host`` and TLS), made to ``address`` if given."""
    sock = socket.create_connection(address or (host, port), timeout)
    if not https:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        return conn
    context = ssl.create_default_context()
    secure = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    secure.sock = context.wrap_socket(sock, server_hostname=host)
    return secure


class ImageSource(Source):
    """Still images in order: one image, or every image in a folder (sorted by name).

    ``read`` fetches a file's bytes (a checked open, for gateway jobs); ``max_pixels`` refuses an
    image whose header declares more pixels, before it is decoded (then only JPEG and PNG, whose
    size is known from the header, are decoded).
    """

    def __init__(self, paths: list[Path], read: Callable[[Path], bytes] = Path.read_bytes,
                 max_pixels: int | None = None, name: Callable[[Path], str] = str) -> None:
        if not paths:
            raise SourceError("no images to read")
        self._paths, self._read, self._max_pixels, self._name = paths, read, max_pixels, name
        self.frame_count = len(paths)
        self._first: np.ndarray | None = self._decode(paths[0])  # a bad first image fails now, not in a job

    @classmethod
    def of(cls, path: Path) -> ImageSource:
        """One image, or the images of a folder."""
        if path.is_dir():
            return cls(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        return cls([path])

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        first, self._first = self._first, None
        for i, p in enumerate(self._paths):
            yield (first if i == 0 and first is not None else self._decode(p)), time.time()

    def _decode(self, path: Path) -> np.ndarray:
        data = self._read(path)
        if self._max_pixels is not None:
            size = image_size(data)
            if size is None:
                raise SourceError(f"{self._name(path)!r} is not a JPEG or PNG image (or its header is damaged)")
            if size[0] * size[1] > self._max_pixels:
                raise PayloadTooLarge(f"{self._name(path)!r} is {size[0]}x{size[1]}; the limit is "
                                      f"{self._max_pixels} pixels (OOBLEX_MAX_IMAGE_PIXELS)")
        try:
            return jpeg.decode(data)
        except jpeg.ImageDecodeError as exc:
            raise SourceError(f"cannot decode {self._name(path)!r}: {exc}") from None


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG or PNG header, without decoding."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return jpeg.image_size(data)


class ArraySource(Source):
    """Frames already in memory (tests, notebooks)."""

    def __init__(self, frames: Any, live: bool = False, fps: float = 30.0) -> None:
        self._frames = frames
        self.live = live
        self.fps = fps
        self.frame_count = len(frames) if hasattr(frames, "__len__") else None

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        for f in self._frames:
            if self.live:
                time.sleep(1 / self.fps)
            yield f, time.time()


def open_source(spec: Any) -> Source:
    """``0`` (webcam), ``"clip.mp4"``, ``"rtsp://..."``, ``"http://.../x.mjpg"``, an image or folder,
    or a function that opens a ``Source`` (called where the frames are read)."""
    if isinstance(spec, Source):
        return spec
    if callable(spec):
        return spec()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return WebcamSource(int(spec))
    if isinstance(spec, (list, tuple)) or (isinstance(spec, np.ndarray) and spec.ndim == 4):
        return ArraySource(spec)
    if not isinstance(spec, (str, Path)):
        raise SourceError(f"unsupported source {spec!r}")
    s = str(spec)
    if s.startswith(("rtsp://", "rtsps://", "rtmp://")):
        return AVSource(s, live=True)
    if s.startswith(("http://", "https://")):
        return MJPEGSource(s)
    path = Path(s).expanduser()
    if not path.exists():
        raise SourceError(f"no such file or folder: {s}")
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource.of(path)
    return AVSource(str(path), live=False)


def iter_multipart_jpegs(fp: Any, max_part: int = 16 << 20) -> Iterator[bytes]:
    """Yield JPEG parts of a multipart stream, reading part headers for Content-Length when present."""
    buf = b""
    while True:
        chunk = fp.read1(65536) if hasattr(fp, "read1") else fp.read(65536)
        if not chunk:
            return
        buf += chunk
        while True:
            start = buf.find(b"\xff\xd8")
            end = buf.find(b"\xff\xd9", start + 2) if start >= 0 else -1
            if start < 0 or end < 0:
                if len(buf) > max_part:
                    raise SourceError("MJPEG part larger than the limit")
                break
            yield buf[start:end + 2]
            buf = buf[end + 2:]


class LatestFrameReader:
    """Reads a live source on a background thread; ``get()`` returns only the newest frame.

    The reader thread owns the source: ``close()`` asks it to stop, and it closes the source
    itself, since decoders must not be closed under a thread that is still reading them.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self._cond = threading.Condition()
        self._item: tuple[np.ndarray, float] | None = None
        self._stop = threading.Event()
        self.done = False
        self.dropped = 0
        self._thread = threading.Thread(target=self._read, name="ooblex-source", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for item in self.source:
                if self._stop.is_set():
                    break
                with self._cond:
                    self.dropped += self._item is not None
                    self._item = item
                    self._cond.notify()
        finally:
            self.source.close()
            with self._cond:
                self.done = True
                self._cond.notify()

    def close(self) -> None:
        self._stop.set()

    def get(self, timeout: float = 5.0) -> tuple[np.ndarray, float] | None:
        """The newest frame not yet taken, or None when the source has ended."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self.done, timeout)
            item, self._item = self._item, None
            return item
