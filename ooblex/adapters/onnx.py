"""``ob.onnx.session(path)``: an ONNX model served by onnxruntime as a tensor thread.

Uses the CUDA execution provider when onnxruntime has it (else CPU) and feeds the model's
first input. Pre- and post-processing are two small ONNX graphs of their own (uint8 frames ->
scaled, normalised, resized model input; image output -> uint8 frames) run by the same
execution provider, chained to the model with I/O binding: on a GPU, tensors stay on the
device from the uint8 upload to the uint8 frames that come back, once per batch.

A model deployed as a weight file (``from_weight``: ``ob.deploy(..., weights=[...])`` or an ONNX
upload in a gateway's console) is data from elsewhere: it is read whole, refused if any tensor
keeps its data outside the file (``external_data``: onnxruntime would read that file, relative to
the model, from the worker's disk) or if it names an execution provider's context file, and handed
to onnxruntime as bytes, never as a path, so there is no folder to resolve a location in.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ..cluster.weights import weight
from ..errors import BadRequest
from ..thread import TensorThread
from . import framework
from .base import Images, Layout, Pipeline, Pixels, Postprocess, Transform, image_like, model_thread, nvidia_gpu

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
OPSET = 18  # Resize with `axes` and `antialias`
#: Nodes that make onnxruntime read a file named in the model (an execution provider's cached context).
FILE_OPS = ("EPContext",)


class BadModel(BadRequest):
    """A deployed or uploaded ONNX model that cannot be used: not ONNX, not self-contained (it would read
    files where it is loaded), or not loadable by onnxruntime (400)."""


def pick_providers(providers: Sequence[str] | None = None) -> list[str]:
    """The asked-for providers that this onnxruntime build has (GPU first by default), or raise naming them."""
    ort = framework("onnxruntime")

    available = ort.get_available_providers()
    wanted = [p for p in (providers or PREFERRED) if p in available]
    if providers is not None and len(wanted) != len(providers):
        missing = sorted(set(providers) - set(available))
        raise RuntimeError(f"onnxruntime has no {missing} (available: {available})")
    return [p for p in wanted if providers is not None or p != "TensorrtExecutionProvider"] or ["CPUExecutionProvider"]


def session(path_or_session: str | PathLike[str] | Any, *, name: str = "onnx_model",
            providers: Sequence[str] | None = None, threads: int = 0, concurrency: int | None = None,
            **options: Any) -> TensorThread:
    """A tensor thread running an ONNX model: a path (session created at setup) or an ``InferenceSession``.

    ``providers`` defaults to CUDA when available, then CPU; ``threads`` sets onnxruntime's intra-op
    threads (0 = its default: every core). The model's first input gets the batch in its declared
    float type. ``concurrency``: batches in flight (default 2 with the CUDA provider, else 1).
    Pre/post-processing and batching: ``model`` (``layout``, ``scale``, ``mean``, ``std``, ``size``, ...).

    Given a path and no ``providers``, onnxruntime is imported only at setup (a listing of threads does
    not load it); the default ``concurrency`` then follows whether this machine has an NVIDIA GPU.
    """
    ort = sys.modules.get("onnxruntime")  # a session can only exist if onnxruntime is imported
    if ort is not None and isinstance(path_or_session, ort.InferenceSession):
        gpu = path_or_session.get_providers()[0] != "CPUExecutionProvider"
        open_model: Callable[[], Any] = lambda: path_or_session  # noqa: E731
    else:
        path = Path(path_or_session)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX model at {path}")
        later = providers is None and ort is None
        gpu = nvidia_gpu() if later else pick_providers(providers)[0] != "CPUExecutionProvider"
        open_model = lambda: open_session(str(path), providers, threads)  # noqa: E731
    if concurrency is None:
        concurrency = 2 if gpu else 1
    return model(open_model, name=name, threads=threads, concurrency=concurrency, **options)


def from_weight(weight_name: str, *, name: str = "onnx_model", providers: Sequence[str] | None = None,
                threads: int = 0, **options: Any) -> TensorThread:
    """``session`` for a model deployed as a weight file (``ob.deploy(..., weights=[path])``, or an ONNX
    upload in a gateway's console): the worker finds it with ``ob.weight(weight_name)`` when it loads
    the thread, so this side needs neither the file nor onnxruntime (``concurrency`` defaults to 1)."""
    return model(lambda: open_weight(weight_name, providers, threads), name=name, threads=threads, **options)


def open_weight(weight_name: str, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    """The session of the deployed model file ``weight_name``: read whole, checked (``self_contained``), and
    given to onnxruntime as bytes. Errors name the weight, never the worker's path to it."""
    path = weight(weight_name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"the model {weight_name!r} cannot be read on this worker "
                                f"({exc.strerror or type(exc).__name__})") from None
    return open_bytes(data, weight_name, providers, threads)


def open_bytes(data: bytes, what: str, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    """An ``InferenceSession`` of the ONNX model ``data`` (named ``what`` in errors) after ``self_contained``
    checks it; onnxruntime gets the checked model re-serialised and is told it is ONNX (not its own format)."""
    import onnxruntime as ort

    checked = self_contained(parse(data, what), what).SerializeToString()
    opts = session_options(threads)
    opts.add_session_config_entry("session.load_model_format", "ONNX")
    try:
        return ort.InferenceSession(checked, opts, providers=pick_providers(providers))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own classes (Fail, InvalidGraph, ...)
        raise BadModel(f"onnxruntime cannot load the model {what!r}: {exc}") from None


def parse(data: bytes, what: str = "the model") -> Any:
    """``data`` as an ONNX ``ModelProto``, or ``BadModel`` saying it is not one."""
    import onnx

    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError and others
        raise BadModel(f"{what} is not an ONNX model: {type(exc).__name__}: {exc}") from None


def self_contained(proto: Any, what: str = "the model") -> Any:
    """``proto`` if every tensor in it (initializers, sparse initializers, node attributes, in every
    subgraph of If/Loop/Scan, in local functions and training graphs) holds its own data and no node
    names a context file; else ``BadModel`` naming the first offender."""
    for where, tensor in _tensors(proto):
        if tensor.data_location == tensor.EXTERNAL or len(tensor.external_data):
            raise BadModel(f"{what} keeps the data of tensor {tensor.name or where!r} ({where}) outside the "
                                 "model file (external data), which is refused: save it with all its data inside "
                                 "(onnx.save(model, path, save_as_external_data=False))")
    for where, node in _nodes(proto):
        if node.op_type in FILE_OPS:
            raise BadModel(f"{what} has a {node.op_type} node ({where}), which names a file to read: refused")
    return proto


def _graphs(proto: Any) -> Any:
    """(where, graph): the model's graph, its training graphs, its local functions (their nodes and
    attribute defaults as one graph), and every subgraph (If/Loop/Scan bodies) within them."""
    from onnx import GraphProto, NodeProto

    stack = [("graph", proto.graph)]
    stack += [(f"training_info[{i}].{k}", getattr(t, k)) for i, t in enumerate(proto.training_info)
              for k in ("initialization", "algorithm")]
    stack += [(f"function {f.name}", GraphProto(node=[*f.node, NodeProto(op_type="defaults",
                                                                          attribute=f.attribute_proto)]))
              for f in proto.functions]
    while stack:
        where, g = stack.pop()
        yield where, g
        for node in g.node:
            for a in node.attribute:
                subs = ([a.g] if a.HasField("g") else []) + list(a.graphs)
                stack += [(f"{where} > {node.op_type} {node.name!r} > {a.name}", sub) for sub in subs]


def _nodes(proto: Any) -> Any:
    for where, g in _graphs(proto):
        yield from ((f"{where} > {node.op_type} {node.name!r}", node) for node in g.node)


def _tensors(proto: Any) -> Any:
    """(where, tensor) for every ``TensorProto`` in the model, sparse ones as their values and indices."""
    for where, g in _graphs(proto):
        yield from ((f"{where} > initializer", t) for t in g.initializer)
        yield from ((f"{where} > sparse initializer", t) for s in g.sparse_initializer for t in (s.values, s.indices))
        for node in g.node:
            for a in node.attribute:
                at = f"{where} > {node.op_type} {node.name!r} > {a.name}"
                dense = ([a.t] if a.HasField("t") else []) + list(a.tensors)
                sparse = ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(a.sparse_tensors)
                yield from ((at, t) for t in dense)
                yield from ((at, t) for sp in sparse for t in (sp.values, sp.indices))


def session_options(threads: int = 0) -> Any:
    ort = framework("onnxruntime")

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return opts


def open_session(path: str, providers: Sequence[str] | None = None, threads: int = 0) -> Any:
    ort = framework("onnxruntime")

    return ort.InferenceSession(path, session_options(threads), providers=pick_providers(providers))


def model(open_model: Callable[[], Any], *, name: str = "onnx_model", threads: int = 0, layout: Layout = "nchw",
          scale: float = 1 / 255, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
          size: tuple[int, int] | None = None, output_scale: float = 255.0, postprocess: Postprocess | None = None,
          batch_size: int = 1, max_wait_ms: float = 0.0, warmup: tuple[int, int] | None = (480, 640),
          batch_sizes: Sequence[int] | None = None, concurrency: int | None = None, description: str = "",
          **options: Any) -> TensorThread:
    """The tensor thread around ``open_model()`` (an ``InferenceSession``, made at setup) with its ``Transform``.

    ``batch_sizes``: for a model exported with fixed batch sizes, the sizes batches are padded to.
    """
    transform = Transform(layout=layout, scale=scale, mean=mean, std=std, size=size, output_scale=output_scale,
                          postprocess=postprocess)

    def load() -> OnnxPipeline:
        return OnnxPipeline(open_model(), transform, lambda: session_options(threads))

    return model_thread(load, transform, name=name, batch_size=batch_size, max_wait_ms=max_wait_ms, warmup=warmup,
                        batch_sizes=batch_sizes, description=description, concurrency=concurrency or 1, **options)


class OnnxPipeline(Pipeline):
    """Preprocessing graph -> model -> postprocessing graph, on one execution provider, by I/O binding."""

    def __init__(self, sess: Any, transform: Transform, options: Any) -> None:
        ort = framework("onnxruntime")

        self.sess, self.transform = sess, transform
        providers = sess.get_providers()
        provider_options = sess.get_provider_options()
        self._new = lambda model: ort.InferenceSession(
            model.SerializeToString(), options(), providers=providers,
            provider_options=[provider_options.get(p, {}) for p in providers])
        on_gpu = providers[0] == "CUDAExecutionProvider"
        self.device = ("cuda", int(provider_options.get("CUDAExecutionProvider", {}).get("device_id", 0))) if on_gpu \
            else ("cpu", 0)
        self.input = sess.get_inputs()[0].name
        self.outputs = [o.name for o in sess.get_outputs()]
        half = sess.get_inputs()[0].type == "tensor(float16)"
        self.pre = self._new(preprocess_graph(transform, half))
        self._post: dict[tuple[int, bool, bool], Any] = {}

    def __call__(self, frames: Sequence[Pixels], rows: int) -> Any:
        n = len(frames)
        h, w = frames[0].shape[:2]  # type: ignore[union-attr]
        batch = np.empty((rows, h, w, 3), np.uint8)
        for i, f in enumerate(frames):
            batch[i] = f
        batch[n:] = 0
        io = self.pre.io_binding()
        io.bind_cpu_input("frames", batch)
        io.bind_output("x", *self.device)
        self.pre.run_with_iobinding(io)
        run = self.sess.io_binding()
        run.bind_ortvalue_input(self.input, io.get_outputs()[0])
        for name in self.outputs:
            run.bind_output(name, *self.device)
        self.sess.run_with_iobinding(run)
        ys = run.get_outputs()
        t = self.transform
        if t.images and image_like(ys[0].shape(), t.output_layout or t.layout):
            return Images(self._frames(ys[0], (h, w))[:n])
        raw = [np.asarray(y[:n], np.float32) for y in run.copy_outputs_to_cpu()]
        return raw[0] if len(raw) == 1 else raw

    def _frames(self, y: Any, hw: tuple[int, int]) -> np.ndarray:
        """The model's image output -> uint8 NHWC frames of size ``hw``, on the device, then one copy back."""
        layout = self.transform.output_layout or self.transform.layout
        shape = y.shape()
        channels = shape[1 if layout == "nchw" else 3]
        resize = tuple(shape[2:] if layout == "nchw" else shape[1:3]) != hw
        key = (channels, resize, y.data_type() == "tensor(float16)")
        post = self._post.get(key)
        if post is None:
            post = self._post[key] = self._new(postprocess_graph(self.transform, *key))
        io = post.io_binding()
        io.bind_ortvalue_input("y", y)
        if resize:
            io.bind_cpu_input("hw", np.asarray(hw, np.int64))
        io.bind_output("frames", "cpu")
        post.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]


def preprocess_graph(t: Transform, half: bool) -> Any:
    """uint8 NHWC ``frames`` -> ``x``: float (or float16) in ``t.layout``, resized, scaled, normalised.

    Resizing and reordering happen on the bytes, before they become four times as many bytes of floats.
    """
    from onnx import TensorProto, helper

    a, b = t.affine()
    shape = [1, 3, 1, 1] if t.layout == "nchw" else [3]
    inits = [helper.make_tensor("a", TensorProto.FLOAT, shape, a.tolist()),
             helper.make_tensor("b", TensorProto.FLOAT, shape, b.tolist())]
    nodes, last = [], "frames"
    if t.size is not None:
        inits.append(helper.make_tensor("size", TensorProto.INT64, [2], [t.size[1], t.size[0]]))
        nodes.append(helper.make_node("Resize", [last, "", "", "size"], ["r"], mode="linear", antialias=1,
                                      axes=[1, 2]))
        last = "r"
    if t.layout == "nchw":
        nodes.append(helper.make_node("Transpose", [last], ["t"], perm=[0, 3, 1, 2]))
        last = "t"
    out_type = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    nodes += [helper.make_node("Cast", [last], ["f"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["f", "a"], ["m"]),
              helper.make_node("Add", ["m", "b"], ["x" if not half else "n"])]
    if half:
        nodes.append(helper.make_node("Cast", ["n"], ["x"], to=out_type))
    dims = ["n", 3, "h", "w"] if t.layout == "nchw" else ["n", "h", "w", 3]
    return _model(helper.make_graph(nodes, "ooblex_preprocess",
                                    [helper.make_tensor_value_info("frames", TensorProto.UINT8, ["n", "h", "w", 3])],
                                    [helper.make_tensor_value_info("x", out_type, dims)], inits))


def postprocess_graph(t: Transform, channels: int, resize: bool, half: bool) -> Any:
    """An image output ``y`` (and the frame size ``hw`` if it differs) -> uint8 NHWC RGB ``frames``."""
    from onnx import TensorProto, helper

    layout = t.output_layout or t.layout
    nodes = [helper.make_node("Cast", ["y"], ["yf"], to=TensorProto.FLOAT)] if half else []
    last = "yf" if half else "y"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [last], ["nchw"], perm=[0, 3, 1, 2]))
        last = "nchw"
    nodes.append(helper.make_node("Mul", [last, "scale"], ["s"]))
    last = "s"
    inputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT16 if half else TensorProto.FLOAT,
                                            ["n", "c", "h", "w"] if layout == "nchw" else ["n", "h", "w", "c"])]
    if resize:
        inputs.append(helper.make_tensor_value_info("hw", TensorProto.INT64, [2]))
        nodes.append(helper.make_node("Resize", [last, "", "", "hw"], ["r"], mode="linear", antialias=1, axes=[2, 3]))
        last = "r"
    nodes += [helper.make_node("Clip", [last, "lo", "hi"], ["c"]),
              helper.make_node("Round", ["c"], ["rd"]),
              helper.make_node("Cast", ["rd"], ["u8"], to=TensorProto.UINT8),
              helper.make_node("Transpose", ["u8"], ["nhwc" if channels == 3 else "grey"], perm=[0, 2, 3, 1])]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [t.output_scale]),
             helper.make_tensor("lo", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("hi", TensorProto.FLOAT, [], [255.0])]
    if channels == 1:
        inits.append(helper.make_tensor("rgb", TensorProto.INT64, [4], [1, 1, 1, 3]))
        nodes.append(helper.make_node("Tile", ["grey", "rgb"], ["nhwc"]))
    nodes.append(helper.make_node("Identity", ["nhwc"], ["frames"]))
    return _model(helper.make_graph(nodes, "ooblex_postprocess", inputs,
                                    [helper.make_tensor_value_info("frames", TensorProto.UINT8,
                                                                   ["n", "h", "w", 3])], inits))


def _model(graph: Any) -> Any:
    from onnx import checker, helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9  # what onnxruntime builds of the last few years all read
    checker.check_model(model)
    return model
