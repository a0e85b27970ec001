"""The one folder jobs may read from and write to (``Settings.media_root``, ``OOBLEX_MEDIA_ROOT``).

Job sources and sinks arrive over HTTP, so they are untrusted paths: each is resolved (``..``
and symbolic links followed) and must stay inside the root, a sink never overwrites a file
unless asked, and sinks are files only (no ``mjpeg://``, ``tcp://`` or other network outputs,
which would open ports or send video anywhere). Refusals are 403/404/409 naming the rule.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadRequest, Conflict, Forbidden, NotFound

#: Containers a job may write (what ``ooblex.media.sinks.VideoFileSink`` encodes).
SINK_SUFFIXES = (".mp4", ".mkv", ".mov", ".webm", ".avi")


class MediaRoot:
    """Resolve job paths inside ``root``; relative paths are taken relative to it."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def source(self, path: str) -> Path:
        """An existing file or folder inside the root."""
        resolved = self._inside(path, "source")
        if not resolved.exists():
            raise NotFound(f"source {path!r} does not exist in the media root")
        return resolved

    def sink(self, path: str, overwrite: bool = False) -> Path:
        """A new (or, with ``overwrite``, existing) video file inside the root, reserved now."""
        if "://" in path:
            raise Forbidden(f"sink {path!r} is a URL: jobs write video files inside the media root only")
        if not path.lower().endswith(SINK_SUFFIXES):
            raise BadRequest(f"sink {path!r} must be a video file ending in one of {', '.join(SINK_SUFFIXES)}")
        resolved = self._inside(path, "sink")
        resolved.parent.mkdir(parents=True, exist_ok=True)
        self._inside(str(resolved), "sink")  # a folder created above cannot have moved it, but check again
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if overwrite else os.O_EXCL)
        try:
            os.close(os.open(resolved, flags, 0o644))
        except FileExistsError:
            raise Conflict(f"sink {path!r} exists: pass \"overwrite\": true to replace it") from None
        except IsADirectoryError:
            raise Conflict(f"sink {path!r} is a folder") from None
        except OSError as exc:
            raise Forbidden(f"sink {path!r} cannot be written: {exc.strerror}") from None
        return resolved

    def relative(self, path: Path) -> str:
        """How a resolved path is shown to API clients (never the machine's absolute layout)."""
        return str(path.relative_to(self._real_root()))

    def _real_root(self) -> Path:
        return self.root.resolve()

    def _inside(self, path: str, what: str) -> Path:
        if not path or "\x00" in path:
            raise BadRequest(f"{what} path is empty or contains NUL")
        if "://" in path:
            raise Forbidden(f"{what} {path!r} is a URL that is not allowed here")
        root = self._real_root()
        candidate = Path(path).expanduser()
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
        if resolved != root and root not in resolved.parents:
            raise Forbidden(f"{what} {path!r} is outside the media root (OOBLEX_MEDIA_ROOT={self.root}): "
                            "jobs read and write only there")
        return resolved
