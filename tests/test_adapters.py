"""Framework adapters on tiny models built here: torch, ONNX (built with onnx.helper) and Keras."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import numpy as np
import pytest

import ooblex as ob
from ooblex import Engine

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

RNG = np.random.default_rng(0)
FRAME = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
GPU = torch.cuda.is_available()


def test_import_ooblex_does_not_import_a_framework() -> None:
    code = ("import sys, ooblex as ob; assert not {'torch', 'tensorflow', 'onnxruntime'} & set(sys.modules); "
            "ob.onnx; assert 'torch' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="no attribute 'pytorch'"):
        ob.pytorch  # noqa: B018


class SwapRB(torch.nn.Module):
    """RGB -> BGR as a 1x1 convolution; records how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.eye(3).flip(0).reshape(3, 3, 1, 1))
        self.calls: list[tuple[tuple[int, ...], bool, bool, str]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), torch.is_inference_mode_enabled(), self.training, x.device.type))
        return self.conv(x)


def test_torch_module_runs_the_model_with_pre_and_post_processing() -> None:
    net = SwapRB()
    thread = ob.torch.module(net, name="swap_rb", warmup=(24, 32))
    out = thread(FRAME)
    assert out.dtype == np.uint8 and out.shape == FRAME.shape
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1
    warm, real = net.calls
    assert warm == ((1, 3, 24, 32), True, False, "cpu")  # warm-up at setup, eval + inference mode
    assert real[0] == (1, 3, 48, 64)


def test_torch_module_fixed_size_classifier_and_custom_postprocess() -> None:
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    res = ob.torch.module(net, name="cls", size=(16, 16))(FRAME)
    assert set(res) == {"output"} and len(res["output"]) == 2
    labelled = ob.torch.module(net, name="cls2", postprocess=lambda o, f: {"label": int(np.argmax(o)),
                                                                              "h": f.shape[0]})
    assert labelled(FRAME)["h"] == 48
    # an image model that works at a fixed size: the output comes back at the frame's size
    img = ob.torch.module(SwapRB(), name="fixed", size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                          output_scale=127.5)(FRAME)
    assert img.shape == FRAME.shape


def test_torch_module_refuses_bad_input() -> None:
    thread = ob.torch.module(SwapRB(), name="swap_rb2", warmup=None)
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        thread(np.zeros((4, 4), np.uint8))
    with pytest.raises(TypeError, match="nn.Module"):
        ob.torch.module(42)
    with pytest.raises(ValueError, match="layout"):
        ob.torch.module(SwapRB(), layout="chw")


def test_torch_device_choice() -> None:
    from ooblex.adapters.torch import pick_device

    assert pick_device("auto") == ("cuda" if GPU else "cpu")
    assert pick_device("cpu") == "cpu"
    if not GPU:
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            pick_device("cuda")


@pytest.mark.skipif(not GPU, reason="no CUDA GPU on this machine")
def test_torch_module_runs_on_the_gpu() -> None:
    net = SwapRB()
    out = ob.torch.module(net, name="gpu", device="cuda", warmup=None)(FRAME)
    assert net.calls[-1][3] == "cuda" and next(net.parameters()).is_cuda
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1
    half = ob.torch.module(SwapRB(), name="gpu_half", device="cuda", half=True, warmup=None)(FRAME)
    assert np.abs(half.astype(int) - FRAME[:, :, ::-1]).max() <= 2


async def test_torch_module_batches_frames_from_several_streams_through_the_engine() -> None:
    net = SwapRB()
    thread = ob.torch.module(net, name="batched", batch_size=4, max_wait_ms=200, warmup=(48, 64))
    async with Engine("memory://", threads=[thread]) as engine:
        streams = [engine.open("batched", mode="every") for _ in range(4)]
        frames = [RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in streams]
        await asyncio.gather(*(s.submit(f, captured=time.time()) for s, f in zip(streams, frames, strict=False)))
        outs = await asyncio.gather(*(s.get(timeout=30) for s in streams))
        for out, f in zip(outs, frames, strict=False):
            assert out.error is None and np.abs(out.image.astype(int) - f[:, :, ::-1]).max() <= 1
        for s in streams:
            await s.close()
    assert net.calls[0][0][0] == 4  # warm-up used a full batch
    assert max(c[0][0] for c in net.calls[1:]) > 1  # frames of different streams shared a model call


def onnx_swap_rb(path: str) -> str:
    """An ONNX model (opset 17) that reverses the channel axis of an NCHW float batch."""
    import onnx
    from onnx import TensorProto, helper

    idx = helper.make_tensor("idx", TensorProto.INT64, [3], [2, 1, 0])
    node = helper.make_node("Gather", ["image", "idx"], ["out"], axis=1)
    graph = helper.make_graph([node], "swap_rb", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 3, "h", "w"])], [idx])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def test_onnx_session_from_a_path_and_from_a_session(tmp_path) -> None:
    path = onnx_swap_rb(str(tmp_path / "swap.onnx"))
    out = ob.onnx.session(path, name="onnx_swap")(FRAME)
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    batched = ob.onnx.session(sess, name="onnx_batch", batch_size=3, warmup=(8, 8))
    outs = batched([FRAME, FRAME[:, ::-1].copy(), FRAME[:24].copy()])  # mixed sizes in one batch
    assert len(outs) == 3 and outs[2].shape == (24, 64, 3)
    assert np.abs(outs[1].astype(int) - FRAME[:, ::-1, ::-1]).max() <= 1
    with pytest.raises(FileNotFoundError, match="no ONNX model"):
        ob.onnx.session(tmp_path / "missing.onnx")


def test_onnx_providers() -> None:
    from ooblex.adapters.onnx import pick_providers

    available = ort.get_available_providers()
    assert pick_providers()[-1] == "CPUExecutionProvider"
    assert ("CUDAExecutionProvider" in pick_providers()) == ("CUDAExecutionProvider" in available)
    if "CUDAExecutionProvider" not in available:
        with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
            pick_providers(["CUDAExecutionProvider"])


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime has no CUDA provider here")
def test_onnx_session_runs_on_the_gpu(tmp_path) -> None:
    thread = ob.onnx.session(onnx_swap_rb(str(tmp_path / "s.onnx")), name="onnx_gpu",
                             providers=["CUDAExecutionProvider"])
    out = thread(FRAME)
    assert thread.instance().pipeline.device == ("cuda", 0) and thread.concurrency == 2
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1
    # resized and padded on the GPU, the output made into frames there and copied back once: as on the CPU
    sized = {p: ob.onnx.session(onnx_swap_rb(str(tmp_path / f"{p}.onnx")), name=f"onnx_sized_{p}", size=(32, 24),
                                batch_size=3, batch_sizes=(4,), providers=[p], warmup=(48, 64))
             for p in ("CUDAExecutionProvider", "CPUExecutionProvider")}
    frames = [FRAME, FRAME[::-1].copy(), FRAME]
    on_gpu, on_cpu = (sized[p](frames) for p in ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert [o.shape for o in on_gpu] == [FRAME.shape] * 3
    for g, c in zip(on_gpu, on_cpu, strict=True):
        assert np.abs(g.astype(int) - c).max() <= 1


def test_tensorflow_model_from_an_object_and_a_keras_file(tmp_path) -> None:
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(inp, conv(inp))
    conv.set_weights([np.eye(3)[::-1].reshape(1, 1, 3, 3).astype(np.float32)])
    out = ob.tensorflow.model(model, name="tf_swap", warmup=(8, 8))(FRAME)
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1
    path = tmp_path / "swap.keras"
    model.save(path)
    batched = ob.tensorflow.model(path, name="tf_file", batch_size=2, warmup=None)
    outs = batched([FRAME, FRAME])
    assert len(outs) == 2 and np.abs(outs[0].astype(int) - FRAME[:, :, ::-1]).max() <= 1
    with pytest.raises(FileNotFoundError, match="no Keras model"):
        ob.tensorflow.model(tmp_path / "missing.keras")


def test_tensorflow_device_choice_and_gpu_path() -> None:
    tf = pytest.importorskip("tensorflow")
    from ooblex.adapters.tensorflow import pick_device

    gpus = tf.config.list_physical_devices("GPU")
    assert pick_device("auto") == ("/GPU:0" if gpus else "/CPU:0")
    if not gpus:
        with pytest.raises(RuntimeError, match="no GPU"):
            pick_device("/GPU:0")
        pytest.skip("TensorFlow sees no GPU on this machine")
    inp = tf.keras.Input((None, None, 3))
    out = ob.tensorflow.model(tf.keras.Model(inp, inp * 1.0), name="tf_gpu", device="/GPU:0", warmup=None)(FRAME)
    assert np.abs(out.astype(int) - FRAME).max() <= 1


# --- where the pre/post-processing runs, padding, lanes ------------------------------------------------
PHOTO = np.ascontiguousarray(__import__("cv2").imread("tests/data/one_face.jpg")[:, :, ::-1])  # smooth, 640x480
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference_input(frame: np.ndarray, size: tuple[int, int] | None, layout: str) -> np.ndarray:
    """What the model should see: resized (bilinear, antialiased), scaled to 0..1, normalised, in ``layout``."""
    x = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    if size:
        x = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bilinear", antialias=True)
    x = (x / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return (x[0] if layout == "nchw" else x[0].permute(1, 2, 0)).numpy()


def identity_onnx(path: str) -> str:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "same",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("size", [None, (224, 160)])
def test_every_framework_preprocesses_on_its_device_as_documented(tmp_path, size) -> None:
    """An identity model with ``postprocess=raw`` shows the model's input: the same in torch, ONNX and TF."""
    raw = {"mean": MEAN, "std": STD, "size": size, "postprocess": lambda out, frame: out, "warmup": None}
    seen = {"torch": ob.torch.module(torch.nn.Identity(), name="t_in", **raw)(PHOTO),
            "onnx": ob.onnx.session(identity_onnx(str(tmp_path / "id.onnx")), name="o_in", **raw)(PHOTO)}
    tf = pytest.importorskip("tensorflow")
    inp = tf.keras.Input((None, None, 3))
    seen["tensorflow"] = ob.tensorflow.model(tf.keras.Model(inp, inp), name="tf_in", layout="nhwc", **raw)(PHOTO)
    for framework, got in seen.items():
        layout = "nhwc" if framework == "tensorflow" else "nchw"
        want = reference_input(PHOTO, size, layout)
        assert got.shape == want.shape, framework
        std = np.asarray(STD).reshape((3, 1, 1) if layout == "nchw" else (1, 1, 3))
        levels = np.abs(got - want) * std * 255  # the difference in levels of the 0..255 input
        if size is None:
            assert levels.max() < 1e-3, framework
        else:  # the same antialiased bilinear resize (on bytes on a CPU: within a level); edges may differ
            inside = levels[:, 2:-2, 2:-2] if layout == "nchw" else levels[2:-2, 2:-2]
            assert inside.max() <= 1.01 and levels.mean() < 0.5, framework


def test_image_outputs_come_back_as_frames_of_the_frame_size_in_every_framework(tmp_path) -> None:
    """A model at a fixed size, a grey (1-channel) output: uint8 RGB frames of the input's size, grey repeated."""
    grey_net = torch.nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        grey_net.weight.fill_(1 / 3)
    frame = PHOTO[:120, :160].copy()
    want = np.round(frame.astype(np.float32).mean(2))
    out = ob.torch.module(grey_net, name="grey_t", size=(80, 60), warmup=None)(frame)
    assert out.shape == frame.shape and out.dtype == np.uint8 and (out[..., 0] == out[..., 2]).all()
    assert np.abs(out[..., 0] - want).mean() < 6  # down to 80x60 and back up: a blurred copy of the grey
    path = str(tmp_path / "grey.onnx")
    torch.onnx.export(grey_net, torch.zeros(1, 3, 60, 80), path, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    onnx_out = ob.onnx.session(path, name="grey_o", size=(80, 60), warmup=None)(frame)
    assert onnx_out.shape == frame.shape and np.abs(onnx_out.astype(int) - out).mean() < 2


def test_batch_sizes_pad_each_batch_to_the_nearest_size_and_split_bigger_ones() -> None:
    from ooblex.adapters.base import check_sizes, default_sizes, padded_size

    assert default_sizes(1) == (1,) and default_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert default_sizes(12) == (1, 2, 4, 8, 12)
    assert [padded_size(n, (1, 4, 8)) for n in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    assert padded_size(5, None) == 5
    with pytest.raises(ValueError, match="do not fit"):
        padded_size(9, (1, 8))
    with pytest.raises(ValueError, match="positive integers"):
        check_sizes((0, 4))
    net = SwapRB()
    thread = ob.torch.module(net, name="padded", batch_size=8, batch_sizes=(4,), warmup=(48, 64))
    frames = [RNG.integers(0, 256, FRAME.shape, dtype=np.uint8) for _ in range(5)]
    outs = thread(frames[:3])
    assert net.calls[0][0] == (4, 3, 48, 64) and net.calls[1][0] == (4, 3, 48, 64)  # warm-up, then 3 padded to 4
    outs += thread(frames[3:]) + thread(frames)  # 2 -> 4; 5 -> 4 + 1 -> 4 + 4
    assert [c[0][0] for c in net.calls[2:]] == [4, 4, 4]
    assert len(outs) == 10
    for out, f in zip(outs, frames[:3] + frames[3:] + frames, strict=True):
        assert np.abs(out.astype(int) - f[:, :, ::-1]).max() <= 1


def test_acceleration_is_checked_and_cuda_graphs_are_refused_on_a_cpu() -> None:
    with pytest.raises(ValueError, match="accelerate must be"):
        ob.torch.module(SwapRB(), accelerate="jit")
    if not GPU:
        with pytest.raises(ValueError, match="needs a CUDA device"):
            ob.torch.module(SwapRB(), accelerate="graphs")
    assert ob.torch.module(SwapRB(), device="cpu").concurrency == 1  # one lane: torch ops use every core already


@pytest.mark.timeout(600)
def test_torch_compile_runs_the_whole_pipeline_at_padded_sizes() -> None:
    """accelerate="compile" on a CPU (inductor): compiled at setup for each size, padded batches, same output."""
    net = SwapRB()
    thread = ob.torch.module(net, name="compiled", device="cpu", accelerate="compile", batch_size=2,
                             warmup=(48, 64))
    assert thread.instance().pipeline.accelerate == "compile"
    outs = thread([FRAME])
    assert np.abs(outs[0].astype(int) - FRAME[:, :, ::-1]).max() <= 1
    assert outs == [] or outs[0].shape == FRAME.shape
    pairs = thread([FRAME, FRAME[::-1].copy()])
    assert np.abs(pairs[1].astype(int) - FRAME[::-1, :, ::-1]).max() <= 1


def test_concurrent_calls_each_use_their_own_lane() -> None:
    """concurrency=2: two calls at once, each with its own buffers; neither sees the other's frames."""
    import concurrent.futures as cf

    thread = ob.torch.module(SwapRB(), name="lanes", device="cpu", concurrency=2, batch_size=4, warmup=(48, 64))
    model = thread.instance()
    assert model.pipeline.lane_count == 2
    batches = [[RNG.integers(0, 256, FRAME.shape, dtype=np.uint8) for _ in range(4)] for _ in range(16)]
    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(model.run, batches))
    for frames, outs in zip(batches, results, strict=True):
        for f, o in zip(frames, outs, strict=True):
            assert np.abs(o.astype(int) - f[:, :, ::-1]).max() <= 1


def test_an_adapter_without_a_gpu_decoder_takes_no_jpeg_bytes() -> None:
    from ooblex import jpeg

    thread = ob.torch.module(SwapRB(), name="no_jpeg", device="cpu", warmup=None)
    assert thread.instance().decodes_jpeg is False
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        thread(jpeg.encode(FRAME))


@pytest.mark.skipif(not GPU, reason="no CUDA GPU on this machine")
def test_cuda_graphs_lanes_and_fp16_give_the_eager_result() -> None:
    frames = [RNG.integers(0, 256, FRAME.shape, dtype=np.uint8) for _ in range(3)]
    eager = ob.torch.module(SwapRB(), name="eager_gpu", device="cuda", batch_size=4, warmup=(48, 64))
    graphs = ob.torch.module(SwapRB(), name="graphs_gpu", device="cuda", batch_size=4, accelerate="graphs",
                             warmup=(48, 64))
    assert graphs.concurrency == 2
    pipeline = graphs.instance().pipeline
    lanes = [pipeline.lanes.get() for _ in range(pipeline.lane_count)]
    assert [len(lane.graphs) for lane in lanes] == [3, 3]  # sizes 1, 2, 4 captured at setup, in each lane
    for lane in lanes:
        pipeline.lanes.put(lane)
    for a, b in zip(eager(frames), graphs(frames), strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1
    half = ob.torch.module(SwapRB(), name="half_gpu", device="cuda", half=True, channels_last=True, warmup=None)
    assert np.abs(half(frames[0]).astype(int) - frames[0][:, :, ::-1]).max() <= 2
    # resizing on the GPU (floats) and on a CPU (bytes first) agree to within rounding
    sized = {d: ob.torch.module(SwapRB(), name=f"sized_{d}", device=d, size=(320, 240), warmup=None)
             for d in ("cuda", "cpu")}
    assert np.abs(sized["cuda"](PHOTO).astype(int) - sized["cpu"](PHOTO)).mean() < 1


@pytest.mark.skipif(not GPU, reason="no CUDA GPU on this machine")
def test_jpeg_bytes_are_decoded_on_the_gpu_when_torchvision_can() -> None:
    from ooblex import jpeg

    if jpeg.cuda_decoder() is None:
        pytest.skip("torchvision with nvJPEG is not importable here")
    thread = ob.torch.module(SwapRB(), name="nvjpeg", device="cuda", batch_size=2, warmup=None)
    assert thread.instance().decodes_jpeg
    data = jpeg.encode(PHOTO, 95)
    from_bytes, from_pixels = thread([data, data]), thread([jpeg.decode(data)] * 2)
    assert from_bytes[0].shape == PHOTO.shape
    assert np.abs(from_bytes[0].astype(int) - from_pixels[0]).mean() < 2  # nvJPEG and libjpeg-turbo differ slightly
