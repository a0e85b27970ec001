"""Opening an untrusted media file with FFmpeg so that it reads that file and nothing else.

FFmpeg picks a demuxer by probing the bytes, and some demuxers read other files or open sockets
by themselves: HLS playlists (``.m3u8``) and ffconcat lists name further files, SDP opens RTP
ports, ``image2`` expands ``%d`` patterns. So a job's file is opened by us (after the media root
checked the path) and handed to FFmpeg as a file object, with the demuxers restricted up front
(``format_whitelist``, also inherited by nested demuxers) to media containers that hold their
own data. Playlists are added only on request (``Settings.allow_playlists``), and then only HLS:
its segments are opened through ``io_open``, which takes plain paths and sends each through the
same check. The concat demuxer is never allowed: it opens its files itself, bypassing ``io_open``
(it refuses absolute and ``..`` paths, but follows symbolic links out of the root).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import IO, Any

from ..errors import Forbidden

#: Demuxers that read only the bytes they are given (FFmpeg names: ``mov`` is mp4/mov/m4a/3gp).
MEDIA_DEMUXERS = ("mov", "matroska", "avi", "mpegts", "mpeg", "flv", "asf", "ogg", "nut", "ivf", "obu", "h264",
                  "hevc", "m4v", "mpegvideo", "mjpeg", "gif", "yuv4mpegpipe", "dv")
#: Demuxers of files that name other files, allowed with ``allow_playlists`` (their reads are confined).
PLAYLIST_DEMUXERS = ("hls",)
#: How a nested URL may look: a plain path, or one with FFmpeg's ``file:`` prefix.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")

Opener = Callable[[str], IO[bytes]]


class RefusedFormat(Forbidden):
    """FFmpeg tried to read something outside what the caller allowed (403)."""


def open_media(name: str, open_file: Opener, allow_playlists: bool = False,
               timeout: float = 10.0) -> tuple[Any, IO[bytes]]:
    """An FFmpeg input container for ``name``, every byte of which comes through ``open_file``, and the
    file it reads (FFmpeg does not close it: close it after the container).

    ``open_file(path)`` must check the path and return a readable binary file (or raise).
    """
    import av

    formats = MEDIA_DEMUXERS + (PLAYLIST_DEMUXERS if allow_playlists else ())

    def nested(url: str, flags: int, options: dict[str, Any]) -> IO[bytes]:
        if not allow_playlists or flags & 2:  # AVIO_FLAG_WRITE
            raise RefusedFormat("the file asks FFmpeg to open another file")
        path = url[len("file:"):] if url.startswith("file:") else url
        if _SCHEME.match(path):
            raise RefusedFormat("a playlist may name files only, not URLs")
        return open_file(path)

    file = open_file(name)
    try:
        container = av.open(file, options={"format_whitelist": ",".join(formats), "protocol_whitelist": "file"},
                            io_open=nested, timeout=timeout)
    except BaseException:
        file.close()
        raise
    return container, file
