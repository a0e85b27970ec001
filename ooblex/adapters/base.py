"""What every framework adapter shares: the pre/post-processing recipe, padding, warm-up, batching.

User code gets uint8 HxWx3 RGB frames; models want float NCHW or NHWC batches, scaled and
normalised, maybe at a fixed size. Each framework does that work with its own operations where
the model runs (on the GPU next to a GPU model; on all cores of a CPU otherwise): the frames
travel as uint8, four times fewer bytes than floats, and a model's image output comes back
as uint8 frames, once per batch. ``Transform`` is the recipe; a framework's ``Pipeline`` carries
it out; ``model_thread`` wraps a pipeline into a ``TensorThread`` whose ``setup()`` loads the
model and warms it up at every batch size it will run, so the first live frame does not pay
for lazy initialisation, compilation or graph capture.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import jpeg
from ..frame import Pixels
from ..thread import TensorThread

Layout = Literal["nchw", "nhwc"]
Postprocess = Callable[[Any, np.ndarray], Any]


@dataclass(frozen=True)
class Transform:
    """Pre/post-processing between frames and a model.

    ``scale`` multiplies pixels (1/255 gives 0..1), then ``(x - mean) / std`` per channel;
    ``size`` (width, height) resizes frames for the model (bilinear, antialiased); image outputs
    are multiplied by ``output_scale``, rounded, clipped to uint8 and resized back to the frame.
    ``postprocess(output, frame)`` replaces the default output handling (it may return an image, a
    dict, or both) and then gets the model's raw output for one frame as numpy.
    """

    layout: Layout = "nchw"
    scale: float = 1 / 255
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    size: tuple[int, int] | None = None
    output_layout: Layout | None = None
    output_scale: float = 255.0
    postprocess: Postprocess | None = None

    def __post_init__(self) -> None:
        for what, v in (("layout", self.layout), ("output_layout", self.output_layout or self.layout)):
            if v not in ("nchw", "nhwc"):
                raise ValueError(f"{what} must be 'nchw' or 'nhwc', got {v!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (width, height), got {self.size!r}")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel ``(a, b)`` with ``model_input = pixel * a + b``: scale, mean and std as one multiply-add."""
        mean = np.asarray(self.mean if self.mean is not None else (0.0,) * 3, np.float64)
        std = np.asarray(self.std if self.std is not None else (1.0,) * 3, np.float64)
        return (self.scale / std).astype(np.float32), (-mean / std).astype(np.float32)

    @property
    def images(self) -> bool:
        """Whether image-shaped outputs become frames on the device (no ``postprocess`` wants the raw output)."""
        return self.postprocess is None

    def outputs(self, out: Any, frames: Sequence[Pixels]) -> list[Any]:
        """Split one batch output into one thread output per frame."""
        if isinstance(out, Images):
            return list(out.pixels[:len(frames)])
        multi = isinstance(out, (list, tuple))
        items = [[np.asarray(o)[i] for o in out] if multi else np.asarray(out)[i] for i in range(len(frames))]
        if self.postprocess is not None:
            return [self.postprocess(o, f) for o, f in zip(items, frames, strict=False)]
        return [{"output": np.asarray(o[0] if multi else o).tolist()} for o in items]


def nvidia_gpu() -> bool:
    """Whether this machine has an NVIDIA GPU this process may use, known without importing a framework
    (the driver's device node, and ``CUDA_VISIBLE_DEVICES`` not hiding every GPU)."""
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1")
    return not hidden and Path("/dev/nvidiactl").exists()


def image_like(shape: Sequence[int | None], layout: Layout) -> bool:
    """A batch output with 1 or 3 channels in its layout's channel axis: a picture to return as frames."""
    return len(shape) == 4 and shape[1 if layout == "nchw" else 3] in (1, 3)


@dataclass(frozen=True)
class Images:
    """A batch of image outputs already made into frames on the device: uint8 (n, height, width, 3)."""

    pixels: np.ndarray


class Pipeline:
    """One framework's way to run a batch: upload uint8 frames, preprocess, run the model, download once.

    ``__call__(frames, rows)`` runs ``frames`` (all the same size) as a batch of ``rows`` >= len(frames)
    (padding rows are computed and dropped) and returns ``Images`` or the model's raw output as numpy.
    ``decodes_jpeg``: the pipeline takes JPEG bytes and decodes them where the model is (GPU).
    """

    decodes_jpeg = False

    def __call__(self, frames: Sequence[Pixels], rows: int) -> Any:
        raise NotImplementedError

    def warm(self, frames: Sequence[np.ndarray], rows: int) -> None:
        """Run once so that lazy work (allocation, autotuning, compilation, graph capture) happens now."""
        self(frames, rows)


def padded_size(n: int, sizes: Sequence[int] | None) -> int:
    """The smallest of ``sizes`` that holds ``n`` frames (``n`` itself without ``sizes``).

    Models compiled or captured for fixed shapes run each batch at one of a few sizes; the rest
    of the batch is padding. ``n`` above every size is the caller's to split (see ``chunks``).
    """
    if not sizes:
        return n
    fits = [s for s in sizes if s >= n]
    if not fits:
        raise ValueError(f"{n} frames do not fit any batch size in {sorted(sizes)}")
    return min(fits)


def default_sizes(batch_size: int) -> tuple[int, ...]:
    """Powers of two up to ``batch_size``, and ``batch_size``: padding wastes under half a batch."""
    sizes = {batch_size}
    s = 1
    while s < batch_size:
        sizes.add(s)
        s *= 2
    return tuple(sorted(sizes))


def check_sizes(sizes: Sequence[int] | None) -> tuple[int, ...] | None:
    if sizes is None:
        return None
    out = tuple(sorted(set(sizes)))
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in out):
        raise ValueError(f"batch_sizes must be positive integers, got {sizes!r}")
    return out


def model_thread(load: Callable[[], Pipeline], transform: Transform, *, name: str, batch_size: int = 1,
                 max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
                 batch_sizes: Sequence[int] | None = None, description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running ``load()``'s pipeline with ``transform`` around it.

    ``load`` runs once, in the thread's ``setup()`` (off the event loop, before the first frame);
    ``warmup`` is the (height, width) of the blank batches then run through the model (one per
    size in ``batch_sizes``, else one of ``batch_size``), or None. ``batch_sizes``: the only batch
    sizes the model runs at; smaller batches are padded up to the nearest one.
    """
    sizes = check_sizes(batch_sizes)
    largest = max(sizes) if sizes else None
    batched = batch_size > 1
    color = options.get("color", "rgb")

    class Model:
        pipeline: Pipeline
        #: Whether frames may arrive as JPEG bytes (the pipeline decodes them where the model runs).
        decodes_jpeg = False

        def setup(self) -> None:
            self.pipeline = load()
            self.decodes_jpeg = self.pipeline.decodes_jpeg and transform.images and color == "rgb"
            if warmup is not None:
                blank = np.zeros((*warmup, 3), np.uint8)
                for rows in sizes or (batch_size,):
                    self.pipeline.warm([blank] * min(rows, batch_size), rows)

        def run(self, frames: list[Pixels]) -> list[Any]:
            outs: list[Any] = [None] * len(frames)
            for group in _same_size(frames):
                for chunk in _chunks(group, largest):
                    batch = [frames[i] for i in chunk]
                    for i, o in zip(chunk, transform.outputs(self.pipeline(batch, padded_size(len(batch), sizes)),
                                                             batch), strict=True):
                        outs[i] = o
            return outs

        def __call__(self, frame: Any) -> Any:
            if batched:
                return self.run([self._check(f) for f in frame])
            return self.run([self._check(frame)])[0]

        def _check(self, frame: Any) -> Pixels:
            if isinstance(frame, bytes) and self.decodes_jpeg:
                return frame
            return _check(frame)

    Model.__name__ = Model.__qualname__ = name
    Model.__doc__ = description or f"{name}: a model served by an ooblex adapter."
    return TensorThread(Model, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms,
                        description=Model.__doc__, **options)


def _same_size(frames: Sequence[Pixels]) -> list[list[int]]:
    """Indices of frames grouped by size (a batch across streams may mix sizes; one model call per size)."""
    groups: dict[Any, list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(jpeg.image_size(f) if isinstance(f, bytes) else f.shape, []).append(i)
    return list(groups.values())


def _chunks(indices: list[int], largest: int | None) -> list[list[int]]:
    if largest is None:
        return [indices]
    return [indices[i:i + largest] for i in range(0, len(indices), largest)]


def _check(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {desc}")
    return frame
