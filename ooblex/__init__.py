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
    "UnknownThread", "Worker", "__version__", "deploy", "identity", "live", "process", "run", "stats", "tensor_thread",
    "undeploy", "weight",
]

#: Cluster functions, imported on first use (they need the ``cluster`` extra: redis, aio-pika).
_LAZY = {"deploy": "ooblex.cluster.deploy", "undeploy": "ooblex.cluster.deploy",
         "deployment": "ooblex.cluster.deploy", "process": "ooblex.cluster.process",
         "weight": "ooblex.cluster.weights", "ClusterEngine": "ooblex.cluster.engine"}


#: Framework adapters (``ob.torch.module``, ``ob.tensorflow.model``, ``ob.onnx.session``), imported on first use.
_ADAPTERS = ("torch", "tensorflow", "onnx")


def __getattr__(name: str) -> object:
    """Lazy attributes: ``import ooblex`` imports no framework and no cluster client."""
    import importlib

    if name in _ADAPTERS:
        module = importlib.import_module(f".adapters.{name}", __name__)
        globals()[name] = module
        return module
    if name in _LAZY:
        try:
            module = importlib.import_module(_LAZY[name])
        except ImportError as exc:
            raise ImportError(f"ooblex.{name} needs the cluster extra ({exc}): pip install 'ooblex[cluster]'") from exc
        return getattr(module, name)
    raise AttributeError(f"module 'ooblex' has no attribute {name!r}")


def live(thread_or_function: object, source: object = "webcam", **options: object) -> object:
    """Live-test a tensor thread or function in a notebook: see ``ooblex.jupyter.live`` and docs/jupyter.md.

    Imports the widget (ipywidgets, anywidget) only when called, so ``import ooblex`` stays light.
    """
    from .jupyter import live as live_widget

    return live_widget(thread_or_function, source, **options)


def stats(handle: RunHandle | Stream) -> dict:
    """Per-stage latency (p50/p95/p99 ms), fps and drop counters of a run or a stream."""
    return handle.stats.snapshot()
