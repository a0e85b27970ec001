"""Which control the live widget shows for each tensor-thread parameter (slider, dropdown, checkbox, text).

Kept in Python, not in the browser, so that the choice is testable and the same for every frontend.
"""

from __future__ import annotations

from typing import Any

from ..thread import Param, TensorThread


def controls(thread: TensorThread) -> list[dict[str, Any]]:
    """One control description per declared keyword parameter, in declaration order."""
    return [control(p) for p in thread.params.values()]


def control(p: Param) -> dict[str, Any]:
    base = {"name": p.name, "type": p.type.__name__, "default": _jsonable(p.default)}
    if p.choices is not None:
        return {**base, "kind": "dropdown", "options": [_jsonable(c) for c in p.choices]}
    if p.type is bool:
        return {**base, "kind": "checkbox"}
    if p.type in (int, float):
        lo, hi = _range(p)
        step = 1 if p.type is int else _float_step(lo, hi)
        return {**base, "kind": "slider", "min": lo, "max": hi, "step": step}
    return {**base, "kind": "text"}


def _range(p: Param) -> tuple[float, float]:
    """Declared bounds where given; otherwise a range around the default that contains it."""
    d = float(p.default) if isinstance(p.default, (int, float)) else 0.0
    span = abs(d) * 3 if d else (10.0 if p.type is int else 1.0)
    lo = p.min if p.min is not None else (0.0 if d >= 0 else d - span)
    hi = p.max if p.max is not None else max(d + span, lo + span)
    if p.type is int:
        return int(lo), int(hi)
    return float(lo), float(hi)


def _float_step(lo: float, hi: float) -> float:
    return round((hi - lo) / 100, 6) or 0.01


def _jsonable(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)
