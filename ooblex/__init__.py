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


_ADAPTERS = ("torch", "tensorflow", "onnx")


def __getattr__(name: str) -> object:
    """``ob.torch`` / ``ob.tensorflow`` / ``ob.onnx``: framework adapters, imported on first use only."""
    if name in _ADAPTERS:
        import importlib

        module = importlib.import_module(f".adapters.{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'ooblex' has no attribute {name!r}")


def stats(handle: RunHandle | Stream) -> dict:
    """Per-stage latency (p50/p95/p99 ms), fps and drop counters of a run or a stream."""
    return handle.stats.snapshot()
