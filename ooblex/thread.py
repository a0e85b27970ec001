"""``@tensor_thread``: turn a function or a model class into a unit a worker can serve.

The decorated object stays a plain callable (call it on a numpy frame in a test), and
carries what the engine needs: a name, tunable keyword parameters with defaults, batching,
colour order and where user code runs. All checks happen at decoration time, so a mistake
is reported where it was made, not on the first frame of a live stream.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Executor = Literal["thread", "process"]
ColorOrder = Literal["rgb", "bgr"]


class TensorThreadError(TypeError):
    """A tensor thread was declared or called in a way that cannot work."""


@dataclass(frozen=True, slots=True)
class Param:
    """One keyword parameter a caller may change per stream while frames flow."""

    name: str
    default: Any
    type: type
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (often a query-string str) to this parameter's type, or raise."""
        try:
            if self.type is bool and isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                v: Any = value.lower() in ("1", "true", "yes", "on")
            elif self.type in (int, float, str, bool):
                v = self.type(value)
            else:
                v = value
        except (TypeError, ValueError):
            raise ValueError(
                f"parameter {self.name!r} expects {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and v not in self.choices:
            raise ValueError(f"parameter {self.name!r} must be one of {list(self.choices)}, got {v!r}")
        if self.min is not None and v < self.min or self.max is not None and v > self.max:
            raise ValueError(f"parameter {self.name!r} must be within [{self.min}, {self.max}], got {v!r}")
        return v

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "default": self.default, "type": self.type.__name__,
                "choices": list(self.choices) if self.choices else None,
                "min": self.min, "max": self.max}


@dataclass(slots=True)
class Output:
    """What one call produced: a frame, a JSON-able result, or both."""

    image: np.ndarray | None
    result: dict[str, Any] | None


class TensorThread:
    """A decorated function or class. Call it like the original; the engine uses the rest."""

    def __init__(
        self,
        target: Callable[..., Any] | type,
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
        self.target = target
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
        if self.is_async and executor == "process":
            raise TensorThreadError(f"{self.name}: async tensor threads cannot use executor='process'")
        self.params = _declared_params(self.name, call, params or {})
        self._instance: Any = None
        self._lock = threading.Lock()
        self.__wrapped__ = target
        self.__doc__ = getattr(target, "__doc__", None)
        self.__name__ = self.name

    # --- plain-callable behaviour -------------------------------------------------------
    def __call__(self, frame: Any, **params: Any) -> Any:
        """Call the user code directly: exactly what the undecorated object would return."""
        fn = self.instance()
        if self.is_async:
            return _run_sync(fn(frame, **params))
        return fn(frame, **params)

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
                raise ValueError(f"{self.name} has no parameter {key!r} (parameters: {known})")
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


def tensor_thread(target: Callable[..., Any] | type | None = None, **options: Any) -> Any:
    """Declare a tensor thread. Use bare (``@tensor_thread``) or with options.

    Options: ``name``, ``batch_size``, ``max_wait_ms`` (how long a batch may wait to fill),
    ``color`` ("rgb" or "bgr": the order your code expects), ``executor`` ("thread", or
    "process" for GIL-bound Python), ``concurrency`` (calls at once per worker),
    ``description``, ``params`` (per-parameter ``choices``/``min``/``max``), ``requirements``,
    ``licence`` (of the weights, shown in thread listings).
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
    """Turn what user code returned into an ``Output``; raise naming the problem if it is wrong."""
    if isinstance(out, tuple) and len(out) == 2:
        img, res = out
        return Output(_check_output_image(thread, img), _check_result(thread, res))
    if out is None:
        return Output(None, None)
    if isinstance(out, dict):
        return Output(None, _check_result(thread, out))
    return Output(_check_output_image(thread, out), None)


def _check_output_image(thread: TensorThread, img: Any) -> np.ndarray | None:
    if img is None:
        return None
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{thread.name} returned {type(img).__name__}; expected a numpy image, "
                        "a dict, or (image, dict)")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"{thread.name} returned an image of shape {img.shape}; expected HxWx3")
    if img.shape[2] == 4:
        img = img[:, :, :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8) if img.dtype.kind in "iuf" else img
        if img.dtype != np.uint8:
            raise TypeError(f"{thread.name} returned an image of dtype {img.dtype}; expected uint8")
    return img


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


def _declared_params(name: str, call: Callable[..., Any], extra: dict[str, dict[str, Any]]) -> dict[str, Param]:
    try:
        sig = inspect.signature(call)
    except (TypeError, ValueError) as exc:
        raise TensorThreadError(f"{name}: cannot read the signature: {exc}") from None
    args = [p for p in sig.parameters.values() if p.name != "self"]
    positional = [p for p in args if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(p.kind == p.VAR_POSITIONAL for p in args):
        raise TensorThreadError(f"{name} must take the frame as its first argument, e.g. def {name}(frame): ...")
    params: dict[str, Param] = {}
    for p in args[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TensorThreadError(
                f"{name}: parameter {p.name!r} needs a default value (only the frame is passed positionally)")
        ann = p.annotation if isinstance(p.annotation, type) else type(p.default)
        if p.default is None and not isinstance(p.annotation, type):
            ann = str
        opts = extra.get(p.name, {})
        params[p.name] = Param(p.name, p.default, ann, tuple(opts["choices"]) if "choices" in opts else None,
                               opts.get("min"), opts.get("max"))
    unknown = set(extra) - set(params)
    if unknown:
        raise TensorThreadError(f"{name}: params= names {sorted(unknown)} that the function does not take")
    return params


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
