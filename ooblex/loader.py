"""Find a tensor thread from a command-line spec: a built-in name, ``module:attr`` or ``path.py:attr``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .builtin import identity
from .thread import TensorThread, as_thread

BUILTIN = {"identity": identity}


def load_thread(spec: str) -> TensorThread:
    """Resolve ``spec`` to a tensor thread, or raise ``ValueError`` saying what was not found."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    target, sep, attr = spec.rpartition(":")
    if not sep:
        raise ValueError(f"cannot find tensor thread {spec!r}: use a built-in name ({', '.join(BUILTIN)}), "
                         "module:attr or path/to/file.py:attr")
    if target.endswith(".py"):
        path = Path(target)
        if not path.exists():
            raise ValueError(f"no such file: {target}")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert mod_spec is not None and mod_spec.loader is not None
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[path.stem] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ValueError(f"cannot import {target!r}: {exc}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{target} has no attribute {attr!r}")
    return as_thread(getattr(module, attr))
