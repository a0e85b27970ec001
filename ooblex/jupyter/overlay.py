"""The result schema the live widget draws on top of the output: boxes, points and labels.

A tensor thread's JSON result may carry any of (all optional; other keys are shown as text only)::

    {"boxes":  [{"box": [x, y, w, h], "label": "face", "score": 0.97, "color": "#e53935",
                 "points": [[x, y], ...]}],          # points that belong to the box (landmarks)
     "points": [[x, y], ...],                        # or [{"xy": [x, y], "label": "nose"}]
     "labels": ["cat 0.93", {"text": "dog", "score": 0.41}],   # a caption list, top left
     "size":   [w, h]}                               # coordinates' frame size if not the output's

Coordinates are pixels of the frame the thread saw. ``overlay`` checks and bounds what is drawn
(the browser must not be made to draw a million points), skipping malformed items.
"""

from __future__ import annotations

import re
from typing import Any

MAX_BOXES = 256
MAX_POINTS = 4096
MAX_LABELS = 32
MAX_TEXT = 64
_COLOR = re.compile(r"#[0-9a-fA-F]{3,8}|[a-zA-Z]{3,20}")


def overlay(result: Any) -> dict[str, Any] | None:
    """What the widget draws for ``result``, or None when it has nothing to draw."""
    if not isinstance(result, dict):
        return None
    boxes = [b for b in (_box(x) for x in _items(result.get("boxes"), MAX_BOXES)) if b is not None]
    points = [p for p in (_point(x) for x in _items(result.get("points"), MAX_POINTS)) if p is not None]
    labels = [t for t in (_label(x) for x in _items(result.get("labels"), MAX_LABELS)) if t]
    if not (boxes or points or labels):
        return None
    size = result.get("size")
    size = [float(size[0]), float(size[1])] if _numbers(size, 2) and min(size) > 0 else None
    return {"boxes": boxes, "points": points, "labels": labels, "size": size}


def _items(value: Any, limit: int) -> list[Any]:
    return value[:limit] if isinstance(value, list) else []


def _numbers(value: Any, n: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == n and \
        all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _point(value: Any) -> list[float] | None:
    xy = value.get("xy") if isinstance(value, dict) else value
    return [float(xy[0]), float(xy[1])] if _numbers(xy, 2) else None


def _box(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict) or not _numbers(value.get("box"), 4):
        return None
    color = value.get("color")
    score = value.get("score")
    points = [p for p in (_point(x) for x in _items(value.get("points"), MAX_POINTS)) if p is not None]
    return {"box": [float(v) for v in value["box"]], "label": _text(value.get("label")),
            "score": float(score) if _numbers([score], 1) else None,
            "color": color if isinstance(color, str) and _COLOR.fullmatch(color) else None, "points": points}


def _label(value: Any) -> str | None:
    if isinstance(value, dict):
        text, score = _text(value.get("text")), value.get("score")
        return f"{text} {score:.2f}" if text and _numbers([score], 1) else text
    return _text(value)


def _text(value: Any) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    return value[:MAX_TEXT] if isinstance(value, str) and value else None
