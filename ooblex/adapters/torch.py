"""``ob.torch.module(model)``: a PyTorch ``nn.Module`` served as a tensor thread.

Picks CUDA when available (else CPU), puts the model in eval mode and runs under
``torch.inference_mode()``. Frames go to the device as uint8 (from pinned memory, without
blocking, on CUDA) and are resized and normalised there with torch operations; an image output
is made into uint8 frames there too and comes back in one copy per batch. On a CPU the same
torch operations use every core.

Each call in flight (``concurrency``, 2 by default on CUDA) has its own *lane*: a CUDA stream
and its own host buffers, so one batch's copies overlap another's compute. Launch overhead:
``accelerate="graphs"`` replays a CUDA graph per batch shape, ``"compile"`` runs the whole
pipeline through ``torch.compile``; both pad batches to a few fixed sizes (``batch_sizes``) and
are warmed up (captured, compiled) in ``setup()``.
"""

from __future__ import annotations

import contextlib
import queue
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from .. import jpeg
from ..thread import TensorThread
from . import framework
from .base import (
    Images,
    Layout,
    Pipeline,
    Pixels,
    Postprocess,
    Transform,
    default_sizes,
    image_like,
    model_thread,
    nvidia_gpu,
)

Accelerate = Literal["graphs", "compile"]
#: Graphs captured per lane at most (one per batch size and frame size); other shapes run eagerly.
MAX_GRAPHS = 32


def pick_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; anything else is checked and returned."""
    torch = framework("torch")

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
           warmup: tuple[int, int] | None = (480, 640), accelerate: Accelerate | None = None,
           batch_sizes: Sequence[int] | None = None, channels_last: bool = False, concurrency: int | None = None,
           description: str = "", **options: Any) -> TensorThread:
    """A tensor thread running ``model`` (an ``nn.Module``, or a zero-argument function returning one,
    called at setup so heavy weights load in the worker, not at import).

    ``device`` "auto" | "cpu" | "cuda[:n]"; ``half`` runs fp16 on CUDA. Batching: ``batch_size`` frames
    within ``max_wait_ms`` go through the model at once. ``accelerate`` "graphs" (CUDA only) or "compile"
    pads batches to ``batch_sizes`` (default: powers of two up to ``batch_size``). ``channels_last`` runs
    convolutions in NHWC memory order (faster for fp16 on tensor cores; the model must not ``view()``
    its activations). ``concurrency``: batches in flight (default 2 on CUDA, 1 on CPU).
    Other options go to ``tensor_thread``.

    Given a factory, ``device="auto"`` and no ``accelerate``, torch is imported only at setup (a listing of
    threads does not load it); the default ``concurrency`` then follows whether this machine has an NVIDIA GPU.
    """
    if not callable(model):  # an nn.Module is callable too
        raise TypeError(f"ob.torch.module needs an nn.Module or a function returning one, got {type(model).__name__}")
    if accelerate not in (None, "graphs", "compile"):
        raise ValueError(f"accelerate must be None, 'graphs' or 'compile', got {accelerate!r}")
    later = device == "auto" and accelerate is None and "torch" not in sys.modules
    chosen = None if later else pick_device(device)
    if accelerate == "graphs" and not str(chosen).startswith("cuda"):
        raise ValueError("accelerate='graphs' needs a CUDA device (CUDA graphs); on a CPU use 'compile' or None")
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)
    lanes = concurrency or (2 if (nvidia_gpu() if later else str(chosen).startswith("cuda")) else 1)
    if accelerate is not None and batch_sizes is None:
        batch_sizes = default_sizes(batch_size)

    def load() -> TorchPipeline:
        torch = framework("torch")
        dev = torch.device(chosen or pick_device(device))
        net = model if isinstance(model, torch.nn.Module) else model()
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"{name}: the model factory returned {type(net).__name__}, not an nn.Module")
        return TorchPipeline(net, dev, transform, half=half and dev.type == "cuda", accelerate=accelerate,
                             lanes=lanes, channels_last=channels_last)

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        batch_sizes=batch_sizes, description=description, concurrency=lanes, **options)


class TorchPipeline(Pipeline):
    """uint8 frames -> device -> preprocess -> model -> (frames) -> host, one lane per call in flight."""

    def __init__(self, net: Any, dev: Any, transform: Transform, *, half: bool, accelerate: Accelerate | None,
                 lanes: int, channels_last: bool) -> None:
        torch = framework("torch")

        self.dev, self.transform, self.accelerate = dev, transform, accelerate
        self.dtype = torch.float16 if half else torch.float32
        self.memory = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(dev).eval()
        self.net = (net.half() if half else net).to(memory_format=self.memory)
        a, b = transform.affine()
        shape = (1, 3, 1, 1) if transform.layout == "nchw" else (3,)
        self.a = torch.from_numpy(a).to(dev, self.dtype).view(shape)
        self.b = torch.from_numpy(b).to(dev, self.dtype).view(shape)
        self.forward: Callable[[Any, tuple[int, int]], Any] = self._forward
        if accelerate == "compile":
            import torch._dynamo

            # one compiled variant per (batch size, frame size): keep them all rather than fall back to eager
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self.forward = torch.compile(self._forward, dynamic=False)
        self.lanes: queue.SimpleQueue[_Lane] = queue.SimpleQueue()
        self.lane_count = lanes
        for _ in range(lanes):
            self.lanes.put(_Lane(dev))
        self.decodes_jpeg = dev.type == "cuda" and jpeg.cuda_decoder() is not None

    def __call__(self, frames: Sequence[Pixels], rows: int) -> Any:
        with self._lane() as lane:
            return self._run(lane, frames, rows)

    def warm(self, frames: Sequence[np.ndarray], rows: int) -> None:
        """Every lane runs the batch: each has its own buffers and, with graphs, its own captured graph."""
        held = [self.lanes.get() for _ in range(self.lane_count)]
        try:
            for lane in held:
                self._run(lane, frames, rows)
        finally:
            for lane in held:
                self.lanes.put(lane)

    @contextlib.contextmanager
    def _lane(self) -> Iterator[_Lane]:
        lane = self.lanes.get()
        try:
            yield lane
        finally:
            self.lanes.put(lane)

    def _run(self, lane: _Lane, frames: Sequence[Pixels], rows: int) -> Any:
        torch = framework("torch")

        n = len(frames)
        with torch.inference_mode(), lane.active():
            if isinstance(frames[0], bytes):  # JPEG from a cluster wire: decoded on the GPU, already there
                x = lane.device_input(rows, jpeg.cuda_decoder()(list(frames), self.dev))  # type: ignore[misc]
            else:
                x = lane.host_input(rows, frames)
            hw = (x.shape[1], x.shape[2])
            y, is_image = self._compute(lane, x, hw)
            out = lane.download(y, n)
        return Images(out) if is_image else out

    def _compute(self, lane: _Lane, x: Any, hw: tuple[int, int]) -> tuple[Any, bool]:
        if self.accelerate != "graphs":
            return self.forward(x.to(self.dev, non_blocking=True), hw)
        graph = lane.graphs.get(tuple(x.shape))
        if graph is None:
            if len(lane.graphs) >= MAX_GRAPHS:
                return self.forward(x.to(self.dev, non_blocking=True), hw)
            graph = lane.graphs[tuple(x.shape)] = _Graph(self.forward, x, hw, lane.stream)
        return graph.replay(x)

    def _forward(self, x: Any, hw: tuple[int, int]) -> tuple[Any, bool]:
        """uint8 NHWC on the device -> the model's input -> the model -> frames (or its raw output).

        The pixels stay uint8 as long as they can: resized first on a CPU (torch's antialiased uint8 resize is
        vectorised there, ten times cheaper than on floats), reordered in memory as bytes, then made floats,
        scaled and normalised in place.
        """
        torch = framework("torch")
        from torch.nn import functional as F

        t = self.transform
        x = x.permute(0, 3, 1, 2)  # a view: NCHW indexing over the NHWC bytes
        if t.size is not None:
            x = x if x.device.type == "cpu" else x.to(self.dtype)
            x = F.interpolate(x, size=(t.size[1], t.size[0]), mode="bilinear", antialias=True, align_corners=False)
        x = x.contiguous(memory_format=self.memory) if t.layout == "nchw" else x.permute(0, 2, 3, 1).contiguous()
        x = x.to(self.dtype).mul_(self.a).add_(self.b)  # a new tensor: uint8 input, or a resize output
        y = self.net(x)
        first = y[0] if isinstance(y, (list, tuple)) else y
        if not (t.images and isinstance(first, torch.Tensor) and image_like(first.shape, t.output_layout or t.layout)):
            return y, False
        return self._to_frames(first, hw), True

    def _to_frames(self, y: Any, hw: tuple[int, int]) -> Any:
        """A batch of 1- or 3-channel images -> uint8 NHWC RGB frames of size ``hw``."""
        torch = framework("torch")
        from torch.nn import functional as F

        t = self.transform
        if (t.output_layout or t.layout) == "nhwc":
            y = y.permute(0, 3, 1, 2)
        y = y.float() * t.output_scale
        if tuple(y.shape[-2:]) != hw:
            y = F.interpolate(y, size=hw, mode="bilinear", antialias=True, align_corners=False)
        y = y.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1)
        return (y.expand(-1, -1, -1, 3) if y.shape[3] == 1 else y).contiguous()


class _Lane:
    """What one call in flight owns: a CUDA stream (None on CPU), host buffers, captured graphs.

    Buffers are reused batch after batch: the pinned input buffer may be refilled only after
    the previous batch's upload finished, which ``download`` (it waits for the stream) ensures.
    """

    def __init__(self, dev: Any) -> None:
        torch = framework("torch")

        self.dev = dev
        self.cuda = dev.type == "cuda"
        self.stream = torch.cuda.Stream(dev) if self.cuda else None
        self._host: dict[tuple[int, int], Any] = {}
        self._device: dict[tuple[int, int], Any] = {}
        self.graphs: dict[tuple[int, ...], _Graph] = {}

    def active(self) -> contextlib.AbstractContextManager[Any]:
        torch = framework("torch")

        return torch.cuda.stream(self.stream) if self.cuda else contextlib.nullcontext()

    def host_input(self, rows: int, frames: Sequence[Pixels]) -> Any:
        """The frames copied into this lane's (pinned, on CUDA) uint8 buffer of ``rows`` rows.

        Rows past the frames keep whatever an earlier batch left there: padding is computed and dropped.
        """
        torch = framework("torch")

        h, w = frames[0].shape[:2]  # type: ignore[union-attr]
        buf = _reuse(self._host, rows, (h, w), lambda n: torch.empty((n, h, w, 3), dtype=torch.uint8,
                                                                     pin_memory=self.cuda))
        view = buf.numpy()
        for i, f in enumerate(frames):
            view[i] = f
        return buf

    def device_input(self, rows: int, images: Sequence[Any]) -> Any:
        """Decoded CHW images already on the device, as one uint8 NHWC batch of ``rows`` rows."""
        torch = framework("torch")

        h, w = images[0].shape[1:]
        buf = _reuse(self._device, rows, (h, w), lambda n: torch.empty((n, h, w, 3), dtype=torch.uint8,
                                                                       device=self.dev))
        buf[:len(images)].copy_(torch.stack(list(images)).permute(0, 2, 3, 1))
        return buf

    def download(self, y: Any, n: int) -> Any:
        """The first ``n`` rows of the output(s) on the host, in one copy each; waits for this lane's stream."""
        torch = framework("torch")

        if isinstance(y, (list, tuple)):
            return [self.download(t, n) for t in y]
        y = y[:n] if y.dtype == torch.uint8 else y[:n].float()
        if not self.cuda:
            return y.numpy()  # a fresh tensor, never a reused buffer: shared with numpy, not copied
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)  # from torch's caching host allocator
        host.copy_(y, non_blocking=True)
        assert self.stream is not None
        self.stream.synchronize()
        return host.numpy()


class _Graph:
    """One CUDA graph of the whole pipeline for one input shape, replayed with new pixels."""

    def __init__(self, forward: Callable[[Any, tuple[int, int]], Any], example: Any, hw: tuple[int, int],
                 stream: Any) -> None:
        torch = framework("torch")

        self.input = torch.empty(example.shape, dtype=example.dtype, device=stream.device)
        self.input.copy_(example, non_blocking=True)
        for _ in range(2):  # warm-up on the capture stream (cuDNN autotuning, lazy allocations), as capture needs
            forward(self.input, hw)
        self.graph = torch.cuda.CUDAGraph()
        # thread-local: another lane may be running (or capturing) on its own stream meanwhile
        with torch.cuda.graph(self.graph, stream=stream, capture_error_mode="thread_local"):
            self.output = forward(self.input, hw)

    def replay(self, x: Any) -> tuple[Any, bool]:
        self.input.copy_(x, non_blocking=True)
        self.graph.replay()
        return self.output


def _reuse(cache: dict[tuple[int, int], Any], rows: int, size: tuple[int, int], make: Callable[[int], Any]) -> Any:
    """``rows`` rows of this lane's buffer for frames of ``size``, made (bigger) only when it has too few.

    One buffer per frame size, at most a few (sizes change rarely; a new one evicts the oldest).
    """
    buf = cache.get(size)
    if buf is None or len(buf) < rows:
        if buf is None and len(cache) >= 4:
            del cache[next(iter(cache))]
        buf = cache[size] = make(rows)
    return buf[:rows]
