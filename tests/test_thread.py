"""@tensor_thread: declaration checks, plain-callable behaviour, parameters and outputs."""

from __future__ import annotations

import numpy as np
import pytest

import ooblex as ob
from ooblex.thread import TensorThreadError, normalize_output

IMG = np.zeros((4, 6, 3), np.uint8)


def test_function_stays_a_plain_callable() -> None:
    @ob.tensor_thread
    def invert(frame, amount: int = 255):
        return amount - frame

    assert isinstance(invert, ob.TensorThread)
    assert invert.name == "invert"
    out = invert(IMG)
    assert out.dtype == np.uint8 and (out == 255).all()
    assert (invert(IMG, amount=10) == 10).all()


def test_options_and_description() -> None:
    @ob.tensor_thread(name="edges", params={"threshold": {"min": 0, "max": 255}})
    def f(frame, threshold: int = 100, mode: str = "fast", show: bool = False):
        """Edge detector.

        More text."""
        return frame

    d = f.describe()
    assert d["name"] == "edges"
    assert d["description"] == "Edge detector."
    assert [p["name"] for p in d["params"]] == ["threshold", "mode", "show"]
    assert d["params"][0] == {"name": "threshold", "default": 100, "type": "int", "choices": None,
                              "min": 0, "max": 255}


def test_class_setup_runs_once_and_teardown() -> None:
    calls = []

    @ob.tensor_thread(batch_size=4, max_wait_ms=5)
    class Styler:
        def setup(self):
            calls.append("setup")
            self.k = 2

        def __call__(self, frames, gain: float = 1.0):
            return [f * self.k for f in frames]

        def teardown(self):
            calls.append("teardown")

    assert calls == []  # nothing loads at decoration time
    out = Styler([np.ones((2, 2, 3), np.uint8)] * 3)
    Styler([IMG])
    assert calls == ["setup"] and len(out) == 3 and out[0][0, 0, 0] == 2
    assert Styler.batched and Styler.batch_size == 4 and Styler.max_wait_ms == 5
    Styler.teardown()
    assert calls == ["setup", "teardown"]


def test_async_function_is_callable_synchronously() -> None:
    @ob.tensor_thread
    async def later(frame):
        return {"mean": float(frame.mean())}

    assert later.is_async
    assert later(IMG) == {"mean": 0.0}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ob.tensor_thread(lambda: None), "first argument"),
        (lambda: ob.tensor_thread(lambda frame, k: frame), "needs a default"),
        (lambda: ob.tensor_thread(batch_size=0)(lambda f: f), "batch_size"),
        (lambda: ob.tensor_thread(batch_size=2.5)(lambda f: f), "batch_size"),
        (lambda: ob.tensor_thread(max_wait_ms=-1)(lambda f: f), "max_wait_ms"),
        (lambda: ob.tensor_thread(color="yuv")(lambda f: f), "color"),
        (lambda: ob.tensor_thread(executor="gpu")(lambda f: f), "executor"),
        (lambda: ob.tensor_thread(concurrency=0)(lambda f: f), "concurrency"),
        (lambda: ob.tensor_thread(params={"nope": {}})(lambda f, k=1: f), "nope"),
        (lambda: ob.tensor_thread(type("NoCall", (), {})), "__call__"),
        (lambda: ob.tensor_thread(42), "function or a class"),
    ],
)
def test_bad_declarations_fail_at_decoration_time(make, message) -> None:
    with pytest.raises(TensorThreadError, match=message):
        make()


def test_async_cannot_use_process_executor() -> None:
    async def f(frame):
        return frame

    with pytest.raises(TensorThreadError, match="async"):
        ob.tensor_thread(executor="process")(f)


def test_params_are_coerced_and_validated() -> None:
    @ob.tensor_thread(params={"level": {"min": 0, "max": 10}, "mode": {"choices": ["a", "b"]}})
    def f(frame, level: int = 3, mode: str = "a", on: bool = True, gain: float = 1.5):
        return frame

    p = f.resolve_params({"level": "7", "on": "false", "gain": "2"})
    assert p == {"level": 7, "mode": "a", "on": False, "gain": 2.0}
    for bad, msg in [({"level": "x"}, "expects int"), ({"level": 11}, "within"), ({"mode": "c"}, "one of"),
                     ({"on": "maybe"}, "expects bool"), ({"zzz": 1}, "no parameter 'zzz'")]:
        with pytest.raises(ValueError, match=msg):
            f.resolve_params(bad)


def test_float_outputs_are_converted_once_decided_and_noted() -> None:
    """[0, 1] floats are scaled by 255, [0, 255] floats rounded; the first float frame decides and says so once."""
    unit = ob.tensor_thread(lambda frame: frame, name="unit")
    o = normalize_output(unit, np.full((4, 6, 3), 0.5, np.float32), IMG)
    assert o.image.dtype == np.uint8 and (o.image == 128).all()
    assert o.note and "[0, 1], scaled by 255" in o.note
    again = normalize_output(unit, np.full((4, 6, 3), 1.0, np.float64), IMG)
    assert (again.image == 255).all() and again.note is None  # said once
    wide = ob.tensor_thread(lambda frame: frame, name="wide")
    o = normalize_output(wide, np.full((4, 6, 3), 200.4), IMG)
    assert (o.image == 200).all() and "[0, 255]" in o.note
    dark = normalize_output(wide, np.full((4, 6, 3), 0.9), IMG)  # a dark [0, 255] frame stays dark
    assert (dark.image == 1).all() and dark.note is None
    dim = ob.tensor_thread(lambda frame: frame, name="dim")
    normalize_output(dim, np.full((4, 6, 3), 0.2), IMG)  # read as [0, 1] ...
    o = normalize_output(dim, np.full((4, 6, 3), 180.0), IMG)  # ... until a frame shows it is [0, 255]
    assert (o.image == 180).all() and "[0, 255]" in o.note
    ints = normalize_output(unit, np.full((4, 6, 3), 7, np.int64), IMG)
    assert ints.image.dtype == np.uint8 and (ints.image == 7).all()


@pytest.mark.parametrize("bad, fix", [
    (np.zeros((3, 4, 6), np.uint8), r"img.transpose\(1, 2, 0\)"),
    (np.zeros((1, 4, 6, 3), np.uint8), r"img\[0\]"),
    (np.full((4, 6, 3), -40, np.int16), r"np.clip\(img, 0, 255\)"),
    (np.zeros((4, 6, 3), bool), r"mask.astype\(np.uint8\) \* 255"),
    (np.full((4, 6, 3), np.nan), "np.nan_to_num"),
    (np.zeros((4, 6, 3), np.complex64), "return uint8"),
])
def test_bad_outputs_name_the_fix(bad: np.ndarray, fix: str) -> None:
    t = ob.tensor_thread(lambda frame: frame, name="bad")
    with pytest.raises(ValueError, match=fix):
        normalize_output(t, bad, IMG)


def test_an_in_place_edit_of_a_frame_names_the_fix() -> None:
    """Frames are read-only (they are the sender's buffer): writing into one says to copy it first."""
    def paint(frame: np.ndarray) -> np.ndarray:
        frame[0, 0] = 255
        return frame

    from ooblex.engine.runner import ReadOnlyFrame, call_thread

    with pytest.raises(ReadOnlyFrame, match=r"frame = frame.copy\(\)"):
        call_thread(ob.tensor_thread(paint), [IMG], {})


def test_output_normalization() -> None:
    t = ob.tensor_thread(lambda frame: frame)
    assert normalize_output(t, IMG, IMG).image is IMG
    o = normalize_output(t, (IMG, {"a": 1}), IMG)
    assert o.image is IMG and o.result == {"a": 1}
    o = normalize_output(t, {"a": 1}, IMG)
    assert o.image is None and o.result == {"a": 1}
    assert normalize_output(t, np.zeros((4, 6), np.uint8), IMG).image.shape == (4, 6, 3)
    with pytest.raises(ValueError, match=r"float pixels in \[300, 300\].*np.clip"):
        normalize_output(t, np.full((4, 6, 3), 300.0), IMG)
    with pytest.raises(TypeError, match="expected a numpy HxWx3 uint8 image"):
        normalize_output(t, "nope", IMG)
    with pytest.raises(ValueError, match="shape"):
        normalize_output(t, np.zeros((4, 6, 5), np.uint8), IMG)
    with pytest.raises(TypeError, match="result"):
        normalize_output(t, (IMG, [1, 2]), IMG)


def test_as_thread_wraps_plain_functions() -> None:
    from ooblex.thread import as_thread

    t = as_thread(lambda frame, k=2: frame)
    assert isinstance(t, ob.TensorThread) and "k" in t.params
    with pytest.raises(TensorThreadError):
        as_thread(3)


ANNOTATED = '''
from typing import Annotated, Optional

def thread(frame, k: float = 1, flag: bool | None = None, n: Optional[int] = None,
           gain: Annotated[float, "dB"] = 2, label: str | None = None):
    return frame

class Model:
    def __call__(self, frame, k: float = 1, flag: bool | None = None):
        return frame
'''


@pytest.mark.parametrize("postponed", [True, False], ids=["future-annotations", "evaluated-annotations"])
def test_param_types_come_from_annotations_in_both_styles(postponed: bool) -> None:
    """``k: float = 1`` takes "0.5"; ``flag: bool | None`` parses "false"; optionals take None. The
    source is exec'd as a notebook cell is, with and without ``from __future__ import annotations``."""
    ns: dict = {}
    exec(compile(("from __future__ import annotations\n" if postponed else "") + ANNOTATED, "<cell>", "exec"), ns)
    for target in (ns["thread"], ns["Model"]):
        t = ob.tensor_thread(target)
        assert t.params["k"].type is float and t.resolve_params({"k": "0.5"})["k"] == 0.5
        assert t.params["flag"].type is bool
        assert t.resolve_params({"flag": "false"})["flag"] is False
        assert t.resolve_params({"flag": None})["flag"] is None
    t = ob.tensor_thread(ns["thread"])
    assert t.resolve_params({"n": "3", "gain": "0.25", "label": None}) == {
        "k": 1, "flag": None, "n": 3, "gain": 0.25, "label": None}
    assert [p["type"] for p in t.describe()["params"]] == ["float", "bool", "int", "float", "str"]


def test_annotations_that_cannot_be_evaluated_fall_back_to_the_default() -> None:
    class Local:  # a name local to this function: its string annotation cannot be evaluated later
        pass

    @ob.tensor_thread
    def f(frame, obj: Local = None, count: Missing = 3, gain: float = 1):  # noqa: F821
        return frame

    assert f.params["obj"].type is str and f.params["obj"].optional
    assert f.params["count"].type is int and f.params["gain"].type is float
    assert f.resolve_params({"gain": "0.5", "count": "4"}) == {"obj": None, "count": 4, "gain": 0.5}


@pytest.mark.parametrize("value", ["nan", float("nan"), "inf", float("-inf"), 1e999])
def test_numeric_params_refuse_nan_and_infinity(value) -> None:
    @ob.tensor_thread(params={"amount": {"min": 0.0, "max": 1.0}})
    def f(frame, amount: float = 0.5, level: int = 1):
        return frame

    with pytest.raises(ValueError, match="'amount' must be a finite number"):
        f.resolve_params({"amount": value})
    with pytest.raises(ValueError, match="'level' expects int"):
        f.resolve_params({"level": value})


def test_param_errors_are_bad_requests() -> None:
    from ooblex.errors import BadRequest

    t = ob.tensor_thread(lambda frame, k=1: frame)
    for bad in ({"k": "x"}, {"nope": 1}):
        with pytest.raises(BadRequest) as info:
            t.resolve_params(bad)
        assert info.value.status == 400 and isinstance(info.value, ValueError)


def test_batching_is_checked_against_the_frame_annotation() -> None:
    with pytest.raises(TensorThreadError, match=r"is batched \(batch_size=4\): it receives a list of frames"):
        @ob.tensor_thread(batch_size=4)
        def per_frame(frame: np.ndarray) -> np.ndarray:
            return frame

    with pytest.raises(TensorThreadError, match="takes a list of frames .* but is not batched"):
        @ob.tensor_thread
        def batch(frames: list[np.ndarray]) -> list[np.ndarray]:
            return frames

    @ob.tensor_thread(batch_size=4)
    def fine(frames: list[np.ndarray], gain: float = 1) -> list[np.ndarray]:
        return frames

    assert fine.batched and fine([IMG])[0] is IMG
