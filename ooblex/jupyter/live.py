"""``ob.live``: try a tensor thread (or a plain function) on a live webcam inside a notebook.

Live widgets are kept by thread name: re-running a cell after editing the function swaps the new
code into the running widget (same view, same camera, parameters kept) instead of opening another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..thread import as_thread
from .widget import LiveWidget

_live: dict[str, LiveWidget] = {}


def live(thread_or_function: Any, source: Any = "webcam", *, params: dict[str, Any] | None = None,
         name: str | None = None, width: int = 640, height: int = 480, quality: float = 0.8,
         max_in_flight: int = 1, max_latency_ms: float = 500.0, autostart: bool = True,
         loop: bool = True) -> LiveWidget:
    """Show ``source`` and its processed output side by side, with a control per keyword parameter.

    ``source``: ``"webcam"`` (the browser's camera, frames travel over the widget's comm), an
    ipywebrtc ``CameraStream`` (its constraints are used), or a kernel-side source: a video file,
    ``rtsp://`` / ``http://`` MJPEG URL, camera index of the kernel's machine (``loop``: replay files).
    Calling again with a thread of the same name (or the same ``name``) swaps the code in place.
    ``max_in_flight``: browser frames unanswered at once; 1 gives the lowest latency, 2 more fps
    when the network round trip is long (a remote hub).
    """
    thread = as_thread(thread_or_function)
    key = name or thread.name
    widget = _live.get(key)
    if widget is not None and not widget.closed:
        widget.swap(thread, params)
        if not _same_source(source, widget._source):
            widget.set_source(source)
        return widget
    constraints = {"width": {"ideal": width}, "height": {"ideal": height}}
    widget = LiveWidget(thread, source, params=params, constraints=constraints, max_in_flight=max_in_flight,
                        max_latency_ms=max_latency_ms, quality=quality, autostart=autostart, loop_file=loop)
    _live[key] = widget
    return widget


def live_widgets() -> dict[str, LiveWidget]:
    """The open live widgets of this kernel, by thread name."""
    return {k: w for k, w in _live.items() if not w.closed}


def close_all() -> None:
    """Close every live widget of this kernel (stops cameras, sources and engines)."""
    for w in list(_live.values()):
        w.close()
    _live.clear()


def _same_source(a: Any, b: Any) -> bool:
    """Identity, or equality for specs that compare by value (never elementwise arrays)."""
    return a is b or isinstance(a, (str, int, Path)) and isinstance(b, (str, int, Path)) and a == b
