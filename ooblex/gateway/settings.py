"""Gateway limits and WebRTC options, from arguments or ``OOBLEX_*`` environment variables.

Every limit here exists so that one bad or greedy client gets a clear 4xx while the gateway
keeps serving everyone else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..thread import TensorThread


@dataclass
class Settings:
    """Limits and options of one gateway instance."""

    #: WebRTC peer connections (WHIP + WHEP) at once; more get 429.
    max_sessions: int = 16
    #: Largest SDP offer accepted, in bytes (real offers are 2-10 KB).
    max_sdp_bytes: int = 64 * 1024
    #: Largest image body for /api/v1/frames and /ws, in bytes.
    max_image_bytes: int = 8 * 1024 * 1024
    #: Largest image accepted, in pixels (width * height), checked before decoding.
    max_image_pixels: int = 3840 * 2160
    #: Staleness budget for live streams (ms): frames older than this are skipped, not computed.
    max_latency_ms: float = 500.0
    #: Frames at the workers at once per live stream; 0 = the thread's ``concurrency``. More than the
    #: workers can run at once only makes each frame wait behind another (measured: 80 ms thread,
    #: window 2 -> ~190 ms round trip, window 1 -> ~120 ms); raise it for many remote workers.
    max_in_flight: int = 0

    def window(self, thread: TensorThread) -> int:
        """The in-flight window for a live stream through ``thread``."""
        return self.max_in_flight or thread.concurrency
    #: How long one HTTP frame may take before 504.
    frame_timeout_s: float = 10.0
    #: JPEG quality for MJPEG and HTTP/WS outputs.
    jpeg_quality: int = 80
    #: Offer 127.0.0.1 host candidates (aioice leaves loopback out; needed for same-machine peers).
    loopback_candidates: bool = False
    #: STUN/TURN servers, as RTCIceServer dicts: [{"urls": "stun:..."}, {"urls": "turn:...", "username":..}].
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    #: A WebRTC session whose peer stops sending media for this long is closed.
    session_idle_s: float = 5.0
    #: A new WebRTC session whose peer sends nothing (no media, no RTCP) this long after the answer is closed.
    connect_timeout_s: float = 15.0
    #: RTP timestamps of the processed video sent back to a WHIP publisher: "send" (when each frame is
    #: sent; smallest browser jitter buffer) or "input" (the publisher's own frame timestamps).
    return_timestamps: str = "send"
    #: Origins allowed to call the API from other web pages (WHIP/WHEP players); empty = same origin only.
    cors_origins: list[str] = field(default_factory=list)

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``OOBLEX_<FIELD>`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"OOBLEX_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw, cls.__dataclass_fields__[f.name].default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        if self.return_timestamps not in ("send", "input"):
            raise ValueError(f"return_timestamps must be 'send' or 'input', got {self.return_timestamps!r}")


def _parse(name: str, raw: str, default: Any) -> Any:
    if name == "cors_origins":
        return [o.strip() for o in raw.split(",") if o.strip()]
    if name == "ice_servers":
        try:
            servers = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"OOBLEX_ICE_SERVERS is not JSON: {exc}") from None
        if not isinstance(servers, list) or not all(isinstance(s, dict) and "urls" in s for s in servers):
            raise ValueError('OOBLEX_ICE_SERVERS must be a JSON list like [{"urls": "stun:host:3478"}]')
        return servers
    if isinstance(default, bool):
        return raw.lower() in ("1", "true", "yes", "on")
    try:
        return type(default)(raw)
    except ValueError:
        raise ValueError(f"OOBLEX_{name.upper()} expects {type(default).__name__}, got {raw!r}") from None
