"""Turn a signed manifest into a loaded tensor thread on a worker: verify, fetch, install, unpickle.

Nothing is executed before the manifest's signature (over its name and version too: it must be
the one stored under the key the state names) and every blob's hash check out.
Blobs are cached on disk by content hash, so restarts and new versions that share weights
download nothing twice. A weight named ``*.onnx`` must hold all its data itself: a tensor with
``external_data`` would make onnxruntime read a file relative to the model, and next to it in the
cache lie other deployments' blobs (``ooblex.adapters.onnx.self_contained``). Reasons for a refusal
name no path on the worker (``public``): they are published in its status record.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from ..errors import Unavailable
from ..thread import TensorThread
from . import weights
from .registry import Registry, verified

#: An absolute POSIX path (not a URL's path: no ``:`` or ``/`` just before it).
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@+~-]+/)*[\w.@+~-]+/?")


class ArtifactError(Unavailable, RuntimeError):
    """A deploy cannot be loaded here (wrong Python, failed install, bad code, an ONNX weight with external data)."""


def load(registry: Registry, name: str, version: int, manifest: Any, secret: bytes | None, cache: Path, *,
         signature: str | None = None) -> TensorThread:
    """Verify ``manifest`` (stored as ``name@version``; ``signature``: the one the thread's state names)
    and return its thread, ready for a ``Worker``. Raises with a clear reason."""
    verified(manifest, secret, name, version, signature)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if manifest.get("python") != here:
        raise ArtifactError(f"deployed from Python {manifest.get('python')}, this worker runs {here} "
                            "(pickled code only loads on the same minor version)")
    install(manifest.get("requirements", []), cache)
    for w in manifest.get("weights", []):
        path = fetch(registry, w["sha256"], cache)
        if w["name"].lower().endswith(".onnx"):
            self_contained(path, w["name"])
        weights.register(w["name"], path)
    code = fetch(registry, manifest["code"], cache).read_bytes()
    try:
        thread = cloudpickle.loads(code)
    except Exception as exc:  # noqa: BLE001 - any import/unpickle problem becomes a status
        raise ArtifactError(f"cannot load the code: {type(exc).__name__}: {exc}") from exc
    if not isinstance(thread, TensorThread):
        raise ArtifactError(f"the code is a {type(thread).__name__}, not a tensor thread")
    return thread


def fetch(registry: Registry, digest: str, cache: Path) -> Path:
    """The cached file of blob ``digest``, downloaded (and hash-checked) if not here yet."""
    path = cache / "blobs" / digest
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    registry.get_blob(digest, path)
    return path


def self_contained(path: Path, name: str) -> None:
    """Refuse the ONNX weight ``name`` (at ``path``) if any tensor in it names external data."""
    from ..adapters.onnx import BadModel, parse
    from ..adapters.onnx import self_contained as check

    try:
        check(parse(path.read_bytes(), f"the weight {name!r}"), f"the weight {name!r}")
    except ImportError:
        raise ArtifactError(f"cannot check the ONNX weight {name!r} for external data: this worker lacks the onnx "
                            "package (add 'onnx' to the deploy's requirements)") from None
    except BadModel as exc:
        raise ArtifactError(f"refusing artifact: {exc}") from None


def public(reason: str) -> str:
    """``reason`` with every absolute path on this machine replaced by ``<path>``, for status records."""
    return ABSOLUTE_PATH.sub("<path>", reason)


def install(requirements: list[str], cache: Path) -> None:
    """Make ``requirements`` importable: those not already satisfied go to a private pip target."""
    missing = [r for r in requirements if not _satisfied(r)]
    if not missing:
        return
    key = hashlib.sha256(json.dumps(sorted(missing)).encode()).hexdigest()[:16]
    target = cache / "site" / key
    if not (target / ".complete").exists():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--retries", "1",
               "--timeout", "15", "--target", str(target), *missing]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise ArtifactError(f"pip install {' '.join(missing)} failed: {' / '.join(tail)}")
        (target / ".complete").touch()
    if str(target) not in sys.path:
        sys.path.insert(0, str(target))


def _satisfied(requirement: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip/setuptools nearly everywhere
        name, spec = requirement, None
    else:
        req = Requirement(requirement)
        name, spec = req.name, req.specifier
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return spec is None or spec.contains(version, prereleases=True)
