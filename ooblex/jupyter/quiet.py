"""``quiet_native_logs()``: keep what native libraries print straight to stderr out of notebook cells.

ipykernel copies everything written to the process's stderr (file descriptor 2) into the running
cell's output. Some libraries write there from C++ before any of their log settings apply:
TensorFlow >= 2.16 prints absl and oneDNN banners at import whatever ``TF_CPP_MIN_LOG_LEVEL`` says.
Python's own ``sys.stderr`` (warnings, tracebacks) is untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """While the block runs, whatever is written to file descriptor 2 is discarded."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
