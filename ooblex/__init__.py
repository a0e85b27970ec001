"""Ooblex: turn a trained model into a live video service with ultra-low latency.

    import ooblex as ob

    @ob.tensor_thread
    def blur(frame): ...

    ob.run(blur, source="clip.mp4", sink="out.mp4")
"""

from __future__ import annotations

from .builtin import identity
from .engine import Engine, Stream, StreamClosed, UnknownThread, Worker
from .frame import Frame
from .run import RunHandle, run
from .thread import Param, TensorThread, TensorThreadError, tensor_thread

__version__ = "0.1.0"

__all__ = [
    "Engine", "Frame", "Param", "RunHandle", "Stream", "StreamClosed", "TensorThread", "TensorThreadError",
    "UnknownThread", "Worker", "__version__", "identity", "run", "stats", "tensor_thread",
]


def __getattr__(name: str) -> object:
    """``ob.live`` is imported on first use, so ``import ooblex`` never pulls in ipywidgets."""
    if name == "live":
        from .jupyter import live

        return live
    raise AttributeError(f"module 'ooblex' has no attribute {name!r}")


def stats(handle: RunHandle | Stream) -> dict:
    """Per-stage latency (p50/p95/p99 ms), fps and drop counters of a run or a stream."""
    return handle.stats.snapshot()
