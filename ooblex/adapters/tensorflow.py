"""``ob.tensorflow.model(model)``: a Keras / TensorFlow model served as a tensor thread.

Accepts a Keras model, a path to a ``.keras`` file, or a zero-argument function returning a model;
runs it on the first GPU when TensorFlow sees one (else CPU). Pre-processing, the model with
``training=False`` and the conversion of an image output back to uint8 frames are one compiled
``tf.function`` placed on that device: uint8 frames go in, uint8 frames (or the raw output) come
out, once per batch. NHWC is the default layout, as in Keras.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..thread import TensorThread
from . import framework
from .base import Images, Layout, Pipeline, Pixels, Postprocess, Transform, image_like, model_thread


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"/GPU:0"`` when TensorFlow sees a GPU, else ``"/CPU:0"``."""
    tf = framework("tensorflow")

    if device == "auto":
        return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"
    if "GPU" in device.upper() and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError(f"device {device!r} asked for, but TensorFlow sees no GPU")
    return device


def model(model: Any, *, name: str = "tf_model", device: str = "auto", layout: Layout = "nhwc",
          scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          size: tuple[int, int] | None = None, output_scale: float = 255.0, postprocess: Postprocess | None = None,
          batch_size: int = 1, max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
          batch_sizes: Sequence[int] | None = None, description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running a Keras model (object, ``.keras`` path, or factory called at setup).

    ``batch_sizes``: pad batches to these sizes, so the compiled function is traced for a few shapes only.
    """
    if isinstance(model, (str, PathLike)) and not Path(model).is_file():
        raise FileNotFoundError(f"no Keras model at {model}")
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> TfPipeline:
        tf = framework("tensorflow")

        if isinstance(model, (str, PathLike)):
            net = tf.keras.models.load_model(model, compile=False)
        elif isinstance(model, tf.Module) or hasattr(model, "predict"):
            net = model
        elif callable(model):
            net = model()
        else:
            raise TypeError(f"ob.tensorflow.model needs a Keras model, a .keras path or a factory, "
                            f"got {type(model).__name__}")
        return TfPipeline(net, pick_device(device), transform)

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        batch_sizes=batch_sizes, description=description, **options)


class TfPipeline(Pipeline):
    """One ``tf.function``: uint8 frames -> preprocess -> model -> uint8 frames, placed on one device."""

    def __init__(self, net: Any, device: str, transform: Transform) -> None:
        tf = framework("tensorflow")

        self.device, self.transform = device, transform
        a, b = transform.affine()
        t = transform

        def run(frames: Any) -> tuple[Any, bool]:
            x = frames  # resized before the maths, on the fewer pixels when a model wants small frames
            if t.size is not None:
                x = tf.image.resize(x, (t.size[1], t.size[0]), method="bilinear", antialias=True)
            x = tf.cast(x, tf.float32) * a + b
            if t.layout == "nchw":
                x = tf.transpose(x, [0, 3, 1, 2])
            y = net(x, training=False)
            first = y[0] if isinstance(y, (list, tuple)) else y
            if t.images and image_like(first.shape, t.output_layout or t.layout):
                return _to_frames(first, tf.shape(frames)[1:3], t), True
            return y, False

        self.call = tf.function(run, reduce_retracing=True)

    def __call__(self, frames: Sequence[Pixels], rows: int) -> Any:
        tf = framework("tensorflow")

        n = len(frames)
        batch = np.empty((rows, *frames[0].shape), np.uint8)  # type: ignore[union-attr]
        for i, f in enumerate(frames):
            batch[i] = f
        batch[n:] = 0
        with tf.device(self.device):
            y, is_image = self.call(tf.constant(batch))
        if is_image:
            return Images(y.numpy()[:n])
        if isinstance(y, (list, tuple)):
            return [np.asarray(o.numpy()[:n], np.float32) for o in y]
        return np.asarray(y.numpy()[:n], np.float32)


def _to_frames(y: Any, hw: Any, t: Transform) -> Any:
    """A batch of 1- or 3-channel images -> uint8 NHWC RGB frames of size ``hw`` (inside the tf.function)."""
    tf = framework("tensorflow")

    if (t.output_layout or t.layout) == "nchw":
        y = tf.transpose(y, [0, 2, 3, 1])
    y = tf.cast(y, tf.float32) * t.output_scale
    y = tf.cond(tf.reduce_all(tf.shape(y)[1:3] == hw), lambda: y,
                lambda: tf.image.resize(y, hw, method="bilinear", antialias=True))
    y = tf.cast(tf.round(tf.clip_by_value(y, 0, 255)), tf.uint8)
    return tf.tile(y, [1, 1, 1, 3]) if y.shape[-1] == 1 else y
