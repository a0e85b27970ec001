"""``ob.live``: try a tensor thread (or a plain function) on a live webcam inside a notebook.

The kernel's live widgets are kept here by thread name: re-running a cell after editing the function swaps the new
code into the running widget (same view, same camera, parameters kept) instead of opening another.
``ob.live([a, b])`` compares threads (or two versions of one) on the same frames, side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .deployed import Transport, as_lane_thread
from .widget import LiveWidget

_live: dict[str, LiveWidget] = {}


def live(thread_or_function: Any, source: Any = "webcam", *, params: dict[str, Any] | None = None,
         name: str | None = None, width: int = 640, height: int = 480, quality: float = 0.8,
         codec: str = "jpeg", max_in_flight: int = 1, max_latency_ms: float = 500.0, autostart: bool = True,
         loop: bool = True, max_record_s: float = 60.0, transport: Transport = "webrtc") -> LiveWidget:
    """Show ``source`` and its processed output side by side, with a control per keyword parameter.

    ``thread_or_function``: a tensor thread or plain function, or a list of them (compare mode: the
    same frames go to each, shown side by side with each one's latency and fps). A ``Deployment``
    (``ob.deploy``'s answer) or ``"name"`` / ``"name@version"`` (deployed on the current cluster)
    runs on the cluster: the kernel sends each frame through the gateway serving that version
    (``ooblex.jupyter.deployed``), so ``ob.live([my_fn, deployment])`` compares the notebook's code with the
    deployed version. ``transport``: how, ``"webrtc"`` (WHIP, VP8 both ways: the path browsers and cameras
    take) or ``"websocket"`` (a JPEG per frame: each frame's own JSON result, and where UDP cannot pass).
    ``source``: ``"webcam"`` (the browser's camera), an ipywebrtc ``CameraStream`` (its constraints
    are used), or a kernel-side source: a video file, ``rtsp://`` / ``http://`` MJPEG URL, camera
    index of the kernel's machine (``loop``: replay files).
    Calling again with threads of the same names (or the same ``name``) swaps the code in place.
    ``codec``: how frames travel between browser and kernel, ``"jpeg"`` or ``"raw"`` (RGBA pixels: no
    encoding, for a kernel on the same machine as the browser). ``max_in_flight``: browser frames
    unanswered at once; 1 gives the lowest latency, 2 more fps when the round trip is long (a remote hub).
    ``max_record_s``: longest recording the Record button makes.
    """
    items = thread_or_function if isinstance(thread_or_function, (list, tuple)) else [thread_or_function]
    threads = [as_lane_thread(x, transport) for x in items]
    key = name or "|".join(_key(th) for th in threads)
    widget = _live.get(key)
    if widget is not None and not widget.closed and len(widget.threads) == len(threads):
        widget.swap(threads, params)
        if not _same_source(source, widget._source):
            widget.set_source(source)
        return widget
    if widget is not None:
        widget.close()
    constraints = {"width": {"ideal": width}, "height": {"ideal": height}}
    widget = LiveWidget(threads, source, params=params, constraints=constraints, max_in_flight=max_in_flight,
                        max_latency_ms=max_latency_ms, quality=quality, codec=codec, autostart=autostart,
                        loop_file=loop, max_record_s=max_record_s)
    _live[key] = widget
    return widget


def _key(thread: Any) -> str:
    """A deployed lane is kept under its deployment's name, not version: after a redeploy, re-running
    ``ob.live([fn, dep])`` swaps the new version into the open widget."""
    dep = getattr(thread, "deployment", None)
    return f"{dep.name} (cluster)" if dep is not None else thread.name


def live_widgets() -> dict[str, LiveWidget]:
    """The open live widgets of this kernel, by thread name (``a|b`` for a comparison, ``name (cluster)`` for a
    deployment)."""
    return {k: w for k, w in _live.items() if not w.closed}


def close_all() -> None:
    """Close every live widget of this kernel (stops cameras, sources and engines)."""
    for w in list(_live.values()):
        w.close()
    _live.clear()


def _same_source(a: Any, b: Any) -> bool:
    """Identity, or equality for specs that compare by value (never elementwise arrays)."""
    return a is b or isinstance(a, (str, int, Path)) and isinstance(b, (str, int, Path)) and a == b
