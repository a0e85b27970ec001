"""Real-time speed for the video encoders, and VP8 whose bitrate follows the network without keyframes.

The gateway encodes every stream it sends, so encoder CPU is most of what a stream costs
(``benchmarks/capacity.py``). aiortc encodes VP8 with libvpx ``cpu-used -6`` and H.264 with libx264's
default preset (``medium``, tuned ``zerolatency``): settings meant for quality at leisure, not for
dozens of live streams on one machine. ``realtime_encoders(pc, speed)`` gives each video sender of
``pc`` an encoder whose speed setting comes from ``SPEEDS`` (the answer must be set: the negotiated
codec decides).

VP8 is encoded by ``vp8.LibvpxVp8Encoder`` at every speed, "stock" included: aiortc's encoder turns
each bitrate change from REMB into a keyframe (``ooblex/webrtc/vp8.py``), which is a defect on a
constrained link rather than a speed trade-off. Packetization, CBR settings and keyframes on request
stay aiortc's. Without libvpx 1.12 (``libvpx.so.7``) VP8 falls back to FFmpeg's wrapper, with one
warning.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder

from . import internals
from .vp8 import DENOISE_ADAPTIVE, DENOISE_OFF, LIBRARY, LibvpxVp8Encoder, libvpx

log = logging.getLogger("ooblex.webrtc")

#: speed -> (VP8 ``cpu-used`` in real-time mode, -16 fastest; libx264 ``preset``; VP8 temporal denoiser,
#: ``VP8E_SET_NOISE_SENSITIVITY``). "stock" is aiortc's own settings (for H.264 aiortc's own encoder).
#: Measured at 640x480 (``benchmarks/capacity.py``): VP8 -10 costs ~15 % less than -6 for 0.4 dB PSNR,
#: -16 ~30 % less but 8 dB worse; x264 veryfast/ultrafast ~2x/5x faster than medium at the same PSNR.
#: The denoiser is off at "fast" and "fastest": it is for camera sensor noise, and what the gateway
#: encodes was already encoded (denoised) by the publisher and decoded, or drawn by a model. Off, the
#: encoder alone costs ~35 % less CPU per frame on a clean photo at the same bitrate (PSNR against the
#: source ~1 dB higher: the denoiser smooths real detail too), ~7 % inside a running gateway.
SPEEDS: dict[str, tuple[str, str | None, int]] = {
    "stock": ("-6", None, DENOISE_ADAPTIVE),
    "fast": ("-10", "veryfast", DENOISE_OFF),
    "fastest": ("-16", "ultrafast", DENOISE_OFF),
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
    """aiortc's VP8 encoder (FFmpeg's libvpx wrapper) at another speed: the fallback without libvpx.so.7."""

    def __init__(self, cpu_used: str, denoise: int = DENOISE_ADAPTIVE) -> None:
        self.overrides = {"cpu-used": cpu_used, "noise-sensitivity": str(denoise)}
        super().__init__()


class RealtimeH264Encoder(_Options, H264Encoder):
    def __init__(self, preset: str) -> None:
        self.overrides = {"preset": preset}
        super().__init__()


def encoder_for(mime_type: str, speed: str) -> Any:
    """An encoder for ``mime_type`` ("video/VP8", "video/H264") at ``speed``; None: aiortc's own."""
    if speed not in SPEEDS:
        raise ValueError(f"encoder speed must be one of {sorted(SPEEDS)}, got {speed!r}")
    cpu_used, preset, denoise = SPEEDS[speed]
    kind = mime_type.lower()
    if kind == "video/vp8":
        if libvpx() is not None:
            return LibvpxVp8Encoder(int(cpu_used), denoise=denoise)
        _warn_no_libvpx()
        return RealtimeVp8Encoder(cpu_used, denoise)
    if kind == "video/h264" and preset is not None:
        return RealtimeH264Encoder(preset)
    return None


@functools.cache
def _warn_no_libvpx() -> None:
    log.warning("%s (libvpx 1.12, Debian package libvpx7) cannot be loaded: VP8 goes through FFmpeg's wrapper, "
                "whose every bitrate change is a keyframe", LIBRARY)


def realtime_encoders(pc: RTCPeerConnection, speed: str) -> int:
    """Give each video sender of ``pc`` an encoder at ``speed``; returns how many. Call once the local
    description (the answer) is set and before media flows."""
    changed = 0
    for transceiver in pc.getTransceivers():
        sender = transceiver.sender
        codecs = getattr(transceiver, "_codecs", None)
        if transceiver.kind != "video" or sender is None or not codecs:
            continue
        if internals.encoder(sender, internals.ABSENT) is not None:
            log.debug("video sender already has an encoder (or aiortc internals changed): left as it is")
            continue
        encoder = encoder_for(codecs[0].mimeType, speed)
        if encoder is not None:
            internals.set_encoder(sender, encoder)
            changed += 1
    return changed
