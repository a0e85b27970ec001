"""Ooblex: turn a trained model into a live video service with ultra-low latency.

    import ooblex as ob

    @ob.tensor_thread
    def blur(frame): ...

    ob.run(blur, source="clip.mp4", sink="out.mp4")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import native
from .builtin import identity
from .engine import Engine, Stream, StreamClosed, UnknownThread, Worker
from .frame import Frame
from .run import RunHandle, run
from .thread import Param, TensorThread, TensorThreadError, tensor_thread

if TYPE_CHECKING:
    from .jupyter.widget import LiveWidget

native.install()  # before any module of ours imports aiortc (none of the above does): see native.py

__version__ = "0.1.0"

__all__ = [
    "Engine", "Frame", "Param", "RunHandle", "Stream", "StreamClosed", "TensorThread", "TensorThreadError",
    "UnknownThread", "Worker", "__version__", "cluster", "deploy", "identity", "live", "process", "run", "stats",
    "tensor_thread", "undeploy", "weight",
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

    if name == "cluster":  # the subpackage, callable: ob.cluster() (see ooblex/cluster/__init__.py)
        try:
            return importlib.import_module(".cluster", __name__)
        except ImportError as exc:
            raise ImportError(f"ooblex.cluster needs the cluster extra ({exc}): pip install 'ooblex[cluster]'") from exc
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


def live(thread_or_function: Any, source: Any = "webcam", *, params: dict[str, Any] | None = None,
         name: str | None = None, width: int = 640, height: int = 480, quality: float = 0.8,
         codec: str = "jpeg", max_in_flight: int = 1, max_latency_ms: float = 500.0, autostart: bool = True,
         loop: bool = True, max_record_s: float = 60.0, transport: str = "webrtc") -> LiveWidget:
    """Live-test a tensor thread or function in a notebook: the source and its processed output side by side,
    with a control per keyword parameter, fps and latency (docs/jupyter.md).

    - ``thread_or_function``: a tensor thread or plain function, or a list of them (compare mode: the same
      frames go to each, shown side by side, each with its own fps and latency). Calling again with threads
      of the same names (or the same ``name``) swaps the new code into the running widget. A ``Deployment``
      (``ob.deploy``'s answer) or ``"name"`` / ``"name@version"`` runs on the current cluster, the kernel
      sending each frame through the gateway serving that version (``transport``): ``ob.live([my_fn,
      deployment])`` compares the two; ``name@version`` also reaches an earlier version kept with
      ``ob.deploy(..., keep_versions=True)``.
    - ``source``: ``"webcam"`` (the browser's camera), an ipywebrtc ``CameraStream`` (its constraints are
      used), or a kernel-side source: a video file, an ``rtsp://`` or ``http://`` MJPEG URL, or a camera
      index of the kernel's machine.
    - ``params``: starting parameter values (``{"name": value}``; per thread in compare mode).
    - ``name``: the key the widget is kept under for code swaps (default: the threads' names).
    - ``width``, ``height``: the camera size asked of the browser.
    - ``quality``: JPEG quality of frames between browser and kernel (0-1).
    - ``codec``: ``"jpeg"`` or ``"raw"`` (RGBA pixels, no encoding: a kernel on the browser's machine).
    - ``max_in_flight``: browser frames unanswered at once; 1 gives the lowest latency, 2 more fps over a
      long round trip (a remote hub).
    - ``max_latency_ms``: staleness budget: frames older than this are skipped, not computed.
    - ``autostart``: start the camera or source at once.
    - ``loop``: replay a video file source when it ends.
    - ``max_record_s``: the longest recording the Record button makes.
    - ``transport``: how a deployed lane reaches the gateway serving exactly its version: ``"webrtc"``
      (WHIP, VP8 both ways: the path browsers and cameras take) or ``"websocket"`` (a JPEG per frame,
      each with its own JSON result; also where UDP cannot pass).

    Imports the widget (ipywidgets, anywidget) only when called, so ``import ooblex`` stays light.
    """
    from .jupyter import live as live_widget

    return live_widget(thread_or_function, source, params=params, name=name, width=width, height=height,
                       quality=quality, codec=codec, max_in_flight=max_in_flight, max_latency_ms=max_latency_ms,
                       autostart=autostart, loop=loop, max_record_s=max_record_s,
                       transport=transport)  # type: ignore[arg-type]


def stats(handle: RunHandle | Stream) -> dict:
    """Per-stage latency (p50/p95/p99 ms), fps and drop counters of a run or a stream."""
    return handle.stats.snapshot()
