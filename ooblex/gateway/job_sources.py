"""What a job reads: a file through the media root, or a URL through the allow-list.

Files are opened when the job is asked for (``open_file_source``), so a refused format is a 4xx
at once and the job reads what was checked: images through ``MediaRoot.read`` under the pixel
limit, videos through FFmpeg confined to the file (``ooblex.media.confined``). URL sources open
when the job runs (``url_source``), at the address the allow-list checked: RTSP through a relay
that refuses redirects, HTTP MJPEG with redirects refused and frames under the pixel limit; their
errors carry a status at most, never what the server said.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import OoblexError
from ..media.confined import open_media
from ..media.rtsp_relay import RTSPRelay
from ..media.sources import IMAGE_SUFFIXES, AVSource, ImageSource, MJPEGSource, Source, SourceError, reason
from .media_root import MediaRoot
from .settings import Settings

#: Job sources FFmpeg reads: media containers that hold their own data.
CONTAINERS = "mp4, mov, mkv, webm, avi, ts, mpg, flv, wmv, ogg, ivf, h264/h265, gif"


def open_file_source(path: Path, root: MediaRoot, settings: Settings) -> Source:
    """An image, a folder of images or a video inside ``root`` (blocking: call it in a thread)."""
    name = root.relative(path)
    if path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES:
        images = root.images(path, IMAGE_SUFFIXES) if path.is_dir() else [path]
        if not images:
            raise SourceError(f"no images in {name!r} (JPEG or PNG files inside the media root)")
        read = functools.partial(root.read, limit=max(settings.max_image_bytes, 4 * settings.max_image_pixels))
        return ImageSource(images, read=read, max_pixels=settings.max_image_pixels, name=root.relative)

    def opener() -> tuple[Any, Any]:
        import av

        try:
            return open_media(str(path), root.open_file, settings.allow_playlists)
        except av.error.FFmpegError as exc:
            allow = "" if settings.allow_playlists else "; OOBLEX_ALLOW_PLAYLISTS allows HLS playlists"
            raise SourceError(f"{name!r} is not a video file jobs may read ({reason(exc)}): sources are media "
                              f"containers ({CONTAINERS}); files that name other files (m3u8, ffconcat, sdp, "
                              f"mpd) are refused{allow}") from None

    return AVSource(name, live=False, opener=opener, name=name)


def url_source(url: str, addresses: list[tuple[str, int]], settings: Settings) -> Callable[[], Source]:
    """Opens the URL where the job runs, at an address the allow-list checked."""
    if not url.lower().startswith(("rtsp://", "rtsps://")):
        return functools.partial(MJPEGSource, url, address=addresses[0], max_pixels=settings.max_image_pixels)

    def opener() -> tuple[Any, Any]:
        import av

        relay = RTSPRelay(url, addresses[0])
        options = {"fflags": "nobuffer", "flags": "low_delay"}
        try:
            return av.open(relay.url, options=options, timeout=10), relay
        except (av.error.FFmpegError, OSError) as exc:
            relay.close()
            if relay.refused:
                raise SourceError(relay.refused) from None
            if relay.status:
                raise SourceError(f"the RTSP server refused the stream (status {relay.status})") from None
            raise SourceError(f"cannot open the RTSP stream: {reason(exc)}") from None

    return functools.partial(AVSource, "RTSP stream", True, opener, "RTSP stream")


def job_error(exc: BaseException, root: MediaRoot) -> str:
    """How a failed job's error is shown: our own messages, or only the kind and the OS's words of
    anything else (FFmpeg's text can quote a server or a path), without the media root's location."""
    kind = type(exc).__name__
    text = str(exc) if isinstance(exc, OoblexError) else reason(exc)
    return root.scrub(f"{kind}: {text}" if text != kind else kind)
