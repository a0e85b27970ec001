"""Gateway limits and WebRTC options, from arguments or ``OOBLEX_*`` environment variables.

Every limit here exists so that one bad or greedy client gets a clear 4xx while the gateway
keeps serving everyone else; docs/security.md says what each protects.
"""

from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from ..thread import TensorThread
from ..webrtc.encoders import SPEEDS

#: Fields given in the environment as comma-separated lists.
LISTS = ("allowed_hosts", "cors_origins", "trusted_proxies", "source_hosts", "turn_urls")


@dataclass
class Settings:
    """Limits and options of one gateway instance (each field: ``OOBLEX_<NAME>`` in the environment)."""

    # --- who may do what ---------------------------------------------------------------------
    #: The cluster secret. Set: every route that starts work or reveals a stream needs a bearer
    #: token (``ooblex token ...``); unset: the gateway serves loopback only (see docs/security.md).
    secret: str = field(default_factory=lambda: os.environ.get("OOBLEX_SECRET", ""), repr=False)
    #: The address the gateway listens on (its Host names are accepted; see ``allowed_hosts``).
    host: str = "127.0.0.1"
    #: Extra Host header values accepted (DNS names, ``*.example.com``; ``*`` = any). The listen
    #: address, localhost and (when listening on all interfaces) this machine's addresses and names
    #: are always accepted; anything else is refused, which defeats DNS rebinding.
    allowed_hosts: list[str] = field(default_factory=list)
    #: Origins allowed to call the API from other web pages (WHIP/WHEP players); empty = same origin only.
    #: State-changing requests and WebSockets from any other Origin are refused (403).
    cors_origins: list[str] = field(default_factory=list)
    #: Addresses of reverse proxies whose X-Forwarded-For is believed (per-client limits count the
    #: real client); empty = none.
    trusted_proxies: list[str] = field(default_factory=list)

    # --- jobs ---------------------------------------------------------------------------------
    #: Folder that job sources and sinks must lie in (resolved; no ``..`` or symlink escapes).
    media_root: str = "media"
    #: Hosts URL sources of jobs may name: ``cam.example.com``, ``*.example.com``, or a network
    #: ``10.0.0.0/8``. Empty = no URL sources. Loopback, link-local and private addresses are refused
    #: unless a listed network contains them.
    source_hosts: list[str] = field(default_factory=list)
    #: Jobs running at once; more get 429.
    max_jobs: int = 4

    # --- limits -------------------------------------------------------------------------------
    #: WebRTC peer connections (WHIP + WHEP) at once; more get 429.
    max_sessions: int = 16
    #: WebRTC sessions one client address may hold at once.
    max_sessions_per_client: int = 8
    #: Sessions of one client address that have not connected yet (ICE + DTLS); more get 429.
    max_pending_per_client: int = 4
    #: Open streams (WHIP, WebSocket, HTTP frames in progress) at once; more get 429.
    max_streams: int = 64
    #: Open streams of one client address.
    max_streams_per_client: int = 16
    #: Largest SDP offer accepted, in bytes (real offers are 2-10 KB).
    max_sdp_bytes: int = 64 * 1024
    #: Largest JSON body (parameters, jobs) or WebSocket text message, in bytes.
    max_json_bytes: int = 64 * 1024
    #: Largest image body for /api/v1/frames and WebSocket message for /ws, in bytes.
    max_image_bytes: int = 8 * 1024 * 1024
    #: Largest image accepted, in pixels (width * height), checked before decoding.
    max_image_pixels: int = 3840 * 2160
    #: A WebSocket that sends nothing for this long is closed (code 4408).
    ws_idle_s: float = 30.0
    #: Staleness budget for live streams (ms): frames older than this are skipped, not computed.
    max_latency_ms: float = 500.0
    #: Frames at the workers at once per live stream; 0 = the thread's ``concurrency``. More than the
    #: workers can run at once only makes each frame wait behind another (measured: 80 ms thread,
    #: window 2 -> ~190 ms round trip, window 1 -> ~120 ms); raise it for many remote workers.
    max_in_flight: int = 0
    #: How long one HTTP frame may take before 504.
    frame_timeout_s: float = 10.0

    # --- console (/console) -------------------------------------------------------------------
    #: Largest upload to the console: a deploy artifact or an ONNX model, in bytes (and the most an
    #: artifact may unpack to). Uploads are checked before anything is stored.
    max_upload_bytes: int = 256 * 1024 * 1024
    #: Seconds of per-second history kept per open stream for the console's charts.
    history_s: int = 300

    # --- media and WebRTC ---------------------------------------------------------------------
    #: JPEG quality for MJPEG and HTTP/WS outputs.
    jpeg_quality: int = 80
    #: Offer 127.0.0.1 host candidates (aioice leaves loopback out; needed for same-machine peers).
    loopback_candidates: bool = False
    #: STUN/TURN servers, as RTCIceServer dicts: [{"urls": "stun:..."}, {"urls": "turn:...", "username":..}].
    #: The gateway's own connections use them, and they are handed to clients (RFC 9725 Link headers).
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    #: TURN server URLs handed to clients with fresh credentials per session (TURN REST API, coturn
    #: ``use-auth-secret``): ``turn:turn.example.com:3478?transport=udp``, ``turns:...:5349``.
    turn_urls: list[str] = field(default_factory=list)
    #: The secret shared with the TURN server (coturn ``static-auth-secret``); needed with ``turn_urls``.
    turn_secret: str = field(default="", repr=False)
    #: How long handed-out TURN credentials are good for an allocation, in seconds.
    turn_ttl_s: float = 600.0
    #: A WebRTC session whose peer sends nothing (no media, no RTCP, no ICE consent check) for this long
    #: is closed. RFC 3550 lets a receiver report every 2.5-7.5 s (5 s on average; webrtcbin does), so
    #: 20 s outlasts a lost report or two and stays under the 30 s of ICE consent expiry (RFC 7675).
    session_idle_s: float = 20.0
    #: A new WebRTC session that has not connected (ICE + DTLS) this long after the answer is closed,
    #: and so is one whose peer sends nothing (no media, no RTCP) for this long after connecting.
    connect_timeout_s: float = 10.0
    #: RTP timestamps of the processed video sent back to a WHIP publisher: "send" (when each frame is
    #: sent; smallest browser jitter buffer) or "input" (the publisher's own frame timestamps).
    return_timestamps: str = "send"
    #: Pass a WHIP publisher's Opus audio, untouched, back to it and to WHEP viewers (off: dropped).
    audio: bool = True
    #: The most audio is held to stay in step with slow video (ms); the hold follows the video's delay.
    audio_max_delay_ms: float = 1000.0
    #: Video encoder speed: "fast" (VP8 cpu-used -10, x264 veryfast), "fastest" (-16, ultrafast: VP8
    #: visibly worse) or "stock" (aiortc's -6 and medium). Encoding is most of what a stream costs. VP8 is
    #: libvpx driven directly at every speed (``webrtc/vp8.py``: bitrate changes without keyframes).
    encoder_speed: str = "fast"
    #: Forward error correction for video (RED + ULPFEC, RFC 2198/5109) with peers that offer it, as
    #: browsers do: parity packets sized to the loss the peer reports rebuild lost packets without a
    #: round trip (``webrtc/protection.py``). Off: NACK retransmissions only.
    fec: bool = True

    # --- metrics (docs/observability.md) ----------------------------------------------------------
    #: Label ``/metrics`` frame series by stream id too (off: by gateway and thread only). Each open stream
    #: then adds ~100 series, dropped when it closes; turn it on to debug a few streams, not in production.
    metrics_stream_labels: bool = False

    # --- capacity (docs/deploy.md) --------------------------------------------------------------
    #: Past any of these measured loads, new sessions and streams get 503 and every stream degrades the
    #: same way (lower fps, then lower resolution); 0 turns a measure off. The event loop's share of
    #: wall time on the CPU (signalling, RTP, colour conversion and the engine all run there):
    max_loop_busy: float = 0.9
    #: ... this process's CPU time as a share of the cores it may use (codec threads included):
    max_cpu: float = 0.9
    #: ... how late the event loop runs a timer (ms): a machine too busy to run the gateway in time.
    max_loop_lag_ms: float = 500.0
    #: Degradation floor for the frame rate before the resolution is lowered.
    min_fps: float = 10.0
    #: Degradation floor for the resolution, as a scale of the input's.
    min_scale: float = 0.5

    def server_options(self) -> dict[str, Any]:
        """uvicorn options that enforce these settings at the protocol layer (message size, proxies)."""
        return {"ws_max_size": max(self.max_image_bytes, self.max_json_bytes) + 1024,
                "proxy_headers": bool(self.trusted_proxies),
                "forwarded_allow_ips": ",".join(self.trusted_proxies) or ""}

    def window(self, thread: TensorThread) -> int:
        """The in-flight window for a live stream through ``thread``."""
        return self.max_in_flight or thread.concurrency

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``OOBLEX_<FIELD>`` environment variables, then ``overrides``."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = os.environ.get(f"OOBLEX_{f.name.upper()}")
            if raw is not None:
                default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
                values[f.name] = _parse(f.name, raw, default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
                raise ValueError(f"{f.name} must be >= 0, got {value!r}")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls need turn_secret (OOBLEX_TURN_SECRET), the TURN server's static-auth-secret")
        if self.encoder_speed not in SPEEDS:
            raise ValueError(f"encoder_speed must be one of {sorted(SPEEDS)}, got {self.encoder_speed!r}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale!r}")
        if self.return_timestamps not in ("send", "input"):
            raise ValueError(f"return_timestamps must be 'send' or 'input', got {self.return_timestamps!r}")


def _parse(name: str, raw: str, default: Any) -> Any:
    if name in LISTS:
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
