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
    assert thread.instance().infer is not None
    assert np.abs(out.astype(int) - FRAME[:, :, ::-1]).max() <= 1


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
