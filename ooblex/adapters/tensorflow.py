"""``ob.tensorflow.model(model)``: a Keras / TensorFlow model served as a tensor thread.

Accepts a Keras model, a path to a ``.keras`` file, or a zero-argument function returning a model;
runs it on the first GPU when TensorFlow sees one (else CPU) through a compiled ``tf.function``
with ``training=False``, and warms up at setup. NHWC is the default layout, as in Keras.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..thread import TensorThread
from .base import Layout, Postprocess, Transform, model_thread


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"/GPU:0"`` when TensorFlow sees a GPU, else ``"/CPU:0"``."""
    import tensorflow as tf

    if device == "auto":
        return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    if "GPU" in device.upper() and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError(f"device {device!r} asked for, but TensorFlow sees no GPU")
    return device


def model(model: Any, *, name: str = "tf_model", device: str = "auto", layout: Layout = "nhwc",
          scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          size: tuple[int, int] | None = None, output_scale: float = 255.0, postprocess: Postprocess | None = None,
          batch_size: int = 1, max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
          description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running a Keras model (object, ``.keras`` path, or factory called at setup)."""
    if isinstance(model, (str, PathLike)) and not Path(model).is_file():
        raise FileNotFoundError(f"no Keras model at {model}")
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> Callable[[np.ndarray], Any]:
        import tensorflow as tf

        if isinstance(model, (str, PathLike)):
            net = tf.keras.models.load_model(model, compile=False)
        elif isinstance(model, tf.Module) or hasattr(model, "predict"):
            net = model
        elif callable(model):
            net = model()
        else:
            raise TypeError(f"ob.tensorflow.model needs a Keras model, a .keras path or a factory, "
                            f"got {type(model).__name__}")
        dev = pick_device(device)
        call = tf.function(lambda x: net(x, training=False), reduce_retracing=True)

        def infer(x: np.ndarray) -> Any:
            with tf.device(dev):
                out = call(tf.constant(x))
            return [o.numpy() for o in out] if isinstance(out, (list, tuple)) else out.numpy()

        return infer

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        description=description, **options)
