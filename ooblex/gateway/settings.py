"""Gateway limits and WebRTC options, from arguments or ``OOBLEX_*`` environment variables.

Every limit here exists so that one bad or greedy client gets a clear 4xx while the gateway
keeps serving everyone else; docs/security.md says what each protects. The one model, parsed by
pydantic-settings: a value that is not of its field's type (``OOBLEX_FEC=flase``) is an error
naming the variable, and an ``OOBLEX_*`` variable that nothing reads gets a warning.
docs/settings.md is generated from the ``#:`` comments here (``ooblex config --reference``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from typing import Any

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..thread import TensorThread
from ..token_keys import REFRESH_S
from ..tokens import AUDIENCE, MAX_TTL_CONTROL_S, MAX_TTL_S
from ..webrtc.encoders import SPEEDS

log = logging.getLogger("ooblex.settings")

PREFIX = "OOBLEX_"
#: ``OOBLEX_*`` variables that are not gateway settings, and what reads them: the one list of them, so
#: that any other ``OOBLEX_*`` variable is reported as a likely typo.
OTHER_VARIABLES = {
    "OOBLEX_BROKER": "the cluster's broker URL (ooblex/cluster/config.py)",
    "OOBLEX_CLUSTER": "alias of OOBLEX_BROKER (ooblex/cluster/config.py)",
    "OOBLEX_STORE": "the cluster's Redis store (ooblex/cluster/config.py)",
    "OOBLEX_CACHE": "a worker's blob and pip cache (ooblex/cluster/node.py)",
    "OOBLEX_RABBITMQ_BIN": "where ooblex up finds RabbitMQ (ooblex/cluster/servers.py)",
    "OOBLEX_TOKEN": "ooblex send's bearer token (ooblex/webrtc/client.py)",
    "OOBLEX_GATEWAY": "the gateway the Jupyter server extension reaches (server_ext/)",
    "OOBLEX_LIVE_MAX_MESSAGE_BYTES": "the Jupyter live proxy's message limit (server_ext/live.py)",
    "OOBLEX_LIVE_MAX_IN_FLIGHT": "the Jupyter live proxy's in-flight limit (server_ext/live.py)",
    "OOBLEX_SOURCE": "the notebooks' video source (notebooks/)",
    "OOBLEX_PUBLIC_URL": "the gateways' public URL in deploy/k8s",
    "OOBLEX_PUBLIC_HOST": "the TURN host name in deploy/docker-compose.yml",
    "OOBLEX_REDIS_PASSWORD": "Redis' password in deploy/docker-compose.yml",
    "OOBLEX_RABBITMQ_PASSWORD": "RabbitMQ's password in deploy/docker-compose.yml",
    "OOBLEX_IN_NETNS": "the network-namespace test harness (tests/netns.py)",
    "OOBLEX_TEST_SLOW_S": "a test thread's delay (tests/slow_thread.py)",
    "OOBLEX_TEST_SLOW_LOG": "a test thread's log (tests/slow_thread.py)",
    "OOBLEX_METRICS_PORT": "a worker's /metrics port (ooblex worker --metrics-port)",
    "OOBLEX_METRICS_HOST": "a worker's /metrics address (ooblex worker --metrics-host)",
    "OOBLEX_LOG_FORMAT": "text or json logs of every ooblex command (ooblex/logs.py)",
    "OOBLEX_HEALTH_URL": "what the image's HEALTHCHECK asks (deploy/Dockerfile)",
    "OOBLEX_IMAGE": "the image deploy/docker-compose.yml runs",
    "OOBLEX_PORT": "the gateway's host port in deploy/docker-compose.yml",
    "OOBLEX_REDIS_PORT": "Redis' host port in deploy/docker-compose.yml",
    "OOBLEX_TURN_PORT": "coturn's host port in deploy/docker-compose.yml",
    "OOBLEX_JUPYTER_SOCKET": "where kernels ask the Jupyter server for its cluster (ooblex/cluster/current.py)",
}
_warned: set[str] = set()


class Settings(BaseSettings):
    """Limits and options of one gateway instance (each field: ``OOBLEX_<NAME>`` in the environment)."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, enable_decoding=False, extra="forbid")

    # --- who may do what ---------------------------------------------------------------------
    #: The cluster secret. Set: every route that starts work or reveals a stream needs a bearer
    #: token (``ooblex token ...``); unset: the gateway serves loopback only (see docs/security.md).
    secret: str = Field(default="", repr=False)
    #: The address the gateway listens on (its Host names are accepted; see ``allowed_hosts``).
    host: str = "127.0.0.1"
    #: Extra Host header values accepted (DNS names, ``*.example.com``; ``*`` = any). The listen
    #: address, localhost and (when listening on all interfaces) this machine's addresses and names
    #: are always accepted; anything else is refused, which defeats DNS rebinding.
    allowed_hosts: list[str] = Field(default_factory=list)
    #: Origins allowed to call the API from other web pages (WHIP/WHEP players); empty = same origin only.
    #: State-changing requests and WebSockets from any other Origin are refused (403).
    cors_origins: list[str] = Field(default_factory=list)
    #: Addresses of reverse proxies whose X-Forwarded-For is believed (per-client limits count the
    #: real client); empty = none.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: The ``aud`` every token must carry: the same on all gateways of a cluster (and where tokens are
    #: minted), another one for gateways that must not take each other's tokens.
    token_audience: str = AUDIENCE
    #: Longest lifetime (exp - iat) of a publish or view token, in seconds: longer ones are neither
    #: minted nor accepted.
    max_token_ttl_s: float = MAX_TTL_S
    #: Longest lifetime of a control token, in seconds.
    max_token_ttl_control_s: float = MAX_TTL_CONTROL_S
    #: A file holding the token keyring (``ooblex token rotate``/``revoke``); empty: the cluster store's,
    #: or (no store) one built-in key.
    token_keys: str = ""
    #: How often a gateway re-reads the token keyring from the cluster store (a revoked key stops
    #: working within this), in seconds.
    token_keys_refresh_s: float = REFRESH_S
    #: Serve clients beyond loopback without a secret (``--insecure``). Off: with no secret, requests
    #: from any non-loopback address get 403, however the app is served.
    allow_insecure_network: bool = False

    # --- jobs ---------------------------------------------------------------------------------
    #: Folder that job sources and sinks must lie in (resolved; no ``..`` or symlink escapes).
    media_root: str = "media"
    #: Hosts URL sources of jobs may name: ``cam.example.com``, ``*.example.com``, or a network
    #: ``10.0.0.0/8``. Empty = no URL sources. Loopback, link-local and private addresses are refused
    #: unless a listed network contains them.
    source_hosts: list[str] = Field(default_factory=list)
    #: Jobs running at once; more get 429.
    max_jobs: int = 4
    #: Let job sources be HLS playlists (``.m3u8``), whose segments are then read only from the media
    #: root. Off: any file that names other files (m3u8, ffconcat, sdp, mpd) is refused (400).
    allow_playlists: bool = False

    # --- limits -------------------------------------------------------------------------------
    #: WebRTC peer connections (WHIP + WHEP) at once; more get 429.
    max_sessions: int = 16
    #: WebRTC sessions one client may hold at once. A client is an IPv4 address or an IPv6 /64
    #: (``client_ipv6_prefix``) and, with a secret set, also a token subject (``sub``): each is counted.
    max_sessions_per_client: int = 8
    #: Sessions of one client that have not connected yet (ICE + DTLS); more get 429.
    max_pending_per_client: int = 4
    #: Sessions not connected yet, gateway-wide. At this many (or at ``max_sessions``) a new offer takes
    #: the place of the oldest unconnected session of the client with the most of them, if that is more
    #: than the newcomer has; otherwise 429. Unconnected peers never hold the room of connected ones.
    max_pending_sessions: int = 8
    #: WHEP viewer sessions at once; the rest of ``max_sessions`` stays for WHIP publishers.
    max_viewer_sessions: int = 12
    #: Open streams (WHIP, WebSocket, HTTP frames in progress) at once; more get 429.
    max_streams: int = 64
    #: Open streams of one client (address or /64, and token subject).
    max_streams_per_client: int = 16
    #: At ``max_streams``, a WebSocket stream that has sent no frame for this long is closed (4408) to
    #: make room for a client that holds fewer streams than its owner; control messages do not count.
    stream_evict_idle_s: float = 2.0
    #: IPv6 clients are counted per network of this many leading bits (64: one customer's LAN).
    client_ipv6_prefix: int = 64
    #: Largest SDP offer accepted, in bytes (real offers are 2-10 KB).
    max_sdp_bytes: int = 64 * 1024
    #: Largest JSON body (parameters, jobs) or WebSocket text message, in bytes (UTF-8).
    max_json_bytes: int = 64 * 1024
    #: Deepest nesting of arrays and objects in a JSON body or WebSocket text message (ours need 3).
    max_json_depth: int = 32
    #: Largest image body for /api/v1/frames and WebSocket message for /ws, in bytes.
    max_image_bytes: int = 8 * 1024 * 1024
    #: Largest image accepted, in pixels (width * height), checked before decoding.
    max_image_pixels: int = 3840 * 2160
    #: A WebSocket that sends no frame for this long is closed (code 4408), whatever text it sends.
    ws_idle_s: float = 30.0
    #: Staleness budget for live streams (ms): frames older than this are skipped, not computed.
    max_latency_ms: float = 500.0
    #: Frames at the workers at once per live stream; 0 = the thread's ``concurrency``. More than the
    #: workers can run at once only makes each frame wait behind another (measured: 80 ms thread,
    #: window 2 -> ~190 ms round trip, window 1 -> ~120 ms); raise it for many remote workers.
    max_in_flight: int = 0
    #: How long one HTTP frame may take before 504.
    frame_timeout_s: float = 10.0
    #: A request's line and headers must arrive within this many seconds of the connection opening (or
    #: of the previous response); slower ones are closed (408), so slow-header clients hold no sockets.
    header_timeout_s: float = 10.0
    #: A request body must arrive within this many seconds, plus one second per ``min_body_rate`` bytes
    #: received; slower ones are closed (408).
    body_timeout_s: float = 30.0
    #: The body rate (bytes/s) that earns a slow upload more time past ``body_timeout_s``.
    min_body_rate: int = 8192

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
    ice_servers: list[dict[str, Any]] = Field(default_factory=list)
    #: TURN server URLs handed to clients with fresh credentials per session (TURN REST API, coturn
    #: ``use-auth-secret``): ``turn:turn.example.com:3478?transport=udp``, ``turns:...:5349``.
    turn_urls: list[str] = Field(default_factory=list)
    #: The secret shared with the TURN server (coturn ``static-auth-secret``); needed with ``turn_urls``.
    turn_secret: str = Field(default="", repr=False)
    #: How long handed-out TURN credentials are good for an allocation, in seconds.
    turn_ttl_s: float = 600.0
    #: A WebRTC session whose peer sends nothing (no media, no RTCP, no ICE consent check) for this long
    #: is closed. RFC 3550 lets a receiver report every 2.5-7.5 s (5 s on average; webrtcbin does), so
    #: 20 s outlasts a lost report or two and stays under the 30 s of ICE consent expiry (RFC 7675).
    session_idle_s: float = 20.0
    #: A new WebRTC session that has not connected (ICE + DTLS) this long after the answer is closed,
    #: whatever it sends meanwhile (ICE checks alone never keep an unconnected session).
    connect_timeout_s: float = 10.0
    #: RTP timestamps of the processed video sent back to a WHIP publisher: "send" (when each frame is
    #: sent; smallest browser jitter buffer) or "input" (the publisher's own frame timestamps).
    return_timestamps: str = "send"
    #: Pass a WHIP publisher's Opus audio, untouched, back to it and to WHEP viewers (off: dropped).
    audio: bool = True
    #: The most audio is held to stay in step with slow video (ms); the hold follows the video's delay.
    audio_max_delay_ms: float = 1000.0
    #: Video encoder speed: "fast" (VP8 cpu-used -10 without the temporal denoiser, x264 veryfast),
    #: "fastest" (-16, ultrafast: VP8 visibly worse) or "stock" (aiortc's -6, denoiser and medium). Encoding
    #: is most of what a stream costs. VP8 is libvpx driven directly at every speed (``webrtc/vp8.py``:
    #: bitrate changes without keyframes).
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

    def __init__(self, **values: Any) -> None:
        """Keyword values, else ``OOBLEX_<NAME>`` variables, else defaults; a bad one is a ``ValueError``
        that names the keyword or the variable it came from."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ValueError(explain(exc, values)) from None

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Defaults, then ``OOBLEX_<FIELD>`` environment variables, then ``overrides`` (None: not given).
        Warns once about each ``OOBLEX_*`` variable that nothing reads, naming the closest setting."""
        for name, guess in unknown_variables(os.environ):
            if name not in _warned:
                _warned.add(name)
                hint = f"; did you mean {guess}?" if guess else ""
                log.warning("%s is not an Ooblex setting and is ignored%s (settings: docs/settings.md)", name, hint)
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    @field_validator("*", mode="before")
    @classmethod
    def _split_lists(cls, value: Any, info: ValidationInfo) -> Any:
        """Lists are comma-separated in the environment (``OOBLEX_ALLOWED_HOSTS=a.example,b.example``)."""
        if isinstance(value, str) and cls.model_fields[info.field_name].annotation == list[str]:
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("ice_servers", mode="before")
    @classmethod
    def _ice_servers(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"is not JSON: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(s, dict) and "urls" in s for s in value):
            raise ValueError('must be a JSON list like [{"urls": "stun:host:3478"}]')
        return value

    @field_validator("*")
    @classmethod
    def _not_negative(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
            raise ValueError(f"must be >= 0, got {value!r}")
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        """Checks of several fields, or with messages the tests and docs quote."""
        if not self.token_keys_refresh_s > 0:
            raise ValueError(f"token_keys_refresh_s must be > 0, got {self.token_keys_refresh_s!r}")
        if self.turn_urls and not self.turn_secret:
            raise ValueError("turn_urls need turn_secret (OOBLEX_TURN_SECRET), the TURN server's static-auth-secret")
        if self.encoder_speed not in SPEEDS:
            raise ValueError(f"encoder_speed must be one of {sorted(SPEEDS)}, got {self.encoder_speed!r}")
        if not 0 <= self.client_ipv6_prefix <= 128:
            raise ValueError(f"client_ipv6_prefix must be in [0, 128], got {self.client_ipv6_prefix!r}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale!r}")
        if self.return_timestamps not in ("send", "input"):
            raise ValueError(f"return_timestamps must be 'send' or 'input', got {self.return_timestamps!r}")
        return self

    def effective(self) -> dict[str, Any]:
        """Every setting's value, secrets (the fields with ``repr=False``) masked: whether one is set shows,
        never its value (``ooblex config``)."""
        return {name: getattr(self, name) if field.repr else "***" if getattr(self, name) else ""
                for name, field in type(self).model_fields.items()}


def variable(name: str) -> str:
    """The environment variable of the setting ``name``."""
    return PREFIX + name.upper()


def explain(exc: ValidationError, given: dict[str, Any]) -> str:
    """pydantic's errors as one line each, naming the keyword given or else the variable read."""
    lines = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else ""
        where = name if name in given or variable(name) not in os.environ else variable(name)
        if err["type"] == "value_error":  # our own checks: a field's says what is wrong with it
            lines.append(f"{where} {err['ctx']['error']}" if name else str(err["ctx"]["error"]))
        elif name in Settings.model_fields:
            kind = Settings.model_fields[name].annotation
            lines.append(f"{where} expects {getattr(kind, '__name__', kind)}, got {err['input']!r} ({err['msg']})")
        else:
            lines.append(f"{where or 'settings'}: {err['msg']}")
    return "; ".join(lines)


def unknown_variables(environ: dict[str, str] | os._Environ[str]) -> list[tuple[str, str | None]]:
    """``OOBLEX_*`` variables in ``environ`` that nothing reads, each with the closest known name (or None)."""
    known = {variable(n) for n in Settings.model_fields} | set(OTHER_VARIABLES)
    out = []
    for name in sorted(environ):
        if name.upper().startswith(PREFIX) and name.upper() not in known:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.6)
            out.append((name, close[0] if close else None))
    return out

