"""The one folder jobs may read from and write to (``Settings.media_root``, ``OOBLEX_MEDIA_ROOT``).

Job sources and sinks arrive over HTTP, so they are untrusted paths: each is resolved (``..``
and symbolic links followed) and must stay inside the root, a sink never overwrites a file
unless asked, and sinks are files only (no ``mjpeg://``, ``tcp://`` or other network outputs,
which would open ports or send video anywhere). A file is read only through ``open_file``, which
checks the file it actually opened (so a symbolic link swapped in after the check is caught), and
a folder is listed with each entry's links resolved and checked. Refusals are 400/403/404/409
naming the rule; messages show paths relative to the root, never the machine's layout.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import IO

from ..errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge

log = logging.getLogger("ooblex.gateway")

#: Containers a job may write (what ``ooblex.media.sinks.VideoFileSink`` encodes).
SINK_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")
#: Longest file name (one path component) and path, in bytes: Linux's NAME_MAX and PATH_MAX.
NAME_MAX, PATH_MAX = 255, 4096


class MediaRoot:
    """Resolve job paths inside ``root``; relative paths are taken relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def source(self, path: str) -> Path:
        """An existing file or folder inside the root."""
        resolved = self._inside(path, "source")
        try:
            exists = resolved.exists()
        except OSError as exc:
            raise BadRequest(f"source {_shown(path)} cannot be used: {exc.strerror}") from None
        if not exists:
            raise NotFound(f"source {_shown(path)} does not exist in the media root")
        return resolved

    def sink(self, path: str, overwrite: bool = False) -> IO[bytes]:
        """A new (or, with ``overwrite``, emptied) video file inside the root, opened for writing now:
        the job writes to this open file, so nothing swapped in at the path later is written through."""
        if "://" in path:
            raise Forbidden(f"sink {_shown(path)} is a URL: jobs write video files inside the media root only")
        if not path.lower().endswith(SINK_SUFFIXES):
            raise BadRequest(f"sink {_shown(path)} must be a video file ending in one of {', '.join(SINK_SUFFIXES)}")
        resolved = self._inside(path, "sink")
        try:
            resolved.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Forbidden(f"sink {_shown(path)} cannot be written: {exc.strerror}") from None
        self._inside(str(resolved), "sink")  # a folder created above cannot have moved it, but check again
        try:
            file = open(resolved, "wb" if overwrite else "xb",  # noqa: SIM115 - the sink closes it
                        opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644))
        except FileExistsError:
            raise Conflict(f"sink {_shown(path)} exists: pass \"overwrite\": true to replace it") from None
        except IsADirectoryError:
            raise Conflict(f"sink {_shown(path)} is a folder") from None
        except OSError as exc:
            raise Forbidden(f"sink {_shown(path)} cannot be written: {exc.strerror}") from None
        return self._checked(file, resolved, f"sink {_shown(path)}")

    def open_file(self, path: str | Path) -> IO[bytes]:
        """A file opened for reading, after checking where it is and then what was opened.

        ``path`` may come from inside a file (a playlist), so messages name only its last part."""
        try:
            resolved = self._inside(str(path), "source")
        except Forbidden:
            raise Forbidden(f"{Path(path).name!r} is outside the media root (OOBLEX_MEDIA_ROOT): "
                            "jobs read only there") from None
        try:  # non-blocking: a FIFO would otherwise wait for a writer here (it is refused below)
            file = open(resolved, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))  # noqa: SIM115
        except FileNotFoundError:
            raise NotFound(f"{self.relative(resolved)!r} does not exist in the media root") from None
        except OSError as exc:
            raise Forbidden(f"{self.relative(resolved)!r} cannot be read: {exc.strerror}") from None
        return self._checked(file, resolved, repr(self.relative(resolved)))

    def _checked(self, file: IO[bytes], resolved: Path, shown: str) -> IO[bytes]:
        """``file`` (opened non-blocking) if it is what was checked, a regular file inside the root; blocking again."""
        if not self._opened_inside(file, resolved):
            file.close()
            raise Forbidden(f"{shown} is not a file inside the media root")
        os.set_blocking(file.fileno(), True)
        return file

    def read(self, path: str | Path, limit: int) -> bytes:
        """A whole file (``open_file``), refused if larger than ``limit`` bytes."""
        with self.open_file(path) as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLarge(f"{self.relative(Path(path))!r} is larger than {limit} bytes")
        return data

    def images(self, folder: Path, suffixes: set[str]) -> list[Path]:
        """The images of a folder by name, each link resolved; entries that lead out of the root are left out."""
        found, escaped = [], 0
        for entry in sorted(folder.iterdir()):
            if entry.suffix.lower() not in suffixes:
                continue
            target = entry.resolve()
            if not self._contains(target):
                escaped += 1
            elif target.is_file():
                found.append(target)
        if escaped:
            log.warning("%s: left out %d link(s) that lead outside the media root", folder, escaped)
        return found

    def relative(self, path: Path) -> str:
        """How a path is shown to API clients (never the machine's absolute layout)."""
        root = self._real_root()
        try:
            return str(path.relative_to(root)) if path.is_absolute() else str(path)
        except ValueError:
            return path.name

    def scrub(self, text: str) -> str:
        """``text`` with the root's absolute location taken out (for messages built by other code)."""
        for root in sorted({str(self._real_root()), str(self.root)}, key=len, reverse=True):
            text = text.replace(root + os.sep, "").replace(root, ".")
        return text

    def _opened_inside(self, file: IO[bytes], resolved: Path) -> bool:
        """Whether the open ``file`` (whatever its path leads to now) is a regular file inside the root."""
        try:
            opened = Path(os.readlink(f"/proc/self/fd/{file.fileno()}"))
        except OSError:  # no /proc: the file at the checked path must be the one opened
            opened = resolved if os.path.samestat(os.fstat(file.fileno()), os.stat(resolved)) else Path("/")
        return self._contains(opened) and stat.S_ISREG(os.fstat(file.fileno()).st_mode)

    def _contains(self, path: Path) -> bool:
        root = self._real_root()
        return path == root or root in path.parents

    def _real_root(self) -> Path:
        return self.root.resolve()

    def _inside(self, path: str, what: str) -> Path:
        if not path or "\x00" in path:
            raise BadRequest(f"{what} path is empty or contains NUL")
        if "://" in path:
            raise Forbidden(f"{what} {_shown(path)} is a URL that is not allowed here")
        if len(os.fsencode(path)) > PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in Path(path).parts):
            raise BadRequest(f"{what} path is too long: at most {NAME_MAX} bytes a name and {PATH_MAX} in all")
        root = self._real_root()
        candidate = Path(path)
        try:
            resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        except (OSError, RuntimeError) as exc:  # a link loop, a name the file system refuses
            raise BadRequest(f"{what} {_shown(path)} cannot be resolved: {getattr(exc, 'strerror', None) or exc}") \
                from None
        if not self._contains(resolved):
            raise Forbidden(f"{what} {_shown(path)} is outside the media root (OOBLEX_MEDIA_ROOT): "
                            "jobs read and write only there")
        return resolved


def _shown(path: str) -> str:
    """A client's path as quoted back in a message (shortened: a name can be long)."""
    return repr(path if len(path) <= 120 else path[:60] + "..." + path[-40:])
