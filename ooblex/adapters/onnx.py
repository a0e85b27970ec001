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
            providers: Sequence[str] | None = None, threads: int = 0, layout: Layout = "nchw",
            scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            size: tuple[int, int] | None = None, output_scale: float = 255.0, postprocess: Postprocess | None = None,
            batch_size: int = 1, max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
            description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running an ONNX model: a path (session created at setup) or an ``InferenceSession``.

    ``providers`` defaults to CUDA when available, then CPU; ``threads`` sets onnxruntime's intra-op
    threads (0 = its default). The model's first input gets the batch in its declared float type.
    """
    import onnxruntime as ort

    if not isinstance(path_or_session, ort.InferenceSession):
        path = Path(path_or_session)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> Callable[[np.ndarray], Any]:
        if isinstance(path_or_session, ort.InferenceSession):
            sess = path_or_session
        else:
            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            sess = ort.InferenceSession(str(path_or_session), opts, providers=pick_providers(providers))
        first = sess.get_inputs()[0]
        dtype = np.float16 if first.type == "tensor(float16)" else np.float32
        single = len(sess.get_outputs()) == 1

        def infer(x: np.ndarray) -> Any:
            out = sess.run(None, {first.name: x.astype(dtype, copy=False)})
            return out[0] if single else out

        return infer

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        description=description, **options)
