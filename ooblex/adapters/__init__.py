"""Framework adapters: a trained model becomes a tensor thread without hand-written glue.

``ob.torch.module``, ``ob.tensorflow.model`` and ``ob.onnx.session`` (loaded lazily, so
``import ooblex`` never imports a framework) share the pre/post-processing in ``base``. A framework
is imported when a thread's ``setup()`` loads its model (or at once, when the caller already has
it or asks for a device), through ``framework()`` here: the one place that quiets its start-up banners.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile
import threading
from types import ModuleType

#: Set (unless already set) before a framework is imported: TensorFlow's C++ INFO lines stay off the
#: terminal while it runs; its warnings and errors still show.
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "1", "GRPC_VERBOSITY": "ERROR"}
#: Lines a framework writes to stderr while it is imported that say nothing about this program. TensorFlow
#: logs them through absl before any log level applies, so they are filtered out of the import's stderr.
BANNERS = re.compile(r"absl::InitializeLog\(\)|\] oneDNN custom operations are on|cpu_feature_guard|"
                     r"^To enable the following instructions:")
_lock = threading.Lock()


def framework(name: str) -> ModuleType:
    """``import name``, with its start-up banners dropped from stderr (everything else it writes is kept)."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    with _lock, tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            return importlib.import_module(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not BANNERS.search(line)))
