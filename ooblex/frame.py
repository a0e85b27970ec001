"""The one type that travels the whole data path: pixels plus where-the-time-went.

A ``Frame`` is created at the edge (a camera, a WebRTC track, an HTTP body), stamped by
every stage it passes, and comes back out of a worker with its result. Timestamps are wall
clock (``time.time()``) so that hops between machines can be measured too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Pixels as a worker may hold them: an RGB HxWx3 uint8 array, or JPEG bytes not decoded yet (``Frame.jpeg``).
Pixels = np.ndarray | bytes

#: Stage names in the order a frame passes them.
STAGES = ("captured", "received", "queued", "started", "finished", "returned", "sent")


@dataclass(slots=True)
class Frame:
    """Pixels (HxWx3 uint8, RGB) plus stream identity and per-stage timestamps."""

    image: np.ndarray | None
    stream_id: str = ""
    seq: int = 0
    thread: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    stamps: dict[str, float] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None
    #: Wall-clock time after which a live frame is not worth computing; 0 = never expires.
    deadline: float = 0.0
    #: Where the worker sends the processed frame (a gateway instance's reply queue).
    reply_to: str = ""
    #: True when a worker skipped the frame (expired before it could start).
    skipped: bool = False
    #: Media time in seconds on the source's own clock (a file's presentation timestamp), None when
    #: the source has none. Outputs keep the input's timing by it, and other media of the same source
    #: (its soundtrack) line up with the pictures on it.
    pts: float | None = None
    #: The pixels still JPEG-coded, as a network broker delivered them to a worker (``image`` is None
    #: meanwhile): the worker decodes them in its compute threads, on the GPU when its model is there.
    jpeg: bytes | None = None
    #: A one-time remark from the worker on how the output was made usable (float pixels scaled to
    #: uint8), shown by the live widget.
    note: str | None = None

    def stamp(self, stage: str, t: float | None = None) -> None:
        """Record that this frame reached ``stage`` now (or at ``t``)."""
        self.stamps[stage] = time.time() if t is None else t

    @property
    def captured(self) -> float:
        """Capture time: the earliest timestamp we know of."""
        return self.stamps.get("captured") or self.stamps.get("received") or 0.0

    def expired(self, now: float | None = None) -> bool:
        return self.deadline > 0 and (time.time() if now is None else now) > self.deadline

    def durations(self) -> dict[str, float]:
        """Milliseconds spent between consecutive known stages, keyed ``"a->b"``, plus ``total``."""
        known = [(s, self.stamps[s]) for s in STAGES if s in self.stamps]
        out = {f"{a}->{b}": (tb - ta) * 1e3 for (a, ta), (b, tb) in zip(known, known[1:], strict=False)}
        if len(known) > 1:
            out["total"] = (known[-1][1] - known[0][1]) * 1e3
        return out

    def header(self) -> dict[str, Any]:
        """Everything but the pixels, JSON-able: what brokers send beside the image bytes."""
        return {
            "stream_id": self.stream_id,
            "seq": self.seq,
            "thread": self.thread,
            "params": self.params,
            "stamps": self.stamps,
            "result": self.result,
            "error": self.error,
            "deadline": self.deadline,
            "reply_to": self.reply_to,
            "skipped": self.skipped,
            "pts": self.pts,
            # only when there is one: a gateway of an earlier version refuses fields it does not know
            **({"note": self.note} if self.note is not None else {}),
        }

    @classmethod
    def from_header(cls, header: dict[str, Any], image: np.ndarray | None) -> Frame:
        return cls(image=image, **header)


def json_value(obj: Any) -> Any:
    """``json.dumps`` hook for thread results: numpy scalars and arrays become numbers and lists;
    anything else JSON cannot hold is a ``TypeError`` naming its type."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"result value of type {type(obj).__name__} is not JSON-serializable")


def result_json(result: Any, *, lenient: bool = False, **options: Any) -> str:
    """A thread result (or anything holding one) as JSON text: what the broker wire, the gateway and
    the live widget all send. ``lenient`` (for people, not programs) shows other values as ``str``."""
    return json.dumps(result, default=_shown if lenient else json_value, **options)


def _shown(obj: Any) -> Any:
    try:
        return json_value(obj)
    except TypeError:
        return str(obj)
