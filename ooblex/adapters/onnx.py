"""``ob.onnx.session(path)``: an ONNX model served by onnxruntime as a tensor thread.

Uses the CUDA execution provider when onnxruntime has it (else CPU), feeds the model's first
input, and warms up at setup. Pre/post-processing: see ``Transform``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..cluster.weights import weight
from ..thread import TensorThread
from .base import Layout, Postprocess, Transform, model_thread

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def pick_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The asked-for providers that this onnxruntime build has (GPU first by default), or raise naming them."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = [p for p in (providers or PREFERRED) if p in available]
    if providers is not None and len(wanted) != len(providers):
        missing = sorted(set(providers) - set(available))
        raise RuntimeError(f"onnxruntime has no {missing} (available: {available})")
    return [p for p in wanted if providers is not None or p != "TensorrtExecutionProvider"] or ["CPUExecutionProvider"]


def session(path_or_session: str | PathLike[str] | Any, *, name: str = "onnx_model",
            providers: Sequence[str] | None = None, threads: int = 0, **options: Any) -> TensorThread:
    """A tensor thread running an ONNX model: a path (session created at setup) or an ``InferenceSession``.

    ``providers`` defaults to CUDA when available, then CPU; ``threads`` sets onnxruntime's intra-op
    threads (0 = its default). The model's first input gets the batch in its declared float type.
    Pre/post-processing and batching: ``model`` (``layout``, ``scale``, ``mean``, ``std``, ``size``, ...).
    """
    import onnxruntime as ort

    if isinstance(path_or_session, ort.InferenceSession):
        return model(lambda: path_or_session, name=name, **options)
    path = Path(path_or_session)
    if not path.is_file():
        raise FileNotFoundError(f"no ONNX model at {path}")
    return model(lambda: open_session(str(path), providers, threads), name=name, **options)


def from_weight(weight_name: str, *, name: str = "onnx_model", providers: Sequence[str] | None = None,
                threads: int = 0, **options: Any) -> TensorThread:
    """``session`` for a model deployed as a weight file (``ob.deploy(..., weights=[path])``, or an ONNX
    upload in a gateway's console): the worker finds it with ``ob.weight(weight_name)`` when it loads
    the thread, so this side needs neither the file nor onnxruntime."""
    return model(lambda: open_session(str(weight(weight_name)), providers, threads), name=name, **options)


def open_session(path: str, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=pick_providers(providers))


def model(open_model: Callable[[], Any], *, name: str = "onnx_model", layout: Layout = "nchw",
          scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          size: tuple[int, int] | None = None, output_scale: float = 255.0, postprocess: Postprocess | None = None,
          batch_size: int = 1, max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
          description: str = "", **options: Any) -> TensorThread:
    """The tensor thread around ``open_model()`` (an ``InferenceSession``, made at setup) with its ``Transform``."""
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> Callable[[np.ndarray], Any]:
        sess = open_model()
        first = sess.get_inputs()[0]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        single = len(sess.get_outputs()) == 1

        def infer(x: np.ndarray) -> Any:
            out = sess.run(None, {first.name: x.astype(dtype, copy=False)})
            return out[0] if single else out

        return infer

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        description=description, **options)
