"""Synthetic media for tests: numbered frames and small video files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def numbered_frame(n: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A frame whose pixels encode ``n`` (first row) and vary spatially (so codecs have work to do)."""
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    img[..., 1] = (n * 7) % 256
    img[..., 2] = n % 256
    return img


def write_video(path: Path, frames: int, width: int = 160, height: int = 120, fps: int = 30) -> Path:
    """Encode ``frames`` numbered frames into ``path`` with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "2"}
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(numbered_frame(i, width, height), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_picture(width: int = 640, height: int = 480) -> Callable[[], np.ndarray]:
    """A textured picture that changes every frame (encoders need something to encode)."""
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    i = 0

    def next_image() -> np.ndarray:
        nonlocal i
        i += 1
        return np.roll(base, i * 4, axis=1)
    return next_image


async def sdp_offer(direction: str = "sendrecv", codec: str = "vp8") -> str:
    """A real aiortc SDP offer (all candidates gathered) for a video transceiver; the peer is closed after."""
    from aiortc import RTCPeerConnection, RTCRtpSender

    from ooblex.webrtc import rtc_configuration

    pc = RTCPeerConnection(rtc_configuration())
    tr = pc.addTransceiver("video", direction=direction)
    tr.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                            if c.mimeType.lower() in (f"video/{codec}", "video/rtx")])
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


def packet_track(payloads: list[bytes], clock: object = None) -> object:
    """An audio track that sends ``payloads`` (Opus, 20 ms each) as they are, in real time."""
    import fractions

    import av

    from ooblex.webrtc.audio import PacedAudioTrack

    it = iter(enumerate(payloads))

    async def next_chunk() -> av.Packet | None:
        item = next(it, None)
        if item is None:
            return None
        packet = av.Packet(item[1])
        packet.pts, packet.time_base = item[0] * 960, fractions.Fraction(1, 48000)
        return packet
    return PacedAudioTrack(next_chunk, clock)  # type: ignore[arg-type]
