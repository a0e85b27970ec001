"""Pure logic of the network pieces: TURN REST credentials, ICE server Link headers, DTLS suites, settings."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time

import httpx
import pytest

from ooblex.gateway import Settings, create_app
from ooblex.tokens import mint
from ooblex.webrtc.ice import ice_server_links, ice_servers_from_links
from ooblex.webrtc.turn import turn_credentials

from .netns import in_netns

SECRET = "s" * 32


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to check the HMAC independently")
def test_turn_rest_credentials_match_an_independent_hmac() -> None:
    username, password = turn_credentials("north-secret", "alice", ttl_s=600, now=1_700_000_000)
    assert username == "1700000600:alice"
    digest = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", "north-secret", "-binary"], input=username.encode(),
                            capture_output=True, check=True).stdout
    assert password == base64.b64encode(digest).decode()
    with pytest.raises(ValueError, match="shared secret"):
        turn_credentials("", "alice", 600)
    with pytest.raises(ValueError, match="must not contain ':'"):
        turn_credentials("x", "a:b", 600)


def test_ice_server_links_round_trip() -> None:
    servers = [{"urls": ["turn:t.example.com:3478?transport=udp", "turns:t.example.com:5349"],
                "username": "1700000600:ab", "credential": "x/y+z="}, {"urls": "stun:s.example.com:3478"}]
    links = ice_server_links(servers)
    assert links[0] == ('<turn:t.example.com:3478?transport=udp>; rel="ice-server"; username="1700000600:ab"; '
                        'credential="x/y+z="; credential-type="password"')
    header = ", ".join(links) + ', <https://example.com/next>; rel="next"'
    assert ice_servers_from_links([header]) == [
        {"urls": "turn:t.example.com:3478?transport=udp", "username": "1700000600:ab", "credential": "x/y+z="},
        {"urls": "turns:t.example.com:5349", "username": "1700000600:ab", "credential": "x/y+z="},
        {"urls": "stun:s.example.com:3478"}]


def test_turn_settings_need_the_secret() -> None:
    with pytest.raises(ValueError, match="turn_secret"):
        Settings(turn_urls=["turn:t.example.com:3478"])
    settings = Settings(turn_urls=["turn:t.example.com:3478"], turn_secret="hunter2-turn")
    assert "hunter2-turn" not in repr(settings)


def test_dtls_offers_ecdhe_rsa_as_well_as_ecdsa() -> None:
    from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
    from OpenSSL import SSL

    from ooblex.webrtc import accept_rsa_peers

    accept_rsa_peers()
    ciphers = SSL.Connection(RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ciphers and "ECDHE-ECDSA-AES128-GCM-SHA256" in ciphers
    assert not [c for c in ciphers if not c.startswith("ECDHE-") and not c.startswith("TLS_")], ciphers


async def test_turn_credentials_only_after_the_token_check() -> None:
    settings = Settings(secret=SECRET, turn_urls=["turn:203.0.113.5:3478?transport=udp"], turn_secret="t",
                        turn_ttl_s=300)
    app = create_app(settings=settings)
    anything = {"Authorization": "Bearer " + mint("publish", secret=SECRET)}
    publish = {"Authorization": "Bearer " + mint("publish", thread="identity", secret=SECRET)}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        for path, headers, status in [("/whip/identity", {}, 401), ("/whep/anything", {}, 401),
                                      ("/whip/identity", {"Authorization": "Bearer " + mint(
                                          "view", stream="x", secret=SECRET)}, 403),
                                      ("/whip/nope", anything, 404), ("/whep/nostream", anything, 404)]:
            r = await http.options(path, headers=headers)
            assert r.status_code == status and "link" not in r.headers, (path, r.status_code, r.text)
        r = await http.options("/whip/identity", headers=publish)
        assert r.status_code == 204 and "Link" in r.headers["access-control-expose-headers"]
        [server] = ice_servers_from_links([r.headers["link"]])
    expiry = int(server["username"].split(":")[0])
    assert server["urls"] == "turn:203.0.113.5:3478?transport=udp"
    assert abs(expiry - (time.time() + 300)) < 5


@in_netns
async def test_whip_answer_links_carry_credentials_for_the_session() -> None:
    from .gateway_server import running_gateway
    from .media import sdp_offer

    settings = Settings(loopback_candidates=True, turn_urls=["turn:203.0.113.5:3478"], turn_secret="t",
                        ice_servers=[{"urls": "stun:203.0.113.5:3478"}])
    with running_gateway(settings=settings) as gw:
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(gw.url + "/whip/identity", content=await sdp_offer("sendonly"),
                                headers={"Content-Type": "application/sdp"})
            assert r.status_code == 201, r.text
            session = r.headers["location"].rsplit("/", 1)[1]
            servers = ice_servers_from_links(r.headers.get_list("link"))
            await http.delete(gw.url + r.headers["location"])
    assert servers[0] == {"urls": "stun:203.0.113.5:3478"}
    assert re.fullmatch(rf"\d{{10}}:{re.escape(session)}", servers[1]["username"]), servers


def _vp8(seq: int, ts: int, start: bool, key: bool, marker: bool):
    from aiortc.codecs.vpx import VpxPayloadDescriptor
    from aiortc.rtp import RtpPacket

    descriptor = bytes(VpxPayloadDescriptor(partition_start=int(start), partition_id=0, picture_id=seq))
    payload = descriptor + (bytes([0x00 if key else 0x01]) if start else b"\x55") + b"\x00" * 10
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, marker=int(marker))
    packet.payload = payload
    packet._data = payload[len(descriptor):]
    return packet


def test_keyframe_starts_are_recognised() -> None:
    from ooblex.webrtc.recovery import starts_keyframe

    assert starts_keyframe("VP8", _vp8(1, 0, start=True, key=True, marker=False).payload)
    assert not starts_keyframe("VP8", _vp8(1, 0, start=True, key=False, marker=False).payload)
    assert not starts_keyframe("VP8", _vp8(1, 0, start=False, key=True, marker=False).payload)
    assert starts_keyframe("H264", bytes([0x67, 0x42]))                    # SPS alone (OBS)
    assert starts_keyframe("H264", bytes([0x65, 0x88]))                    # IDR slice
    assert starts_keyframe("H264", bytes([0x78, 0x00, 0x05, 0x67]))        # STAP-A starting with SPS
    assert starts_keyframe("H264", bytes([0x7C, 0x85]))                    # FU-A start of an IDR
    assert not starts_keyframe("H264", bytes([0x7C, 0x05]))                # FU-A middle of an IDR
    assert not starts_keyframe("H264", bytes([0x41, 0x9A]))                # P slice
    assert not starts_keyframe("VP9", b"\x00")


def test_jitter_buffer_gives_up_on_a_hole_then_waits_for_a_keyframe(monkeypatch) -> None:
    from ooblex.webrtc import recovery

    clock = [100.0]
    monkeypatch.setattr(recovery.time, "monotonic", lambda: clock[0])
    buffer = recovery.RecoveringJitterBuffer(64, lambda pt: "VP8", give_up_s=0.5)
    assert buffer.add(_vp8(0, 0, start=True, key=True, marker=True))[1] is not None   # keyframe: released
    # frame 1 loses its first packet; frames 2 and 3 arrive whole but must wait behind the hole
    for seq, ts in ((2, 3000), (3, 6000), (4, 9000)):
        clock[0] += 0.033
        pli, frame = buffer.add(_vp8(seq, ts, start=seq != 2, key=False, marker=True))
        assert frame is None and not pli
    clock[0] += 0.6                                       # past give_up_s: skip the hole, ask for a keyframe
    pli, frame = buffer.add(_vp8(5, 12000, start=True, key=False, marker=True))
    assert pli and frame is None and buffer.waiting_keyframe and buffer.gave_up == 1
    clock[0] += 0.033
    pli, frame = buffer.add(_vp8(6, 15000, start=True, key=False, marker=True))
    assert frame is None and not pli                      # delta frames after a loss are not decodable: dropped
    clock[0] += 0.033
    pli, frame = buffer.add(_vp8(7, 18000, start=True, key=True, marker=True))
    assert frame is not None and frame.timestamp == 18000 and not buffer.waiting_keyframe
    assert buffer.discarded >= 2


def test_nacks_retry_a_bounded_number_of_times(monkeypatch) -> None:
    from aiortc.rtp import RtpPacket

    from ooblex.webrtc import recovery

    clock = [0.0]
    monkeypatch.setattr(recovery.time, "monotonic", lambda: clock[0])
    nacks = recovery.RetryingNacks()
    nacks.add(RtpPacket(sequence_number=10))
    assert nacks.add(RtpPacket(sequence_number=13))       # 11 and 12 missing: NACKed once by aiortc
    assert nacks.due() == []                              # too soon to ask again
    clock[0] += 0.75 * nacks.rtt
    assert nacks.due() == [11, 12], "3/4 round trip after the first NACK (for aiortc senders)"
    clock[0] += 0.3 * nacks.rtt
    assert nacks.due() == [], "one round trip after the first: a browser would ignore it"
    clock[0] += 0.06 * nacks.rtt
    assert nacks.due() == [11, 12], "1.1 round trips after the first (for browsers)"
    clock[0] += 0.25 * nacks.rtt
    assert nacks.due() == [11, 12], "1.35 round trips after the first (for browsers, when the 1.1 was early)"
    sent = 4
    for _ in range(10):
        clock[0] += nacks.rtt
        sent += bool(nacks.due())
    assert sent == recovery.MAX_NACKS
    clock[0] += 0.05
    nacks.add(RtpPacket(sequence_number=11))              # repaired: no longer asked for
    assert 11 not in nacks.missing and 11 not in nacks.count


class _Libwebrtc:
    """A sender as libwebrtc resends (pure logic): a NACKed packet again only once its round-trip
    estimate + 5 ms has passed since it last sent it (``RtpPacketHistory::VerifyRtt``)."""

    def __init__(self, rtt: float) -> None:
        self.guard, self.last_sent = rtt + 0.005, None

    def nacked(self, at: float) -> bool:
        if self.last_sent is not None and at - self.last_sent < self.guard:
            return False
        self.last_sent = at
        return True


@pytest.mark.parametrize("back_ms", [50, 40, 30, 20])
def test_a_lost_retransmission_is_asked_for_again_in_time_for_libwebrtc(monkeypatch, back_ms: float) -> None:
    """The first NACK crosses in 50 ms, its retransmission is lost; the retries cross in ``back_ms`` (the
    path's jitter). Whichever retry libwebrtc takes first, the packet comes within 2.5 round trips."""
    from aiortc.rtp import RtpPacket

    from ooblex.webrtc import recovery

    clock = [0.0]
    monkeypatch.setattr(recovery.time, "monotonic", lambda: clock[0])
    rtt, one_way = 0.09, 0.045
    nacks, sender = recovery.RetryingNacks(), _Libwebrtc(rtt)
    nacks.rtt = rtt
    nacks.add(RtpPacket(sequence_number=10))
    assert nacks.add(RtpPacket(sequence_number=12))       # 11 missing: the first NACK, at 0
    assert sender.nacked(0.05)                            # resent, and that is lost
    arrives = None
    while clock[0] < 1.0 and arrives is None:
        clock[0] += 0.005                                 # a packet of the stream every 5 ms
        if 11 in nacks.due() and sender.nacked(clock[0] + back_ms / 1000):
            arrives = clock[0] + back_ms / 1000 + one_way
    assert arrives is not None and arrives <= 2.5 * rtt, f"made good at {arrives}"


def _tail_probe():
    """A ``TailProbe`` on a fresh ``RetryingNacks``, the NACKs it sends, and a way to receive a packet."""
    from aiortc.rtp import RtpPacket

    from ooblex.webrtc import recovery

    nacks, sent = recovery.RetryingNacks(), []

    async def send(lost: list[int]) -> None:
        sent.append(lost)

    tail = recovery.TailProbe(nacks, send)

    def receive(seq: int, marker: bool = False, payload: bytes = b"vp8") -> None:
        packet = RtpPacket(sequence_number=seq, marker=int(marker), payload=payload)
        nacks.add(packet)
        if seq == nacks.max_seq:
            tail.saw(packet)
    return nacks, tail, sent, receive


async def test_the_rest_of_a_frame_that_stopped_arriving_is_nacked() -> None:
    """A frame's packets came 2 ms apart, then stopped without the marker: its next packet is NACKed once the
    wait is over, long before the next frame would have shown the loss; then retried as any other."""
    import asyncio

    from ooblex.webrtc import recovery

    nacks, tail, sent, receive = _tail_probe()
    for seq in (100, 101, 102):
        receive(seq)
        await asyncio.sleep(0.002)
    assert recovery.TAIL_WAIT_S[0] <= tail.wait() < recovery.TAIL_WAIT_S[1]
    await asyncio.sleep(recovery.TAIL_WAIT_S[1] + 0.01)
    assert sent == [[103]] and 103 in nacks.missing and nacks.probes == 1
    receive(104, marker=True)                             # 103 was lost: no second NACK for it now
    await asyncio.sleep(recovery.TAIL_WAIT_S[1] + 0.01)
    assert sent == [[103]] and 103 in nacks.missing


@pytest.mark.parametrize("last", ["marker", "parity", "in time"])
async def test_no_tail_probe_after_a_frame_ends_or_while_packets_come(last: str, monkeypatch) -> None:
    """Nothing is NACKed after a packet with the marker bit (the frame is whole), after an empty one (parity,
    ``protection``), or while the frame's packets keep coming."""
    import asyncio

    from ooblex.webrtc import recovery

    monkeypatch.setattr(recovery, "TAIL_WAIT_S", (0.1, 0.1))  # packets 10 ms apart are in time on a busy machine
    nacks, _, sent, receive = _tail_probe()
    receive(100)
    if last == "in time":
        for seq in range(101, 106):
            await asyncio.sleep(0.01)
            receive(seq, marker=seq == 105)
    else:
        receive(101, marker=last == "marker", payload=b"" if last == "parity" else b"vp8")
    await asyncio.sleep(0.15)
    assert sent == [] and not nacks.missing and nacks.probes == 0


async def test_a_probed_packet_that_was_on_its_way_is_no_round_trip_sample() -> None:
    """A probed packet may arrive as sent the first time (late, not lost): it leaves the missing set, and its
    early arrival is not taken for a fast retransmission."""
    import asyncio

    from ooblex.webrtc import recovery

    nacks, _, sent, receive = _tail_probe()
    receive(100)
    await asyncio.sleep(recovery.TAIL_WAIT_S[1] + 0.01)
    assert sent == [[101]]
    rtt = nacks.rtt
    receive(101, marker=True)
    assert nacks.rtt == rtt and not nacks.missing and not nacks.probed


@pytest.mark.parametrize(("loss_back", "sent"), [(0.03, 2), (0.01, 1), (None, 1)])
async def test_nacks_are_sent_twice_when_the_way_back_loses_packets(loss_back: float | None, sent: int) -> None:
    """The peer's reports of our video say how lossy the way our NACKs take is: from 2 % each goes twice;
    without protected video going back nothing says so, and each goes once."""
    import asyncio
    from types import SimpleNamespace

    from ooblex.webrtc import recovery

    calls: list[tuple[int, list[int]]] = []

    async def send_rtcp_nack(media_ssrc: int, lost: list[int]) -> None:
        calls.append((media_ssrc, lost))

    protection = None if loss_back is None else SimpleNamespace(loss=loss_back)
    transceiver = SimpleNamespace(sender=SimpleNamespace(_ooblex_protection=protection))
    receiver = SimpleNamespace(_send_rtcp_nack=send_rtcp_nack)
    nacks = recovery.RetryingNacks()
    send = recovery._copying_nacks(receiver, nacks, recovery._loss_back(transceiver))
    await send(1234, [11, 12])
    assert calls == [(1234, [11, 12])], "the first goes at once"
    await asyncio.sleep(recovery.NACK_COPY_S + 0.05)
    assert calls == [(1234, [11, 12])] * sent and nacks.copies == sent - 1
