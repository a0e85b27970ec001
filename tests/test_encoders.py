"""``encoder_speed``: the gateway's video senders get encoders with a real-time speed setting that reaches
libvpx/libx264 (negotiated codec by codec); VP8 is libvpx driven directly at every speed, and "stock" leaves
aiortc's own H.264 encoder."""

from __future__ import annotations

import fractions
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpSender

from ooblex.webrtc.encoders import RealtimeH264Encoder, encoder_for, realtime_encoders
from ooblex.webrtc.vp8 import LibvpxVp8Encoder


async def answered(codec: str) -> RTCPeerConnection:
    """A gateway-side peer connection that answered an offer preferring ``codec`` (no network needed)."""
    client, server = RTCPeerConnection(), RTCPeerConnection()
    transceiver = client.addTransceiver("video", direction="sendrecv")
    transceiver.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                     if c.mimeType.lower() in (f"video/{codec}", "video/rtx")])
    await client.setLocalDescription(await client.createOffer())
    await server.setRemoteDescription(client.localDescription)
    from aiortc.mediastreams import VideoStreamTrack

    server.getTransceivers()[0].sender.replaceTrack(VideoStreamTrack())
    server.getTransceivers()[0].direction = "sendrecv"
    await server.setLocalDescription(await server.createAnswer())
    await client.close()
    return server


@pytest.mark.parametrize("codec,cls", [("vp8", LibvpxVp8Encoder), ("h264", RealtimeH264Encoder)])
async def test_each_negotiated_codec_gets_its_realtime_encoder(codec: str, cls: type) -> None:
    pc = await answered(codec)
    try:
        assert realtime_encoders(pc, "fast") == 1
        assert isinstance(pc.getTransceivers()[0].sender._RTCRtpSender__encoder, cls)
        assert realtime_encoders(pc, "fast") == 0, "an encoder in place is left alone"
    finally:
        await pc.close()
    stock_pc = await answered(codec)
    try:
        changed = realtime_encoders(stock_pc, "stock")
        encoder = stock_pc.getTransceivers()[0].sender._RTCRtpSender__encoder
        if codec == "vp8":  # libvpx at aiortc's own speed: its bitrate changes are no keyframes
            assert changed == 1 and isinstance(encoder, LibvpxVp8Encoder) and encoder.cpu_used == -6
        else:
            assert changed == 0 and encoder is None
    finally:
        await stock_pc.close()


def _psnr_through(speed: str) -> float:
    """Median PSNR of a textured clip through the VP8 encoder at ``speed``, its RTP payloads and back."""
    import cv2
    from aiortc.codecs.vpx import vp8_depayload

    photo = cv2.imread(str(Path(__file__).parent / "data" / "one_face.jpg"))
    base = cv2.resize(photo, (640, 480))[:, :, ::-1]
    enc = encoder_for("video/VP8", speed)
    dec, scores = av.CodecContext.create("libvpx", "r"), []
    for i in range(30):
        image = np.ascontiguousarray(np.roll(base, 3 * i, axis=1))
        vf = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        vf.pts, vf.time_base = i * 3000, fractions.Fraction(1, 90000)
        payloads, _ = enc.encode(vf)
        for out in dec.decode(av.Packet(b"".join(vp8_depayload(p) for p in payloads))):
            mse = float(((out.to_ndarray(format="rgb24").astype(float) - image) ** 2).mean())
            scores.append(10 * np.log10(255 ** 2 / mse))
    return float(np.median(scores))


def test_the_speed_reaches_libvpx() -> None:
    """cpu-used -16 encodes visibly worse than aiortc's -6: the option got to the codec it configures."""
    stock, fastest = _psnr_through("stock"), _psnr_through("fastest")
    assert stock - fastest > 2.0, (stock, fastest)


def test_unknown_speeds_are_refused() -> None:
    with pytest.raises(ValueError, match="encoder speed"):
        encoder_for("video/VP8", "ludicrous")
    from ooblex.gateway import Settings

    with pytest.raises(ValueError, match="encoder_speed"):
        Settings(encoder_speed="ludicrous")
