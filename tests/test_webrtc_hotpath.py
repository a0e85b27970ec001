"""``ooblex.webrtc.hotpath``: the receive path's shortcuts keep aioice's and aiortc's behaviour."""

from __future__ import annotations

import asyncio
import queue
import threading

import aioice.ice
import aiortc.rtcrtpreceiver
import pytest
from aioice import stun
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from ooblex.webrtc import hotpath
from ooblex.webrtc.vp8 import libvpx

from .test_vp8 import clip


class Receiver:
    """What a ``StunProtocol`` hands datagrams to (aioice's ``Connection``), recording each call."""

    def __init__(self) -> None:
        self.media: list[bytes] = []
        self.requests: list[stun.Message] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.media.append(data)

    def request_received(self, message: stun.Message, addr: tuple, protocol: object) -> None:
        self.requests.append(message)


class Answered:
    def __init__(self) -> None:
        self.responses: list[stun.Message] = []

    def response_received(self, message: stun.Message, addr: tuple) -> None:
        self.responses.append(message)


async def protocol() -> tuple[aioice.ice.StunProtocol, Receiver]:
    receiver = Receiver()
    proto = aioice.ice.StunProtocol(receiver)  # type: ignore[arg-type]
    proto.local_candidate = aioice.Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
    return proto, receiver


async def test_datagrams_are_routed_as_aioice_routes_them() -> None:
    proto, receiver = await protocol()
    rtp = bytes([0x80, 96, 0, 1]) + bytes(8) + b"vp8 payload"
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=b"t" * 12)
    answered = proto.transactions[response.transaction_id] = Answered()  # type: ignore[assignment]
    for data in (rtp, dtls, bytes(request), bytes(response), bytes([1, 2, 3])):
        hotpath.datagram_received(proto, data, ("127.0.0.1", 5000, 0, 0))
    assert receiver.media == [rtp, dtls, bytes([1, 2, 3])]  # the last: STUN's range, but not STUN
    assert [m.transaction_id for m in receiver.requests] == [request.transaction_id]
    assert [m.transaction_id for m in answered.responses] == [response.transaction_id]


async def test_media_that_parses_as_stun_is_still_media() -> None:
    """aioice tries STUN first: an RTP packet whose bytes happen to form a STUN header was taken for one."""
    proto, receiver = await protocol()
    fake = bytes([0x80, 0x01, 0x00, 0x04]) + bytes(16) + bytes([0, 0, 0, 0])  # header + one empty attribute
    stun.parse_message(fake)  # aioice itself would take it for STUN
    hotpath.datagram_received(proto, fake, ("127.0.0.1", 5000))
    assert receiver.media == [fake] and receiver.requests == []


@pytest.mark.skipif(libvpx() is None, reason="libvpx.so.7 (Debian libvpx7) is not installed")
async def test_decoder_thread_hands_over_every_frame_in_order_then_the_end() -> None:
    from ooblex.webrtc.vp8 import LibvpxVp8Encoder

    codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    encoder, frames = LibvpxVp8Encoder(), clip(320, 240)
    encoded = []
    for _ in range(10):
        payloads, timestamp = encoder.encode(next(frames))
        data = b"".join(aiortc.rtcrtpreceiver.depayload(codec, p) for p in payloads)
        encoded.append(JitterFrame(data=data, timestamp=timestamp))
    tasks: queue.Queue = queue.Queue()
    out: asyncio.Queue = asyncio.Queue()
    error = threading.Event()
    worker = threading.Thread(target=hotpath.decoder_worker, args=(asyncio.get_running_loop(), tasks, out, error))
    worker.start()
    for i, frame in enumerate(encoded):
        tasks.put((codec, frame))
        if i == 4:
            tasks.put((codec, JitterFrame(data=b"\x00" * 10, timestamp=0)))  # not VP8: logged and skipped
    tasks.put(None)
    got = []
    while (frame := await asyncio.wait_for(out.get(), 10)) is not None:
        got.append(frame.pts)
    worker.join(5)
    assert got == [f.timestamp for f in encoded] and error.is_set()


async def test_install_puts_both_in_place() -> None:
    hotpath.install()
    assert aioice.ice.StunProtocol.datagram_received is hotpath.datagram_received
    assert aiortc.rtcrtpreceiver.decoder_worker is hotpath.decoder_worker
