"""Native extensions that must bind to their own symbols, whatever the process loaded before them.

pylibsrtp (aiortc's SRTP) links OpenSSL statically and exports all of it. TensorFlow, loaded first, has
already put functions of the same names in the process's global scope; the dynamic linker then binds
pylibsrtp's own calls to TensorFlow's copies, and the import segfaults (``import tensorflow`` then
``import aiortc``: exit 139; the other order works). A notebook that imports TensorFlow before it
watches a deployment over WebRTC, or a worker that loads a Keras thread before a gateway, does exactly
that. ``install()`` (run by ``import ooblex``, before any Ooblex module can import aiortc) makes the
import system load ``pylibsrtp._binding`` with ``RTLD_DEEPBIND``: it looks up its own symbols first.
It imports nothing itself. ``tests/test_native.py`` checks the crash and the fix in fresh processes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

#: Extension modules loaded with their own symbols first.
SELF_BOUND = ("pylibsrtp._binding",)


class _SelfBoundLoader(importlib.machinery.ExtensionFileLoader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        flags = sys.getdlopenflags()
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        try:
            return super().create_module(spec)
        finally:
            sys.setdlopenflags(flags)


class _SelfBoundFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None, target: Any = None) -> Any:
        if name not in SELF_BOUND:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader):
            spec.loader = _SelfBoundLoader(spec.name, spec.origin or "")
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once; only where the platform has ``RTLD_DEEPBIND``)."""
    if hasattr(os, "RTLD_DEEPBIND") and not any(isinstance(f, _SelfBoundFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SelfBoundFinder())
