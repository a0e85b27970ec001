"""Demo tensor threads that ship their weights: face detection, privacy filters, face swap, style nets.

Nothing here downloads anything: face weights come from pip packages (``dlib-bin``,
``face_recognition_models``), the style networks' weights are committed under ``models/weights``.
The folder installs as the package ``ooblex_models``, so a user's own ``models`` package cannot collide with it.
Importing a demo is cheap: its frameworks (dlib, torch, onnxruntime, TensorFlow) load in the thread's
``setup()``, when it first runs, so ``ooblex demo`` lists every thread at once. Each submodule checks at
import that its frameworks are installed (``require``, which imports nothing), so ``load_demo_threads``
skips a demo whose dependencies are missing with a warning instead of failing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging

from ooblex.thread import TensorThread

log = logging.getLogger("ooblex.models")

#: thread name -> "module:attribute", in the order the demo lists them.
DEMOS = {
    "face_detect": "ooblex_models.detect:face_detect",
    "face_blur": "ooblex_models.privacy:face_blur",
    "face_pixelate": "ooblex_models.privacy:face_pixelate",
    "face_swap": "ooblex_models.swap:face_swap",
    "cartoon_torch": "ooblex_models.cartoon:cartoon_torch",
    "cartoon_onnx": "ooblex_models.cartoon_onnx:cartoon_onnx",
    "sketch": "ooblex_models.sketch:sketch",
}


def require(*modules: str) -> None:
    """Raise ``ImportError`` naming the first of ``modules`` that is not installed, without importing any."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise ImportError(f"No module named {module!r}", name=module)


def load_demo_thread(name: str) -> TensorThread:
    """One demo thread by name; raises ``ImportError`` if its optional dependencies are missing."""
    if name not in DEMOS:
        raise KeyError(f"no demo thread {name!r} (demo threads: {', '.join(DEMOS)})")
    module, attr = DEMOS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def load_demo_threads() -> list[TensorThread]:
    """Every demo thread whose dependencies are installed; each missing one is logged and skipped."""
    threads = []
    for name in DEMOS:
        try:
            threads.append(load_demo_thread(name))
        except ImportError as exc:
            log.warning("demo thread %s skipped: %s (pip install 'ooblex[models]' or the framework extra)",
                        name, exc)
    return threads

