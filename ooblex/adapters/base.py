"""What every framework adapter shares: frames to a float batch and back, warm-up, batching.

User code gets uint8 HxWx3 RGB frames; models want float NCHW or NHWC batches, scaled and
normalised, maybe at a fixed size. ``Transform`` does both directions; ``model_thread`` wraps
a framework's loader into a ``TensorThread`` whose ``setup()`` loads the model and runs one
warm-up batch, so the first live frame does not pay for lazy initialisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from ..thread import TensorThread

Layout = Literal["nchw", "nhwc"]
Infer = Callable[[np.ndarray], Any]
Postprocess = Callable[[Any, np.ndarray], Any]


@dataclass(frozen=True)
class Transform:
    """Pre/post-processing between frames and a model.

    ``scale`` multiplies pixels (1/255 gives 0..1), then ``(x - mean) / std`` per channel;
    ``size`` (width, height) resizes frames for the model; image outputs are multiplied by
    ``output_scale``, clipped to uint8 and resized back to the frame. ``postprocess(output, frame)``
    replaces the default output handling (it may return an image, a dict, or both).
    """

    layout: Layout = "nchw"
    scale: float = 1 / 255
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    size: tuple[int, int] | None = None
    output_layout: Layout | None = None
    output_scale: float = 255.0
    postprocess: Postprocess | None = None
    dtype: Any = np.float32

    def __post_init__(self) -> None:
        for what, v in (("layout", self.layout), ("output_layout", self.output_layout or self.layout)):
            if v not in ("nchw", "nhwc"):
                raise ValueError(f"{what} must be 'nchw' or 'nhwc', got {v!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"size must be (width, height), got {self.size!r}")

    def batch(self, frames: list[np.ndarray]) -> np.ndarray:
        """One float batch from same-shaped (after ``size``) uint8 RGB frames."""
        if self.size is not None:
            frames = [cv2.resize(f, self.size, interpolation=cv2.INTER_AREA) for f in frames]
        x = np.stack(frames).astype(np.float32) * self.scale
        if self.mean is not None:
            x -= np.asarray(self.mean, np.float32)
        if self.std is not None:
            x /= np.asarray(self.std, np.float32)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=self.dtype)

    def outputs(self, out: Any, frames: list[np.ndarray]) -> list[Any]:
        """Split a batch output into one thread output per frame."""
        multi = isinstance(out, (list, tuple))
        items = [[np.asarray(o)[i] for o in out] if multi else np.asarray(out)[i] for i in range(len(frames))]
        if self.postprocess is not None:
            return [self.postprocess(o, f) for o, f in zip(items, frames, strict=False)]
        return [self._default(o[0] if multi else o, f) for o, f in zip(items, frames, strict=False)]

    def _default(self, out: np.ndarray, frame: np.ndarray) -> Any:
        layout = self.output_layout or self.layout
        channels = out.shape[0 if layout == "nchw" else -1] if out.ndim == 3 else 0
        if channels not in (1, 3):
            return {"output": out.tolist()}
        img = out.transpose(1, 2, 0) if layout == "nchw" else out
        img = np.clip(img.astype(np.float32) * self.output_scale, 0, 255).astype(np.uint8)
        if channels == 1:
            img = img[:, :, 0]
        if img.shape[:2] != frame.shape[:2]:
            img = cv2.resize(img, (frame.shape[1], frame.shape[0]), interpolation=cv2.INTER_LINEAR)
        return np.repeat(img[:, :, None], 3, axis=2) if channels == 1 else img

def model_thread(load: Callable[[], Infer], transform: Transform, *, name: str, batch_size: int = 1,
                 max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640), description: str = "",
                 **options: Any) -> TensorThread:
    """A tensor thread running ``load()``'s inference function with ``transform`` around it.

    ``load`` runs once, in the thread's ``setup()`` (off the event loop, before the first frame);
    ``warmup`` is the (height, width) of the blank batch then run through the model, or None.
    """
    batched = batch_size > 1

    class Model:
        infer: Infer

        def setup(self) -> None:
            self.infer = load()
            if warmup is not None:
                self.run([np.zeros((*warmup, 3), np.uint8)] * batch_size)

        def run(self, frames: list[np.ndarray]) -> list[Any]:
            if transform.size is None and len({f.shape for f in frames}) > 1:
                return [self.run([f])[0] for f in frames]  # a batch across streams of different sizes
            return transform.outputs(self.infer(transform.batch(frames)), frames)

        def __call__(self, frame: Any) -> Any:
            if batched:
                return self.run([_check(f) for f in frame])
            return self.run([_check(frame)])[0]

    Model.__name__ = Model.__qualname__ = name
    Model.__doc__ = description or f"{name}: a model served by an ooblex adapter."
    return TensorThread(Model, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms,
                        description=Model.__doc__, **options)


def _check(frame: Any) -> np.ndarray:
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        desc = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {desc}")
    return frame
