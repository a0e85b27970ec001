"""``@tensor_thread``: turn a function or a model class into a unit a worker can serve.

The decorated object stays a plain callable (call it on a numpy frame in a test), and
carries what the engine needs: a name, tunable keyword parameters with defaults, batching,
colour order and where user code runs. All checks happen at decoration time, so a mistake
is reported where it was made, not on the first frame of a live stream.
"""

from __future__ import annotations

import asyncio
import collections.abc
import inspect
import math
import threading
import types
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Generic, Literal, ParamSpec, Protocol, TypeVar, overload

import numpy as np

from .errors import BadRequest

Executor = Literal["thread", "process"]
ColorOrder = Literal["rgb", "bgr"]
P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")
Outputs = TypeVar("Outputs", bound=Sequence[Any])


class TensorThreadError(BadRequest, TypeError):
    """A tensor thread was declared or called in a way that cannot work."""


class OutputError(TensorThreadError):
    """A tensor thread returned something that is not a frame, a result or both; the message names the fix."""


@dataclass(frozen=True, slots=True)
class Param:
    """One keyword parameter a caller may change per stream while frames flow."""

    name: str
    default: Any
    type: type
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None
    #: ``None`` is a value it takes (annotated ``X | None``, or None by default).
    optional: bool = False

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (often a query-string str) to this parameter's type, or raise ``BadRequest``."""
        if value is None and self.optional:
            return None
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                v: Any = value.lower() in ("1", "true", "yes", "on")
            elif self.type in (int, float, str, bool):
                v = self.type(value)
            else:
                v = value
        except (TypeError, ValueError, OverflowError):
            raise BadRequest(
                f"parameter {self.name!r} expects {self.type.__name__}, got {value!r}"
            ) from None
        if isinstance(v, float) and not math.isfinite(v):
            raise BadRequest(f"parameter {self.name!r} must be a finite number, got {value!r}")
        if self.choices is not None and v not in self.choices:
            raise BadRequest(f"parameter {self.name!r} must be one of {list(self.choices)}, got {v!r}")
        if self.min is not None and v < self.min or self.max is not None and v > self.max:
            raise BadRequest(f"parameter {self.name!r} must be within [{self.min}, {self.max}], got {v!r}")
        return v

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "type": self.type.__name__,
                "choices": list(self.choices) if self.choices else None,
                "min": self.min, "max": self.max}


@dataclass(slots=True)
class Output:
    """What one call produced: a frame, a JSON-able result, or both; ``note`` says once how an image was
    converted (floats scaled to uint8), for the live widget to show."""

    image: np.ndarray | None
    result: dict[str, Any] | None
    note: str | None = None


class TensorThread(Generic[P, R]):
    """A decorated function or class. Call it like the original; the engine uses the rest.

    Typed as what it wraps: ``TensorThread[P, R]`` is called with ``P`` and returns ``R`` (for an async
    function, the awaited result: calling the thread runs it to completion); for a class, ``P`` and
    ``R`` come from its ``__call__``.
    """

    def __init__(
        self,
        target: Callable[P, Any] | type,
        *,
        name: str | None = None,
        batch_size: int = 1,
        max_wait_ms: float = 0.0,
        color: ColorOrder = "rgb",
        executor: Executor = "thread",
        concurrency: int = 1,
        description: str | None = None,
        params: dict[str, dict[str, Any]] | None = None,
        requirements: tuple[str, ...] | list[str] = (),
        licence: str = "",
    ) -> None:
        self.target: Callable[..., Any] = target
        self.is_class = inspect.isclass(target)
        self.name = name or getattr(target, "__name__", None) or "thread"
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.max_wait_ms = _check_number("max_wait_ms", max_wait_ms)
        self.concurrency = _check_int("concurrency", concurrency, 1)
        if color not in ("rgb", "bgr"):
            raise TensorThreadError(f"color must be 'rgb' or 'bgr', got {color!r}")
        if executor not in ("thread", "process"):
            raise TensorThreadError(f"executor must be 'thread' or 'process', got {executor!r}")
        self.color: ColorOrder = color
        self.executor: Executor = executor
        self.description = description or inspect.getdoc(target) or ""
        self.requirements = tuple(requirements)
        self.licence = licence  # where the weights come from and under which terms (shown in listings)
        call = _user_callable(target)
        self.is_async = inspect.iscoroutinefunction(call)
        #: How float outputs are read, decided by the first one: 255.0 for [0, 1], 1.0 for [0, 255].
        self.float_scale: float | None = None
        if self.is_async and executor == "process":
            raise TensorThreadError(f"{self.name}: async tensor threads cannot use executor='process'")
        self.params = _declared_params(self.name, call, params or {}, self.batch_size)
        self._instance: Any = None
        self._lock = threading.Lock()
        self.__wrapped__ = target
        self.__doc__ = getattr(target, "__doc__", None)
        self.__name__ = self.name

    # --- plain-callable behaviour -------------------------------------------------------
    @overload
    def __call__(self: TensorThread[P, Coroutine[Any, Any, T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...
    @overload
    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        """Call the user code directly: what the undecorated object would return (awaited, if it is async)."""
        fn = self.instance()
        if self.is_async:
            return _run_sync(fn(*args, **kwargs))
        return fn(*args, **kwargs)

    def instance(self) -> Callable[..., Any]:
        """The callable to run frames through; for a class, one instance with ``setup()`` done."""
        if not self.is_class:
            return self.target
        with self._lock:
            if self._instance is None:
                inst = self.target()
                if hasattr(inst, "setup"):
                    inst.setup()
                self._instance = inst
        return self._instance

    def teardown(self) -> None:
        with self._lock:
            inst, self._instance = self._instance, None
        if inst is not None and hasattr(inst, "teardown"):
            inst.teardown()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_instance"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- engine-facing helpers -----------------------------------------------------------
    @property
    def batched(self) -> bool:
        return self.batch_size > 1

    def resolve_params(self, overrides: dict[str, Any], base: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate ``overrides`` against the declared parameters; unknown names are errors."""
        out = dict(base) if base is not None else {p.name: p.default for p in self.params.values()}
        for key, value in overrides.items():
            if key not in self.params:
                known = ", ".join(self.params) or "none"
                raise BadRequest(f"{self.name} has no parameter {key!r} (parameters: {known})")
            out[key] = self.params[key].coerce(value)
        return out

    def describe(self) -> dict[str, Any]:
        """JSON description for thread listings (the demo page builds its controls from this)."""
        return {
            "name": self.name,
            "description": self.description.strip().splitlines()[0] if self.description else "",
            "params": [p.describe() for p in self.params.values()],
            "batch_size": self.batch_size,
            "max_wait_ms": self.max_wait_ms,
            "color": self.color,
            "executor": self.executor,
            "licence": self.licence,
        }

    def __repr__(self) -> str:
        return f"<tensor_thread {self.name!r} params={list(self.params)} batch_size={self.batch_size}>"


class FrameModel(Protocol[P, R_co]):
    """A class whose instances are called on frames: what a decorated class is typed as (``setup()`` and
    ``teardown()`` are optional, so not part of it)."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...


class ThreadDecorator(Protocol):
    """What ``@tensor_thread(...)`` with options returns: each call is one frame (``batch_size`` 1)."""

    @overload
    def __call__(self, target: type[FrameModel[P, R_co]], /) -> TensorThread[P, R_co]: ...
    @overload
    def __call__(self, target: Callable[P, R], /) -> TensorThread[P, R]: ...


class BatchedThreadDecorator(Protocol):
    """What ``@tensor_thread(batch_size=N)`` returns: the function receives a *list* of frames
    (``frames: list[np.ndarray]``) and returns a list (or tuple) with one output per frame."""

    @overload
    def __call__(self, target: type[FrameModel[P, R_co]], /) -> TensorThread[P, R_co]: ...
    @overload
    def __call__(self, target: Callable[Concatenate[list[T], P], Outputs], /
                 ) -> TensorThread[Concatenate[list[T], P], Outputs]: ...
    @overload
    def __call__(self, target: Callable[Concatenate[list[T], P], Coroutine[Any, Any, Outputs]], /
                 ) -> TensorThread[Concatenate[list[T], P], Coroutine[Any, Any, Outputs]]: ...


@overload
def tensor_thread(target: type[FrameModel[P, R_co]], /) -> TensorThread[P, R_co]: ...
@overload
def tensor_thread(target: Callable[P, R], /) -> TensorThread[P, R]: ...
@overload  # batch_size=1 also matches the next overload: this one, first, wins (as intended)
def tensor_thread(target: None = None, /, *, name: str | None = None, batch_size: Literal[1] = 1,  # type: ignore[overload-overlap]
                  max_wait_ms: float = 0.0, color: ColorOrder = "rgb", executor: Executor = "thread",
                  concurrency: int = 1, description: str | None = None,
                  params: dict[str, dict[str, Any]] | None = None, requirements: Sequence[str] = (),
                  licence: str = "") -> ThreadDecorator: ...
@overload
def tensor_thread(target: None = None, /, *, name: str | None = None, batch_size: int,
                  max_wait_ms: float = 0.0, color: ColorOrder = "rgb", executor: Executor = "thread",
                  concurrency: int = 1, description: str | None = None,
                  params: dict[str, dict[str, Any]] | None = None, requirements: Sequence[str] = (),
                  licence: str = "") -> BatchedThreadDecorator: ...


def tensor_thread(target: Any = None, **options: Any) -> Any:
    """Declare a tensor thread. Use bare (``@tensor_thread``) or with options.

    Options: ``name``, ``batch_size`` (above 1, the function receives a *list* of frames, from any
    streams, and returns a list with one output per frame), ``max_wait_ms`` (how long a batch may
    wait to fill), ``color`` ("rgb" or "bgr": the order your code expects), ``executor`` ("thread",
    or "process" for GIL-bound Python), ``concurrency`` (calls at once per worker),
    ``description``, ``params`` (per-parameter ``choices``/``min``/``max``), ``requirements``,
    ``licence`` (of the weights, shown in thread listings).

    Typed with overloads: a type checker sees ``TensorThread[P, R]`` with the wrapped function's
    parameters and result, and refuses a batched thread whose first parameter is not a list.
    """
    if target is None:
        return lambda t: TensorThread(t, **options)
    if isinstance(target, TensorThread):
        return target
    return TensorThread(target, **options)


def as_thread(obj: Any) -> TensorThread:
    """Accept a TensorThread or any plain callable (wrapped on the fly)."""
    if isinstance(obj, TensorThread):
        return obj
    if callable(obj):
        return TensorThread(obj)
    raise TensorThreadError(f"expected a tensor thread or a callable, got {type(obj).__name__}")


def normalize_output(thread: TensorThread, out: Any, frame: np.ndarray) -> Output:
    """Turn what user code returned into an ``Output``; raise naming the problem (and its fix) if it is wrong."""
    if isinstance(out, tuple) and len(out) == 2:
        img, res = out
        return _with_result(_check_output_image(thread, img), _check_result(thread, res))
    if out is None:
        return Output(None, None)
    if isinstance(out, dict):
        return Output(None, _check_result(thread, out))
    return _with_result(_check_output_image(thread, out), None)


def _with_result(image: tuple[np.ndarray | None, str | None], result: dict[str, Any] | None) -> Output:
    return Output(image[0], result, image[1])


def _check_output_image(thread: TensorThread, img: Any) -> tuple[np.ndarray | None, str | None]:
    """The output as HxWx3 uint8 RGB, and a note the first time floats are converted; else an error with the fix."""
    if img is None:
        return None, None
    if not isinstance(img, np.ndarray):
        hint = " (a tensor: return t.detach().cpu().numpy())" if hasattr(img, "numpy") else ""
        raise OutputError(f"{thread.name} returned {type(img).__name__}{hint}; expected a numpy HxWx3 uint8 image, "
                          "a dict, or (image, dict)")
    img = _as_hwc(thread, img)
    if img.dtype == np.uint8:
        return img, None
    if img.dtype.kind in "iu":
        lo, hi = int(img.min()), int(img.max())
        if lo < 0 or hi > 255:
            raise OutputError(f"{thread.name} returned {img.dtype} pixels in [{lo}, {hi}], outside 0..255: return "
                              "np.clip(img, 0, 255).astype(np.uint8)")
        return img.astype(np.uint8), None
    if img.dtype.kind == "f":
        return _floats_to_uint8(thread, img)
    raise OutputError(f"{thread.name} returned an image of dtype {img.dtype}; return uint8 (0..255) or floats in "
                      "[0, 1] or [0, 255]" + (" (a mask: mask.astype(np.uint8) * 255)" if img.dtype == bool else ""))


def _as_hwc(thread: TensorThread, img: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 -> HxWx3; anything else is an error that says how to fix it."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim == 3 and img.shape[2] in (3, 4):
        return img[:, :, :3] if img.shape[2] == 4 else img
    if img.ndim == 3 and img.shape[0] in (1, 3, 4):
        raise OutputError(f"{thread.name} returned an image of shape {img.shape}, channels first (CxHxW): return "
                          "img.transpose(1, 2, 0)")
    if img.ndim == 4 and img.shape[0] == 1:
        raise OutputError(f"{thread.name} returned an image of shape {img.shape}, a batch of one: return img[0]")
    raise OutputError(f"{thread.name} returned an image of shape {img.shape}; expected HxWx3 (RGB), HxWx4 or HxW")


def _floats_to_uint8(thread: TensorThread, img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Floats in [0, 1] (scaled by 255) or [0, 255] (rounded) -> uint8. Which range a thread uses is decided by
    its first float frame and kept (a dark [0, 255] frame is not then stretched), unless a later frame goes past 1."""
    lo, hi = float(np.min(img)), float(np.max(img))
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise OutputError(f"{thread.name} returned an image with NaN or infinite values: return np.nan_to_num(img)")
    if lo < -0.5 or hi > 255.5:
        raise OutputError(f"{thread.name} returned float pixels in [{lo:.3g}, {hi:.3g}]; return floats in [0, 1] or "
                          "[0, 255] (e.g. np.clip(img, 0, 1)) or uint8")
    scale = thread.float_scale
    note = None
    if scale is None or scale == 255.0 and hi > 1.5:
        scale = thread.float_scale = 255.0 if hi <= 1.0 else 1.0
        note = (f"{thread.name} returns float pixels: read as {'[0, 1], scaled by 255' if scale == 255 else '[0, 255]'}"
                " to uint8 (return uint8 to skip the conversion)")
    return np.clip(np.rint(img * scale), 0, 255).astype(np.uint8), note


def _check_result(thread: TensorThread, res: Any) -> dict[str, Any] | None:
    if res is None or isinstance(res, dict):
        return res
    raise TypeError(f"{thread.name} returned a {type(res).__name__} result; expected a dict")


def _user_callable(target: Any) -> Callable[..., Any]:
    if inspect.isclass(target):
        call = next((vars(c)["__call__"] for c in target.__mro__ if "__call__" in vars(c)), None)
        if call is None:
            raise TensorThreadError(f"class {target.__name__} needs a __call__(self, frame, ...) method")
        return call
    if not callable(target):
        raise TensorThreadError(f"@tensor_thread needs a function or a class, got {type(target).__name__}")
    return target


def _declared_params(name: str, call: Callable[..., Any], extra: dict[str, dict[str, Any]],
                     batch_size: int = 1) -> dict[str, Param]:
    try:
        sig = inspect.signature(call)
    except (TypeError, ValueError) as exc:
        raise TensorThreadError(f"{name}: cannot read the signature: {exc}") from None
    args = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p for p in args if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in args):
        raise TensorThreadError(f"{name} must take the frame as its first argument, e.g. def {name}(frame): ...")
    if positional:
        _check_frame_argument(name, positional[0].name, _annotation(call, positional[0]), batch_size)
    params: dict[str, Param] = {}
    for p in args[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TensorThreadError(
                f"{name}: parameter {p.name!r} needs a default value (only the frame is passed positionally)")
        kind, optional = _param_type(_annotation(call, p), p.default)
        opts = extra.get(p.name, {})
        params[p.name] = Param(p.name, p.default, kind, tuple(opts["choices"]) if "choices" in opts else None,
                               opts.get("min"), opts.get("max"), optional)
    unknown = set(extra) - set(params)
    if unknown:
        raise TensorThreadError(f"{name}: params= names {sorted(unknown)} that the function does not take")
    return params


def _annotation(call: Callable[..., Any], p: inspect.Parameter) -> Any:
    """``p``'s annotation as an object, or None if it has none we can use.

    Under ``from __future__ import annotations`` annotations are strings: each is evaluated on its own
    in the module of the function (so one that cannot be, e.g. a name local to the function that
    defined this one, costs only its own type, which then comes from the default value).
    """
    ann = p.annotation
    if ann is p.empty:
        return None
    if isinstance(ann, str):
        namespace = getattr(inspect.unwrap(call), "__globals__", {})
        try:
            return eval(ann, namespace)  # noqa: S307 - what inspect.signature(eval_str=True) does
        except Exception:  # noqa: BLE001 - any failure just means "unknown"
            return None
    return ann


def _param_type(ann: Any, default: Any) -> tuple[type, bool]:
    """(type to coerce values to, whether None is allowed) from an annotation such as ``float``,
    ``bool | None``, ``Optional[int]`` or ``Annotated[float, ...]``; the default's type if it names none."""
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    optional = default is None
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        members = typing.get_args(ann)
        rest = [a for a in members if a is not type(None)]
        optional = optional or len(rest) < len(members)
        ann = rest[0] if len(rest) == 1 else type(default) if type(default) in rest else None
    origin = typing.get_origin(ann)
    if isinstance(origin, type):
        ann = origin  # list[int] -> list
    if isinstance(ann, type) and ann is not type(None):
        return ann, optional
    return (str if default is None else type(default)), optional


def _check_frame_argument(name: str, arg: str, ann: Any, batch_size: int) -> None:
    """A batched thread receives a list of frames, any other one frame: an annotation that says otherwise is
    refused here, at decoration time, rather than failing on the first frames of a stream."""
    kind = typing.get_origin(ann) or ann
    if batch_size > 1 and kind is np.ndarray:
        raise TensorThreadError(
            f"{name} is batched (batch_size={batch_size}): it receives a list of frames, not one array; "
            f"declare def {name}({arg}: list[np.ndarray], ...) and return a list with one output per frame")
    if batch_size == 1 and kind in (list, tuple, collections.abc.Sequence):
        raise TensorThreadError(
            f"{name} takes a list of frames ({arg}: {ann}) but is not batched: pass batch_size=N (N > 1) "
            "to receive lists of frames, or take one frame (np.ndarray)")


def _check_int(what: str, value: Any, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TensorThreadError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_number(what: str, value: Any) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise TensorThreadError(f"{what} must be a number >= 0, got {value!r}")
    return float(value)


def _run_sync(coro: Any) -> Any:
    """Run a coroutine from sync code, also when an event loop already runs here (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["v"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box["v"]
