"""``ob.weight(name)``: where a deployed weight file is on this machine.

On a worker, deployed weight files are cached on disk (by content hash) and registered here
under their original file names before the thread's code is loaded. Elsewhere (a notebook
trying the thread locally) the name is taken as a path.
"""

from __future__ import annotations

from pathlib import Path

_paths: dict[str, Path] = {}


def register(name: str, path: Path) -> None:
    _paths[name] = path


def weight(name: str) -> Path:
    """The local path of the weight file deployed as ``name`` (its original file name)."""
    if name in _paths:
        return _paths[name]
    path = Path(name)
    if path.exists():
        return path
    raise FileNotFoundError(f"weight file {name!r} is neither deployed to this worker nor a local path "
                            "(deploy it with ob.deploy(..., weights=[path]))")
