"""``LibvpxVp8Encoder``: libvpx 1.12 through ctypes, checked against libvpx itself and decoded by aiortc."""

from __future__ import annotations

import ctypes
import fractions
import logging
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame

from ooblex.webrtc import encoders
from ooblex.webrtc.recovery import starts_keyframe
from ooblex.webrtc.vp8 import (
    ENCODER_ABI_VERSION,
    Context,
    EncoderConfig,
    Image,
    LibvpxVp8Encoder,
    libvpx,
    max_intra_pct,
)

pytestmark = pytest.mark.skipif(libvpx() is None, reason="libvpx.so.7 (Debian libvpx7) is not installed")
FPS = 30


def clip(width: int = 640, height: int = 480) -> Iterator[av.VideoFrame]:
    """A photo panning 3 px a frame, 30 fps timestamps (something a camera could send)."""
    import cv2

    photo = cv2.imread(str(Path(__file__).parent / "data" / "one_face.jpg"))
    base = cv2.resize(photo, (width, height))[:, :, ::-1]
    i = 0
    while True:
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(np.roll(base, 3 * i, axis=1)), format="rgb24")
        vf.pts, vf.time_base = i * 3000, fractions.Fraction(1, 90000)
        yield vf
        i += 1


def test_structures_match_libvpx() -> None:
    """Field offsets are right if libvpx's own defaults land in the fields named for them, the last one
    included, and vpx_img_wrap fills the image fields where ours are."""
    lib = libvpx()
    cfg = EncoderConfig()
    assert lib.vpx_codec_enc_config_default(lib.vpx_codec_vp8_cx(), ctypes.byref(cfg), 0) == 0
    assert ctypes.sizeof(EncoderConfig) == 504
    assert (cfg.g_timebase.num, cfg.g_timebase.den, cfg.rc_target_bitrate) == (1, 30, 256)
    assert (cfg.rc_min_quantizer, cfg.rc_max_quantizer) == (4, 63)
    assert (cfg.rc_undershoot_pct, cfg.rc_overshoot_pct) == (100, 100)
    assert (cfg.rc_buf_sz, cfg.rc_buf_initial_sz, cfg.rc_buf_optimal_sz) == (6000, 4000, 5000)
    assert (cfg.kf_mode, cfg.kf_min_dist, cfg.kf_max_dist) == (1, 0, 128)
    assert (cfg.ss_number_layers, cfg.ts_number_layers) == (1, 1)
    assert (cfg.rd_mult_key_qp_fac.num, cfg.rd_mult_key_qp_fac.den) == (1, 1)
    cfg.g_w, cfg.g_h = 64, 48
    ctx = Context()
    # libvpx refuses callers of a newer ABI than its own (VPX_CODEC_ABI_MISMATCH), so an older libvpx.so.7
    # refuses this module (libvpx() is None) and this one's ABI is exactly ENCODER_ABI_VERSION
    abi_mismatch = 3
    assert lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), lib.vpx_codec_vp8_cx(), ctypes.byref(cfg), 0,
                                      ENCODER_ABI_VERSION + 1) == abi_mismatch
    assert lib.vpx_codec_enc_init_ver(ctypes.byref(ctx), lib.vpx_codec_vp8_cx(), ctypes.byref(cfg), 0,
                                      ENCODER_ABI_VERSION) == 0
    lib.vpx_codec_destroy(ctypes.byref(ctx))

    image, data = Image(), ctypes.create_string_buffer(64 * 48 * 3 // 2)
    assert lib.vpx_img_wrap(ctypes.byref(image), 0x102, 64, 48, 1, data)
    base = ctypes.addressof(data)
    assert (image.w, image.h, image.d_w, image.d_h) == (64, 48, 64, 48)
    assert (image.x_chroma_shift, image.y_chroma_shift) == (1, 1)
    assert list(image.planes[:3]) == [base, base + 64 * 48, base + 64 * 48 * 5 // 4]
    assert list(image.stride[:3]) == [64, 32, 32]


def test_frames_decode_with_aiortcs_decoder() -> None:
    enc, dec, frames = LibvpxVp8Encoder(), Vp8Decoder(), clip(320, 240)
    scores = []
    for i in range(20):
        vf = next(frames)
        payloads, timestamp = enc.encode(vf)
        assert timestamp == i * 3000
        assert starts_keyframe("VP8", payloads[0]) == (i == 0)
        [out] = dec.decode(JitterFrame(b"".join(vp8_depayload(p) for p in payloads), timestamp))
        mse = ((out.to_ndarray(format="rgb24").astype(float) - vf.to_ndarray(format="rgb24")) ** 2).mean()
        scores.append(10 * np.log10(255 ** 2 / mse))
    assert np.median(scores) > 28, scores


def test_bitrate_changes_in_place_without_keyframes() -> None:
    """1000 kbit/s for 4 s, then 300: the output follows within a couple of seconds, and no keyframe is
    sent for it (aiortc's encoder re-opens, a keyframe, on every change over 10 %)."""
    enc, frames = LibvpxVp8Encoder(), clip()
    enc.target_bitrate = 1_000_000
    sizes, keyframes = [], []
    for i in range(8 * FPS):
        if i == 4 * FPS:
            enc.target_bitrate = 300_000
        payloads, _ = enc.encode(next(frames))
        sizes.append(sum(len(p) for p in payloads))
        keyframes += [i] if starts_keyframe("VP8", payloads[0]) else []
    kbps = [sum(sizes[w * 2 * FPS:(w + 1) * 2 * FPS]) * 8 / 2 / 1000 for w in range(4)]
    assert keyframes == [0], keyframes
    assert 700 < kbps[1] < 1300, kbps
    assert 200 < kbps[3] < 400, kbps


def test_force_keyframe() -> None:
    enc, frames = LibvpxVp8Encoder(), clip(320, 240)
    kinds = [starts_keyframe("VP8", enc.encode(next(frames), force_keyframe=i == 5)[0][0]) for i in range(8)]
    assert kinds == [True, False, False, False, False, True, False, False]


def test_keyframes_are_capped_to_the_frame_budget() -> None:
    """libwebrtc's cap (900 % of a frame's share at 600 ms optimal buffer, 30 fps); a tighter one (300 %)
    keeps this picture's first keyframe under 3 frames' worth where uncapped it is over."""
    assert max_intra_pct() == 900 and max_intra_pct(100) == 300
    budget = 1_000_000 // 8 // FPS

    def first_keyframe(intra_pct: int) -> int:
        enc = LibvpxVp8Encoder(intra_pct=intra_pct)
        enc.target_bitrate = 1_000_000
        return sum(len(p) for p in enc.encode(next(clip()))[0])

    capped, uncapped = first_keyframe(300), first_keyframe(0)
    assert capped <= 3 * budget < uncapped, (capped, uncapped, budget)


def test_a_new_size_reopens_the_encoder() -> None:
    enc, dec = LibvpxVp8Encoder(), Vp8Decoder()
    for i, frames in enumerate((clip(320, 240), clip(160, 120))):
        payloads, timestamp = enc.encode(next(frames))
        assert starts_keyframe("VP8", payloads[0])
        [out] = dec.decode(JitterFrame(b"".join(vp8_depayload(p) for p in payloads), timestamp))
        assert (out.width, out.height) == ((320, 240), (160, 120))[i]


def test_without_libvpx_ffmpegs_wrapper_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(encoders, "libvpx", lambda: None)
    encoders._warn_no_libvpx.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ooblex.webrtc"):
        assert isinstance(encoders.encoder_for("video/VP8", "fast"), encoders.RealtimeVp8Encoder)
        assert isinstance(encoders.encoder_for("video/VP8", "stock"), encoders.RealtimeVp8Encoder)
    assert sum("libvpx.so.7" in r.getMessage() for r in caplog.records) == 1
    encoders._warn_no_libvpx.cache_clear()
