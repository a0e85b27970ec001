"""Threads every engine serves: ``identity`` measures the platform itself."""

from __future__ import annotations

import numpy as np

from .thread import tensor_thread


@tensor_thread(name="identity")
def identity(frame: np.ndarray) -> np.ndarray:
    """Returns the frame unchanged: what is left of the latency is the platform's own."""
    return frame
