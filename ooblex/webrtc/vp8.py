"""VP8 through libvpx itself (``ctypes``), so the bitrate can follow the network without keyframes.

aiortc encodes VP8 through FFmpeg's libvpx wrapper, which cannot change the bitrate of an open
encoder: to follow REMB, aiortc throws the encoder away and opens a new one whenever the target
moves by more than 10 %, so every bitrate change is a keyframe, a burst that a capped link partly
drops (more loss, more freezes, more keyframe requests). Nothing caps a keyframe's size either.

``LibvpxVp8Encoder`` is aiortc's ``Vp8Encoder`` (same RTP packetization and picture ids, same CBR
settings, keyframes on request, re-opened on a resolution change) with libvpx driven directly, as
libwebrtc does: a new target bitrate is applied to the running encoder (``vpx_codec_enc_config_set``),
and keyframes are capped at ``max_intra_pct`` of a frame's share of the bitrate
(``VP8E_SET_MAX_INTRA_BITRATE_PCT``). It loads Debian's ``libvpx.so.7`` (libvpx 1.12, package
``libvpx7``) at run time: no compiler and no headers needed, so the structures below mirror libvpx
1.12's headers (``tests/test_vp8.py`` checks them against libvpx's own defaults). ``libvpx()`` is
None when the library is missing or older than 1.12's ABI (libvpx refuses callers newer than
itself); ``encoders.encoder_for`` then falls back to FFmpeg's wrapper.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import multiprocessing
from ctypes import POINTER, byref, c_char, c_int, c_int64, c_long, c_size_t, c_uint, c_uint32, c_ulong, c_void_p
from typing import Any

from aiortc.codecs.vpx import MAX_FRAME_RATE, Vp8Encoder, number_of_threads
from aiortc.mediastreams import VIDEO_CLOCK_RATE, VIDEO_TIME_BASE, convert_timebase
from av import VideoFrame
from av.frame import Frame

log = logging.getLogger("ooblex.webrtc")

LIBRARY = "libvpx.so.7"
#: VPX_ENCODER_ABI_VERSION of libvpx 1.12: 15 + codec (4 + image 5) + external rate control 1.
ENCODER_ABI_VERSION = 25
VPX_CODEC_OK = 0
VPX_CBR = 1
VPX_KF_AUTO = 1
VPX_IMG_FMT_I420 = 0x102
VPX_CODEC_CX_FRAME_PKT = 0
VPX_EFLAG_FORCE_KF = 1
VPX_FRAME_IS_KEY = 1
VPX_DL_REALTIME = 1
VP8E_SET_CPUUSED = 13
VP8E_SET_NOISE_SENSITIVITY = 15
VP8E_SET_STATIC_THRESHOLD = 17
VP8E_SET_TOKEN_PARTITIONS = 18
VP8E_SET_MAX_INTRA_BITRATE_PCT = 26
#: ``VP8E_SET_NOISE_SENSITIVITY`` values: no temporal denoiser, and libvpx's adaptive one (aiortc's, and
#: libwebrtc's on x86 for camera input).
DENOISE_OFF, DENOISE_ADAPTIVE = 0, 4

#: Rate-control buffer, ms of the target bitrate: size as aiortc's, initial and optimal as
#: libwebrtc's (and aiortc's own libvpx binding before it moved to PyAV).
BUFFER_MS, BUFFER_INITIAL_MS, BUFFER_OPTIMAL_MS = 1000, 500, 600


def max_intra_pct(optimal_buffer_ms: int = BUFFER_OPTIMAL_MS, fps: int = MAX_FRAME_RATE) -> int:
    """libwebrtc's keyframe cap, in per cent of one frame's share of the bitrate: half the optimal
    buffer, never under 3 frames' worth (900 % at 600 ms and 30 fps)."""
    return max(300, int(0.5 * optimal_buffer_ms * fps / 10))


class Rational(ctypes.Structure):
    _fields_ = [("num", c_int), ("den", c_int)]


class FixedBuf(ctypes.Structure):
    _fields_ = [("buf", c_void_p), ("sz", c_size_t)]


class EncoderConfig(ctypes.Structure):
    """``vpx_codec_enc_cfg_t`` of libvpx 1.12 (504 bytes on x86-64), every field in header order."""

    _fields_ = [
        ("g_usage", c_uint), ("g_threads", c_uint), ("g_profile", c_uint), ("g_w", c_uint), ("g_h", c_uint),
        ("g_bit_depth", c_int), ("g_input_bit_depth", c_uint), ("g_timebase", Rational),
        ("g_error_resilient", c_uint32), ("g_pass", c_int), ("g_lag_in_frames", c_uint),
        ("rc_dropframe_thresh", c_uint), ("rc_resize_allowed", c_uint), ("rc_scaled_width", c_uint),
        ("rc_scaled_height", c_uint), ("rc_resize_up_thresh", c_uint), ("rc_resize_down_thresh", c_uint),
        ("rc_end_usage", c_int), ("rc_twopass_stats_in", FixedBuf), ("rc_firstpass_mb_stats_in", FixedBuf),
        ("rc_target_bitrate", c_uint), ("rc_min_quantizer", c_uint), ("rc_max_quantizer", c_uint),
        ("rc_undershoot_pct", c_uint), ("rc_overshoot_pct", c_uint),
        ("rc_buf_sz", c_uint), ("rc_buf_initial_sz", c_uint), ("rc_buf_optimal_sz", c_uint),
        ("rc_2pass_vbr_bias_pct", c_uint), ("rc_2pass_vbr_minsection_pct", c_uint),
        ("rc_2pass_vbr_maxsection_pct", c_uint), ("rc_2pass_vbr_corpus_complexity", c_uint),
        ("kf_mode", c_int), ("kf_min_dist", c_uint), ("kf_max_dist", c_uint),
        ("ss_number_layers", c_uint), ("ss_enable_auto_alt_ref", c_int * 5), ("ss_target_bitrate", c_uint * 5),
        ("ts_number_layers", c_uint), ("ts_target_bitrate", c_uint * 5), ("ts_rate_decimator", c_uint * 5),
        ("ts_periodicity", c_uint), ("ts_layer_id", c_uint * 16), ("layer_target_bitrate", c_uint * 12),
        ("temporal_layering_mode", c_int), ("use_vizier_rc_params", c_int),
        *((name, Rational) for name in (
            "active_wq_factor", "err_per_mb_factor", "sr_default_decay_limit", "sr_diff_factor",
            "kf_err_per_mb_factor", "kf_frame_min_boost_factor", "kf_frame_max_boost_first_factor",
            "kf_frame_max_boost_subs_factor", "kf_max_total_boost_factor", "gf_max_total_boost_factor",
            "gf_frame_max_boost_factor", "zm_factor", "rd_mult_inter_qp_fac", "rd_mult_arf_qp_fac",
            "rd_mult_key_qp_fac")),
    ]


class Image(ctypes.Structure):
    """``vpx_image_t``: wrapped around a PyAV frame's planes (no copy)."""

    _fields_ = [
        ("fmt", c_int), ("cs", c_int), ("range", c_int), ("w", c_uint), ("h", c_uint), ("bit_depth", c_uint),
        ("d_w", c_uint), ("d_h", c_uint), ("r_w", c_uint), ("r_h", c_uint),
        ("x_chroma_shift", c_uint), ("y_chroma_shift", c_uint),
        ("planes", c_void_p * 4), ("stride", c_int * 4), ("bps", c_int), ("user_priv", c_void_p),
        ("img_data", c_void_p), ("img_data_owner", c_int), ("self_allocd", c_int), ("fb_priv", c_void_p),
    ]


class FramePacket(ctypes.Structure):
    _fields_ = [("buf", c_void_p), ("sz", c_size_t), ("pts", c_int64), ("duration", c_ulong),
                ("flags", c_uint32), ("partition_id", c_int)]


class PacketData(ctypes.Union):
    _fields_ = [("frame", FramePacket), ("pad", c_char * 128)]


class CxPacket(ctypes.Structure):
    """``vpx_codec_cx_pkt_t``: only frame packets are read."""

    _fields_ = [("kind", c_int), ("data", PacketData)]


class Context(ctypes.Structure):
    """``vpx_codec_ctx_t``, opaque here (56 bytes, pointer-aligned)."""

    _fields_ = [("opaque", c_void_p * 7)]


_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    "vpx_codec_vp8_cx": (c_void_p, []),
    "vpx_codec_enc_config_default": (c_int, [c_void_p, POINTER(EncoderConfig), c_uint]),
    "vpx_codec_enc_init_ver": (c_int, [POINTER(Context), c_void_p, POINTER(EncoderConfig), c_long, c_int]),
    "vpx_codec_enc_config_set": (c_int, [POINTER(Context), POINTER(EncoderConfig)]),
    "vpx_codec_control_": (c_int, [POINTER(Context), c_int, c_int]),  # variadic: each control takes one int
    "vpx_codec_encode": (c_int, [POINTER(Context), POINTER(Image), c_int64, c_ulong, c_long, c_ulong]),
    "vpx_codec_get_cx_data": (POINTER(CxPacket), [POINTER(Context), POINTER(c_void_p)]),
    "vpx_img_wrap": (POINTER(Image), [POINTER(Image), c_int, c_uint, c_uint, c_uint, c_void_p]),
    "vpx_codec_destroy": (c_int, [POINTER(Context)]),
    "vpx_codec_err_to_string": (ctypes.c_char_p, [c_int]),
    "vpx_codec_error_detail": (ctypes.c_char_p, [POINTER(Context)]),
}


@functools.cache
def libvpx() -> ctypes.CDLL | None:
    """libvpx with its signatures declared, once it has opened a VP8 encoder of this ABI; else None."""
    try:
        lib = ctypes.CDLL(LIBRARY)
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(lib, name)
            function.restype, function.argtypes = restype, argtypes
    except (OSError, AttributeError) as exc:
        log.debug("libvpx not usable: %s", exc)
        return None
    cfg, ctx = EncoderConfig(), Context()
    iface = lib.vpx_codec_vp8_cx()
    if lib.vpx_codec_enc_config_default(iface, byref(cfg), 0) != VPX_CODEC_OK:
        return None
    cfg.g_w, cfg.g_h = 64, 64
    status = lib.vpx_codec_enc_init_ver(byref(ctx), iface, byref(cfg), 0, ENCODER_ABI_VERSION)
    if status != VPX_CODEC_OK:
        log.debug("libvpx refused encoder ABI %d: %s", ENCODER_ABI_VERSION, lib.vpx_codec_err_to_string(status))
        return None
    lib.vpx_codec_destroy(byref(ctx))
    return lib


class LibvpxVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder whose bitrate changes in place and whose keyframes are capped.

    ``target_bitrate`` (set by aiortc's ``RTCRtpSender`` from REMB, on the event loop) is applied
    at the next ``encode`` (in an executor thread), so libvpx is only ever called from one thread
    at a time.
    """

    def __init__(self, cpu_used: int = -6, intra_pct: int | None = None, lib: ctypes.CDLL | None = None,
                 denoise: int = DENOISE_ADAPTIVE) -> None:
        """``cpu_used``: libvpx's real-time speed (-16 fastest); ``intra_pct``: the keyframe cap in per
        cent of a frame's share of the bitrate (None: libwebrtc's, ``max_intra_pct()``; 0: no cap);
        ``denoise``: libvpx's temporal denoiser (``VP8E_SET_NOISE_SENSITIVITY``: 0 off, 4 adaptive, aiortc's)."""
        super().__init__()
        lib = lib or libvpx()
        if lib is None:
            raise RuntimeError(f"{LIBRARY} (libvpx 1.12, Debian package libvpx7) cannot be loaded")
        self.lib = lib
        self.cpu_used = cpu_used
        self.denoise = denoise
        self.intra_pct = max_intra_pct() if intra_pct is None else intra_pct
        self.cfg: EncoderConfig | None = None
        self.ctx = Context()
        self.image = Image()
        self.last_pts = -1

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        assert isinstance(frame, VideoFrame)
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        if self.cfg is not None and (frame.width, frame.height) != (self.cfg.g_w, self.cfg.g_h):
            self.close()
        if self.cfg is None:
            self._open(frame.width, frame.height)
        else:
            self._follow_bitrate()
        for i, plane in enumerate(frame.planes[:3]):
            self.image.planes[i], self.image.stride[i] = plane.buffer_ptr, plane.line_size
        timestamp = convert_timebase(frame.pts, frame.time_base, VIDEO_TIME_BASE)
        self.last_pts = pts = max(timestamp, self.last_pts + 1)  # libvpx needs rising timestamps
        flags = VPX_EFLAG_FORCE_KF if force_keyframe else 0
        duration = VIDEO_CLOCK_RATE // MAX_FRAME_RATE
        self._check(self.lib.vpx_codec_encode(byref(self.ctx), byref(self.image), pts, duration, flags,
                                              VPX_DL_REALTIME))
        payloads = self._packetize(self._output(), self.picture_id)
        self.picture_id = (self.picture_id + 1) % (1 << 15)
        return payloads, timestamp

    def _open(self, width: int, height: int) -> None:
        lib, cfg = self.lib, EncoderConfig()
        iface = lib.vpx_codec_vp8_cx()
        self._check(lib.vpx_codec_enc_config_default(iface, byref(cfg), 0))
        cfg.g_w, cfg.g_h = width, height
        cfg.g_timebase = Rational(1, VIDEO_CLOCK_RATE)
        cfg.g_threads = number_of_threads(width * height, multiprocessing.cpu_count())
        cfg.g_lag_in_frames = 0
        cfg.rc_resize_allowed = 0
        cfg.rc_dropframe_thresh = 0
        cfg.rc_end_usage = VPX_CBR
        cfg.rc_target_bitrate = self.target_bitrate // 1000
        cfg.rc_min_quantizer, cfg.rc_max_quantizer = 2, 56
        cfg.rc_undershoot_pct, cfg.rc_overshoot_pct = 100, 15
        cfg.rc_buf_sz, cfg.rc_buf_initial_sz, cfg.rc_buf_optimal_sz = BUFFER_MS, BUFFER_INITIAL_MS, BUFFER_OPTIMAL_MS
        cfg.kf_mode, cfg.kf_max_dist = VPX_KF_AUTO, 3000
        self._check(lib.vpx_codec_enc_init_ver(byref(self.ctx), iface, byref(cfg), 0, ENCODER_ABI_VERSION))
        self.cfg = cfg
        for control, value in ((VP8E_SET_CPUUSED, self.cpu_used), (VP8E_SET_NOISE_SENSITIVITY, self.denoise),
                               (VP8E_SET_STATIC_THRESHOLD, 1), (VP8E_SET_TOKEN_PARTITIONS, 0),
                               (VP8E_SET_MAX_INTRA_BITRATE_PCT, self.intra_pct)):
            self._check(lib.vpx_codec_control_(byref(self.ctx), control, value))
        # the planes are pointed at each frame's own before each encode
        if not lib.vpx_img_wrap(byref(self.image), VPX_IMG_FMT_I420, width, height, 1, c_void_p(1)):
            raise RuntimeError(f"libvpx cannot wrap a {width}x{height} I420 image")

    def _follow_bitrate(self) -> None:
        """Apply a new ``target_bitrate`` to the running encoder: no keyframe, the next frame is sized to it."""
        assert self.cfg is not None
        kbps = self.target_bitrate // 1000
        if kbps != self.cfg.rc_target_bitrate:
            self.cfg.rc_target_bitrate = kbps
            self._check(self.lib.vpx_codec_enc_config_set(byref(self.ctx), byref(self.cfg)))

    def _output(self) -> bytes:
        data, it = b"", c_void_p()
        while packet := self.lib.vpx_codec_get_cx_data(byref(self.ctx), byref(it)):
            if packet.contents.kind == VPX_CODEC_CX_FRAME_PKT:
                frame = packet.contents.data.frame
                data += ctypes.string_at(frame.buf, frame.sz)
        return data

    def _check(self, status: int) -> None:
        if status != VPX_CODEC_OK:
            detail = self.lib.vpx_codec_error_detail(byref(self.ctx)) if self.cfg is not None else None
            reason = self.lib.vpx_codec_err_to_string(status).decode()
            raise RuntimeError(f"libvpx: {reason}" + (f" ({detail.decode()})" if detail else ""))

    def close(self) -> None:
        """Free libvpx's encoder (a later ``encode`` opens a new one)."""
        if self.cfg is not None:
            self.lib.vpx_codec_destroy(byref(self.ctx))
            self.cfg = None

    def __del__(self) -> None:
        if getattr(self, "cfg", None) is not None:
            self.close()
