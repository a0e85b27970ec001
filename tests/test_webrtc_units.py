"""Pure logic of the WebRTC helpers: the marker-bit jitter buffer, frame numbers, offer checks."""

from __future__ import annotations

import asyncio
import contextvars

import numpy as np
import pytest
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from ooblex import jpeg
from ooblex.webrtc import SDPError, check_offer, framecode
from ooblex.webrtc.jitter import MarkerJitterBuffer

from .media import sdp_offer


def packets(frame_ts: int, first_seq: int, count: int) -> list[RtpPacket]:
    out = []
    for i in range(count):
        p = RtpPacket(payload_type=96, sequence_number=(first_seq + i) & 0xFFFF, timestamp=frame_ts,
                      marker=int(i == count - 1))
        p._data = bytes([first_seq + i & 0xFF])  # type: ignore[attr-defined]
        out.append(p)
    return out


def feed(buffer: JitterBuffer, pkts: list[RtpPacket]) -> list[tuple[int, bytes]]:
    """Frames released, with the index of the packet that released them."""
    released = []
    for i, p in enumerate(pkts):
        _, frame = buffer.add(p)
        if frame is not None:
            released.append((i, frame.data))
    return released


def test_marker_releases_frame_on_its_last_packet() -> None:
    pkts = packets(3000, 65533, 3) + packets(6000, 0, 2)  # also crosses the sequence wrap
    ours = feed(MarkerJitterBuffer(capacity=128, is_video=True), pkts)
    stock = feed(JitterBuffer(capacity=128, is_video=True), pkts)
    assert ours == [(2, bytes([253, 254, 255])), (4, bytes([0, 1]))]
    assert stock == [(3, bytes([253, 254, 255]))]  # one frame late, the last one still waiting


def test_marker_buffer_waits_for_a_missing_packet() -> None:
    pkts = packets(3000, 10, 4)
    buffer = MarkerJitterBuffer(capacity=128, is_video=True)
    assert feed(buffer, [pkts[0], pkts[1], pkts[3]]) == []  # packet 12 lost so far
    _, frame = buffer.add(pkts[2])  # retransmission arrives
    assert frame is not None and frame.data == bytes([10, 11, 12, 13])


def test_framecode_survives_jpeg_and_rejects_noise() -> None:
    rng = np.random.default_rng(3)
    for n in (0, 1, 1234, 65535):
        img = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        framecode.stamp(img, n)
        assert framecode.read(jpeg.decode(jpeg.encode(img, 40))) == n
    assert framecode.read(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) is None
    assert framecode.read(np.zeros((480, 640, 3), np.uint8)) is None  # all-black strip fails the check


@pytest.mark.parametrize("sdp,words", [
    ("", "not an SDP offer"),
    ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF abc\r\n", "malformed SDP"),
    ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n", "no video m-line"),
    ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\na=rtpmap:98 VP9/90000\r\n", "offered: VP9"),
    ("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n", "lacks ICE credentials"),
])
def test_check_offer_names_the_problem(sdp: str, words: str) -> None:
    with pytest.raises(SDPError, match=words.replace("(", r"\(")):
        check_offer(sdp)


def test_check_offer_size_limit() -> None:
    with pytest.raises(SDPError) as info:
        check_offer("v=0\r\n" + "a=x\r\n" * 100, max_bytes=100)
    assert info.value.status == 413


async def test_ingest_ends_when_reading_the_track_fails(caplog: pytest.LogCaptureFixture) -> None:
    """A track whose decoder raises (not MediaStreamError) ends the ingest, logged, instead of hanging it."""
    from aiortc import MediaStreamTrack

    from ooblex import Engine
    from ooblex.webrtc.tracks import Ingest

    class Broken(MediaStreamTrack):
        kind = "video"

        async def recv(self):  # type: ignore[override]
            raise RuntimeError("decoder fell over")

    async with Engine() as engine:
        stream = engine.open("identity")
        await asyncio.wait_for(Ingest(Broken(), stream).run(), 10)
    assert "decoder fell over" in caplog.text


async def test_loopback_candidates_are_scoped_and_the_process_wide_switch_turns_off() -> None:
    """``loopback_candidates()`` adds 127.0.0.1 only for connections gathering inside it (aiortc gathers in
    tasks of its own: the scope follows them); ``allow_loopback(False)`` gives aioice its function back."""
    import aioice.ice
    from aiortc import RTCPeerConnection

    from ooblex.webrtc import allow_loopback, ice, loopback_candidates

    async def offered() -> bool:
        pc = RTCPeerConnection(ice.rtc_configuration())
        pc.addTransceiver("video", direction="recvonly")
        try:
            await pc.setLocalDescription(await pc.createOffer())
            return " 127.0.0.1 " in pc.localDescription.sdp
        finally:
            await pc.close()

    own = ice._original_host_addresses
    was = ice._process_wide  # a gateway made earlier in this process may have switched it on
    try:
        allow_loopback(False)
        assert aioice.ice.get_host_addresses is own and not await offered()
        allow_loopback(True)
        assert await offered()
        allow_loopback(False)
        assert aioice.ice.get_host_addresses is own and not await offered()
        with loopback_candidates():
            assert await offered()
            others = contextvars.Context().run(asyncio.create_task, offered())  # a task not started in the block
            assert not await others
        assert aioice.ice.get_host_addresses is own and not await offered()
    finally:
        allow_loopback(was)


@pytest.mark.parametrize("line", [
    "a=fingerprint:sha-256 ZZ:FB",                       # not hex, wrong length
    "a=fingerprint:sha-256",                             # no digest
    "a=fingerprint:md5 AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89",  # unknown hash
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 31),    # one byte short
])
def test_malformed_fingerprints_are_named(line: str) -> None:
    offer = asyncio.run(sdp_offer())
    check_offer(offer)  # aiortc's own offer (three well-formed fingerprints) passes
    with pytest.raises(SDPError, match="malformed DTLS fingerprint"):
        check_offer(offer.replace("a=setup:", line + "\r\na=setup:"))
