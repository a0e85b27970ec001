"""Real-time speed for aiortc's video encoders: the gateway encodes every stream it sends, so encoder
CPU is most of what a stream costs (``benchmarks/capacity.py``).

aiortc encodes VP8 with libvpx ``cpu-used -6`` and H.264 with libx264's default preset (``medium``,
tuned ``zerolatency``): settings meant for quality at leisure, not for dozens of live streams on one
machine. ``realtime_encoders(pc, speed)`` gives each video sender of ``pc`` an encoder whose speed
setting comes from ``SPEEDS`` (the answer must be set: the negotiated codec decides). Everything
else (bitrate control, packetization, keyframes on request) stays aiortc's.
"""

from __future__ import annotations

import logging
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

log = logging.getLogger("ooblex.webrtc")

#: speed -> (VP8 ``cpu-used`` in real-time mode, -16 fastest; libx264 ``preset``). "stock" is aiortc's own.
#: Measured at 640x480 (``benchmarks/capacity.py``): VP8 -10 costs ~15 % less than -6 for 0.4 dB PSNR,
#: -16 ~30 % less but 8 dB worse; x264 veryfast/ultrafast ~2x/5x faster than medium at the same PSNR.
SPEEDS: dict[str, tuple[str, str] | None] = {
    "stock": None,
    "fast": ("-10", "veryfast"),
    "fastest": ("-16", "ultrafast"),
}


class _Options:
    """Mixin: merge ``overrides`` into the codec context's options until it opens (aiortc creates the
    context and sets its options inside ``encode``, then encodes, which opens it: every access to
    ``self.codec`` in between passes through here, the last one right before it opens)."""

    overrides: dict[str, str] = {}

    @property
    def codec(self) -> Any:
        codec = self.__dict__.get("_codec")
        if codec is not None and not codec.is_open:
            missing = {k: v for k, v in self.overrides.items() if codec.options.get(k) != v}
            if missing:
                codec.options = {**codec.options, **missing}
        return codec

    @codec.setter
    def codec(self, value: Any) -> None:
        self.__dict__["_codec"] = value


class RealtimeVp8Encoder(_Options, Vp8Encoder):
    def __init__(self, cpu_used: str) -> None:
        self.overrides = {"cpu-used": cpu_used}
        super().__init__()


class RealtimeH264Encoder(_Options, H264Encoder):
    def __init__(self, preset: str) -> None:
        self.overrides = {"preset": preset}
        super().__init__()


def encoder_for(mime_type: str, speed: str) -> Any:
    """An encoder for ``mime_type`` ("video/VP8", "video/H264") at ``speed``; None: aiortc's own."""
    if speed not in SPEEDS:
        raise ValueError(f"encoder speed must be one of {sorted(SPEEDS)}, got {speed!r}")
    setting = SPEEDS[speed]
    if setting is None:
        return None
    kind = mime_type.lower()
    if kind == "video/vp8":
        return RealtimeVp8Encoder(setting[0])
    if kind == "video/h264":
        return RealtimeH264Encoder(setting[1])
    return None


def realtime_encoders(pc: RTCPeerConnection, speed: str) -> int:
    """Give each video sender of ``pc`` an encoder at ``speed``; returns how many. Call once the local
    description (the answer) is set and before media flows."""
    changed = 0
    for transceiver in pc.getTransceivers():
        sender = transceiver.sender
        codecs = getattr(transceiver, "_codecs", None)
        if transceiver.kind != "video" or sender is None or not codecs:
            continue
        if getattr(sender, "_RTCRtpSender__encoder", "absent") is not None:
            log.debug("video sender already has an encoder (or aiortc internals changed): left as it is")
            continue
        encoder = encoder_for(codecs[0].mimeType, speed)
        if encoder is not None:
            sender._RTCRtpSender__encoder = encoder  # type: ignore[attr-defined]
            changed += 1
    return changed
