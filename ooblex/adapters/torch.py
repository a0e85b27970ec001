"""``ob.torch.module(model)``: a PyTorch ``nn.Module`` served as a tensor thread.

Picks CUDA when available (else CPU), puts the model in eval mode, runs under
``torch.inference_mode()`` and warms up at setup. Pre/post-processing: see ``Transform``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..thread import TensorThread
from .base import Layout, Postprocess, Transform, model_thread


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; anything else is checked and returned."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    torch.device(device)  # raises on a malformed name
    return device


def module(model: Any | Callable[[], Any], *, name: str = "torch_model", device: str = "auto", half: bool = False,
           layout: Layout = "nchw", scale: float = 1 / 255, mean: Sequence[float] | None = None,
           std: Sequence[float] | None = None, size: tuple[int, int] | None = None, output_scale: float = 255.0,
           postprocess: Postprocess | None = None, batch_size: int = 1, max_wait_ms: float = 0.0,
           warmup: tuple[int, int] | None = (480, 640), description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running ``model`` (an ``nn.Module``, or a zero-argument function returning one,
    called at setup so heavy weights load in the worker, not at import).

    ``device`` "auto" | "cpu" | "cuda[:n]"; ``half`` runs fp16 on CUDA. Batching: ``batch_size`` frames
    within ``max_wait_ms`` go through the model at once. Other options go to ``tensor_thread``.
    """
    import torch

    if not (isinstance(model, torch.nn.Module) or callable(model)):
        raise TypeError(f"ob.torch.module needs an nn.Module or a function returning one, got {type(model).__name__}")
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> Callable[[np.ndarray], Any]:
        net = model if isinstance(model, torch.nn.Module) else model()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"{name}: the model factory returned {type(net).__name__}, not an nn.Module")
        dev = torch.device(pick_device(device))
        use_half = half and dev.type == "cuda"
        net = net.to(dev).eval()
        if use_half:
            net = net.half()

        def infer(x: np.ndarray) -> Any:
            with torch.inference_mode():
                t = torch.from_numpy(x).to(dev, non_blocking=True)
                out = net(t.half() if use_half else t)
                return _to_numpy(out)

        return infer

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        description=description, **options)


def _to_numpy(out: Any) -> Any:
    if isinstance(out, (list, tuple)):
        return [_to_numpy(o) for o in out]
    return out.detach().float().cpu().numpy()
