"""Forward error correction on aiortc peer connections: RED + ULPFEC, negotiated as browsers do.

At a few per cent of loss, NACKs alone leave a stream stuttering: a lost packet holds its frame
(and every later one) back for a round trip, and on the return path of a tensor thread the same
frame crosses two lossy hops, so two round trips often add up past what reads as a freeze. With
ULPFEC (RFC 5109) a parity packet follows each frame and any one lost packet of its group is
rebuilt the moment the parity arrives; NACKs stay for what parity cannot repair.

- **Negotiation.** ``negotiating()`` offers/accepts ``video/red`` and ``video/ulpfec`` (RFC 2198,
  5109) for the peer connections set up inside it only: aiortc keeps one global codec list, and a
  plain aiortc peer in the same process must not start receiving RED it cannot unwrap.
- **Sending** (``_Sender``). Media goes out in RED; after a frame's last packet come its parity
  packets, one per ``group_size(loss)`` packets, the loss being what the peer's receiver reports
  say. Parity needs sequence numbers among the media's, which aiortc's sender numbers itself, so
  packets are renumbered on the way out and NACKs and retransmissions (RTX) are mapped back. The
  encoder's bitrate (REMB) is scaled down by the parity's share so the two fit the estimate. A
  packet NACKed again right after it was resent is not resent again (``RESEND_GUARD_S``): that is a
  NACK's copy (``recovery``), asking for what the first one brought.
- **Receiving** (``_Receiver``). RED is unwrapped (also inside RTX), parity rebuilds what it can,
  and aiortc's receiver sees plain media packets; a parity packet becomes an empty packet in its
  place so that it is not NACKed and its bytes count in the bitrate estimate. Rebuilt and resent
  packets (RTX of RED, as Chromium resends) are not counted as received in the receiver reports: loss
  there is the network's, as libwebrtc reports it, so that the sender's parity and its loss-based rate
  control see the real loss.

``protect(pc)`` installs both on every video transceiver that negotiated RED and ULPFEC; call it
after both descriptions are set, before media flows.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from aiortc import RTCPeerConnection, rtcpeerconnection
from aiortc.rtcrtpparameters import RTCRtpCodecCapability, RTCRtpCodecParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
)

from . import internals, red, ulpfec

log = logging.getLogger("ooblex.webrtc")

RED = RTCRtpCodecParameters(mimeType="video/red", clockRate=90000, payloadType=123)
ULPFEC = RTCRtpCodecParameters(mimeType="video/ulpfec", clockRate=90000, payloadType=124)
#: (loss below, media packets per parity packet): 0 sends no parity. One parity per 4 packets at
#: 3 % loss leaves 0.9 % of groups (two or more lost) to NACKs, for 25 % more packets.
PROTECTION = ((0.005, 0), (0.02, 8), (0.04, 4), (0.08, 3), (1.01, 2))
#: Sequence numbers remembered for mapping NACKs and retransmissions back (aiortc keeps 128 packets).
REMEMBER = 1024
#: From this reported loss on, a retransmission is sent twice: the packets that reach a NACK are the
#: ones parity could not rebuild, and a lost retransmission costs another round trip (a freeze, at
#: ~100 ms round trips over two hops). Twice costs the loss rate in bandwidth again (~3 %).
DOUBLE_RTX = 0.02
#: A packet NACKed within this of its last resend is not resent again: a NACK and its copy, sent
#: ``recovery.NACK_COPY_S`` apart (network jitter on top), ask once. Retries come 20 ms apart or more.
RESEND_GUARD_S = 0.02
#: Packets a loss estimate is taken over at least (about a second of 640x480 video).
LOSS_WINDOW = 100

_offering: ContextVar[bool] = ContextVar("ooblex_fec_offering", default=False)


def group_size(loss: float) -> int:
    """Media packets per parity packet at a loss rate (0 to 1); 0: no parity."""
    return next(size for below, size in PROTECTION if loss < below)


class _Codecs(dict):  # type: ignore[type-arg]
    """aiortc's codec table, with RED and ULPFEC added to video inside ``negotiating()``."""

    def __getitem__(self, kind: str) -> list[RTCRtpCodecParameters]:
        codecs = super().__getitem__(kind)
        return [*codecs, RED, ULPFEC] if kind == "video" and _offering.get() else codecs


@contextlib.contextmanager
def negotiating(enabled: bool = True) -> Iterator[None]:
    """Offer and accept RED/ULPFEC in the offers and answers made (or applied) inside this block.

    Scoped with a context variable: other peer connections negotiating at the same time, in other
    tasks, keep aiortc's own codecs.
    """
    if not isinstance(rtcpeerconnection.CODECS, _Codecs):
        internals.replace(rtcpeerconnection, "CODECS", _Codecs(rtcpeerconnection.CODECS))
    token = _offering.set(enabled)
    try:
        yield
    finally:
        _offering.reset(token)


def keep_with_preferences(transceiver: Any) -> None:
    """Let RED/ULPFEC through a transceiver's codec preferences (``setCodecPreferences`` only takes
    aiortc's own codecs, and a preference list leaves out what it does not name)."""
    preferred = transceiver._preferred_codecs
    if preferred:
        preferred += [RTCRtpCodecCapability(mimeType=c.mimeType, clockRate=c.clockRate) for c in (RED, ULPFEC)]


def only_with_vp8(pc: RTCPeerConnection) -> None:
    """Drop RED/ULPFEC from video transceivers whose media codec is not VP8; call after applying an offer.

    A lost parity packet leaves a hole in the sequence numbers that nobody resends. VP8's picture ids
    show that the hole held no video (``recovery``); H.264 has nothing like them, so a lost parity
    packet would hold its stream up until the hole is given up on.
    """
    for transceiver in pc.getTransceivers():
        media = [c for c in transceiver._codecs if c.name.lower() not in ("rtx", "red", "ulpfec")]
        if transceiver.kind == "video" and media and media[0].name != "VP8":
            fec = {c.payloadType for c in transceiver._codecs if c.name.lower() in ("red", "ulpfec")}
            kept = [c for c in transceiver._codecs if c.payloadType not in fec and c.parameters.get("apt") not in fec]
            internals.replace(transceiver, "_codecs", kept)


def _uint16(value: int) -> bytes:
    return (value & 0xFFFF).to_bytes(2, "big")


class _Sender:
    """One video sender's outgoing packets: renumbered into RED, parity after each frame."""

    def __init__(self, red_pt: int, fec_pt: int, media_pts: set[int], rtx_pt: int | None) -> None:
        self.red_pt, self.fec_pt = red_pt, fec_pt
        self.media_pts, self.rtx_pt = media_pts, rtx_pt
        self.next_seq = random.randrange(1 << 16)
        self.wire_of: OrderedDict[int, int] = OrderedDict()  # aiortc's sequence number -> ours
        self.original_of: dict[int, int] = {}
        self.resent_at: dict[int, float] = {}  # aiortc's sequence number -> when last NACKed and resent
        self.frame: list[bytes] = []
        self.loss = 0.0
        self._mark: tuple[int, int] | None = None  # (highest sequence, cumulative lost) at the last estimate
        self.parity_sent = 0

    def outgoing(self, data: bytes) -> list[bytes]:
        """The packets to send for one packet of aiortc's sender."""
        kind = data[1] & 0x7F
        if kind == self.rtx_pt:
            return self._retransmission(data)
        if kind not in self.media_pts:
            return [data]
        original = int.from_bytes(data[2:4], "big")
        if original in self.wire_of:  # resent without RTX: same number as the first time
            return [red.wrap(data[:2] + _uint16(self.wire_of[original]) + data[4:], self.red_pt)]
        media = data[:2] + _uint16(self._number(original)) + data[4:]
        self.frame.append(media)
        out = [red.wrap(media, self.red_pt)]
        if data[1] & 0x80:  # the frame's last packet: its parity follows
            out += self._parities()
            self.frame = []
        return out

    def originals(self, wire: list[int]) -> list[int]:
        """aiortc's sequence numbers for NACKed ones (parity packets are not resent)."""
        return [self.original_of[s] for s in wire if s in self.original_of]

    def to_resend(self, wire: list[int]) -> list[int]:
        """``originals`` of NACKed numbers, less those resent within ``RESEND_GUARD_S`` (a NACK's copy)."""
        now = time.monotonic()
        resend = []
        for original in self.originals(wire):
            last = self.resent_at.pop(original, None)  # popped and put back: the newest stay last
            if last is None or now - last >= RESEND_GUARD_S:
                resend.append(original)
                last = now
            self.resent_at[original] = last
        while len(self.resent_at) > REMEMBER:
            del self.resent_at[next(iter(self.resent_at))]
        return resend

    def note_report(self, highest: int, lost: int) -> None:
        """A receiver report's extended highest sequence number and cumulative loss. The loss rate is
        taken over at least ``LOSS_WINDOW`` packets: a report's own fraction covers whatever came since
        the last one (browsers report several times a second), and swings from 0 to 50 % at 5 % loss.
        The estimate rises at once and decays slowly."""
        if self._mark is None or highest < self._mark[0]:
            self._mark = (highest, lost)
            return
        expected = highest - self._mark[0]
        if expected < LOSS_WINDOW:
            return
        fraction = min(max((lost - self._mark[1]) / expected, 0.0), 1.0)
        self._mark = (highest, lost)
        self.loss = max(fraction, 0.7 * self.loss + 0.3 * fraction)

    @property
    def media_share(self) -> float:
        size = group_size(self.loss)
        return size / (size + 1) if size else 1.0

    def _next(self) -> int:
        wire = self.next_seq
        self.next_seq = (wire + 1) & 0xFFFF
        return wire

    def _number(self, original: int) -> int:
        wire = self._next()
        self.wire_of[original] = wire
        self.original_of[wire] = original
        while len(self.wire_of) > REMEMBER:
            self.original_of.pop(self.wire_of.popitem(last=False)[1], None)
        return wire

    def _retransmission(self, data: bytes) -> list[bytes]:
        """An RTX packet with our number for the packet it carries; twice at ``DOUBLE_RTX`` loss and up."""
        start = red.header_length(data)
        wire = self.wire_of.get(int.from_bytes(data[start:start + 2], "big"))
        if wire is None:
            return []
        return [data[:start] + _uint16(wire) + data[start + 2:]] * (2 if self.loss >= DOUBLE_RTX else 1)

    def _parities(self) -> list[bytes]:
        size = group_size(self.loss)
        if not size or not self.frame:
            return []
        count = -(-len(self.frame) // size)
        step = -(-len(self.frame) // count)
        last = self.frame[-1]
        head = red.with_payload_type(last[:red.header_length(last)], self.red_pt, marker=False)
        out = []
        for i in range(0, len(self.frame), step):
            parity = ulpfec.protect(self.frame[i:i + step])
            out.append(head[:2] + _uint16(self._next()) + head[4:] + bytes([self.fec_pt]) + parity)
        self.parity_sent += len(out)
        return out


class _Receiver:
    """One video receiver's incoming RED: unwrapped, parity applied, handed on as media packets."""

    def __init__(self, receiver: Any, red_pt: int, fec_pt: int, rtx_pts: set[int], media_pt: int) -> None:
        self.receiver, self.red_pt, self.fec_pt, self.rtx_pts = receiver, red_pt, fec_pt, rtx_pts
        self.media_pt = media_pt
        self.recovery = ulpfec.Recovery()
        self.malformed = 0

    def incoming(self, data: bytes, extensions: Any) -> list[tuple[RtpPacket, bool]]:
        """(packet for aiortc's receiver, whether it is a repair: retransmitted or rebuilt) for one RED (or RTX
        of RED) packet."""
        try:
            retransmitted = (data[1] & 0x7F) in self.rtx_pts
            if retransmitted:
                data = self._unwrap_rtx(data)
            inner = red.unwrap(data)
            kind = inner[1] & 0x7F
            if kind == self.fec_pt:
                return self._parity(inner, extensions)
            self.media_pt = kind
            packet = RtpPacket.parse(inner, extensions)
        except ValueError as exc:
            self.malformed += 1
            log.debug("dropped a malformed RED/ULPFEC packet: %s", exc)
            return []
        if retransmitted:
            packet.extensions.abs_send_time = None  # the original's send time: not for the estimator
        return [(packet, retransmitted), *self._rebuilt(self.recovery.add_media(inner), extensions)]

    def _unwrap_rtx(self, data: bytes) -> bytes:
        start = red.header_length(data)
        if len(data) < start + 2:
            raise ValueError("RTX packet without an original sequence number")
        rtx_ssrc = int.from_bytes(data[8:12], "big")
        ssrc = internals.rtx_ssrcs(self.receiver).get(rtx_ssrc, self.recovery.ssrc)
        header = red.with_payload_type(data[:start], self.red_pt)
        original = data[start:start + 2]
        return header[:2] + original + header[4:8] + ssrc.to_bytes(4, "big") + header[12:] + data[start + 2:]

    def _parity(self, inner: bytes, extensions: Any) -> list[tuple[RtpPacket, bool]]:
        start = red.header_length(inner)
        body = inner[start:]
        try:
            rebuilt = self.recovery.add_parity(body, int.from_bytes(inner[8:12], "big"))
        except ValueError as exc:
            self.malformed += 1
            log.debug("dropped a malformed ULPFEC payload: %s", exc)
            rebuilt = []
        place = RtpPacket.parse(red.with_payload_type(inner[:start], self.media_pt, marker=False), extensions)
        place.padding_size = len(body)  # counted by the bitrate estimator, decoded as nothing
        return [(place, False), *self._rebuilt(rebuilt, extensions)]

    @staticmethod
    def _rebuilt(packets: list[bytes], extensions: Any) -> list[tuple[RtpPacket, bool]]:
        out = []
        for data in packets:
            try:
                packet = RtpPacket.parse(data, extensions)
            except ValueError:
                continue
            packet.extensions.abs_send_time = None
            packet._ooblex_rebuilt = True  # type: ignore[attr-defined]  # not a round-trip sample (recovery.py)
            out.append((packet, True))
        return out


class _Transport:
    """The per-DTLS-transport switch: packets of protected senders and receivers go through them."""

    def __init__(self, dtls: Any) -> None:
        self.dtls = dtls
        self.senders: dict[int, _Sender] = {}     # media and RTX SSRC -> sender
        self.receivers: dict[int, _Receiver] = {}  # RED and RTX-of-RED payload type -> receiver
        self._send_rtp = internals.replace(dtls, "_send_rtp", self.send_rtp)
        self._handle_rtp_data = internals.replace(dtls, "_handle_rtp_data", self.handle_rtp_data)

    @classmethod
    def of(cls, dtls: Any) -> _Transport:
        existing = getattr(dtls, "_ooblex_protection", None)
        if existing is None:
            existing = dtls._ooblex_protection = cls(dtls)
        return existing

    async def send_rtp(self, data: bytes) -> None:
        sender = self.senders.get(int.from_bytes(data[8:12], "big")) if len(data) >= 12 else None
        if sender is None:
            await self._send_rtp(data)
            return
        for packet in sender.outgoing(data):
            await self._send_rtp(packet)

    async def handle_rtp_data(self, data: bytes, arrival_time_ms: int) -> None:
        receiver = self.receivers.get(data[1] & 0x7F) if len(data) >= 12 else None
        if receiver is None:
            await self._handle_rtp_data(data, arrival_time_ms)
            return
        for packet, repair in receiver.incoming(data, self.dtls._rtp_header_extensions_map):
            await receiver.receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)
            if repair:  # receiver reports give the network's loss, not what is left after repair
                stats = internals.remote_streams(receiver.receiver).get(packet.ssrc)
                if stats is not None:
                    stats.packets_received -= 1


def protect(pc: RTCPeerConnection) -> int:
    """Put RED/ULPFEC on every video transceiver of ``pc`` that negotiated both; returns how many.

    Call after the local and remote descriptions are set (bundling has chosen the transport).
    """
    protected = 0
    for transceiver in pc.getTransceivers():
        codecs = {c.name.lower(): c for c in transceiver._codecs if c.name.lower() in ("red", "ulpfec")}
        if transceiver.kind != "video" or len(codecs) < 2:
            continue
        red_pt, fec_pt = codecs["red"].payloadType, codecs["ulpfec"].payloadType
        media = [c for c in transceiver._codecs if c.name.lower() not in ("rtx", "red", "ulpfec")]
        rtx = [c for c in transceiver._codecs if c.name.lower() == "rtx"]
        if not media or getattr(transceiver.sender, "_ooblex_protection", None) is not None:
            continue
        transport = _Transport.of(transceiver.sender.transport)
        _protect_sender(transport, transceiver.sender, red_pt, fec_pt, media, rtx)
        rtx_of_red = {c.payloadType for c in rtx if c.parameters.get("apt") == red_pt}
        receiver = _Receiver(transceiver.receiver, red_pt, fec_pt, rtx_of_red, media[0].payloadType)
        for pt in (red_pt, *rtx_of_red):
            transport.receivers[pt] = receiver
        transceiver.receiver._ooblex_protection = receiver
        protected += 1
    return protected


def _protect_sender(transport: _Transport, sender: Any, red_pt: int, fec_pt: int,
                    media: list[RTCRtpCodecParameters], rtx: list[RTCRtpCodecParameters]) -> None:
    rtx_pt = next((c.payloadType for c in rtx if c.parameters.get("apt") == media[0].payloadType), None)
    state = _Sender(red_pt, fec_pt, {c.payloadType for c in media}, rtx_pt)
    transport.senders[sender._ssrc] = transport.senders[sender._rtx_ssrc] = state
    handle = sender._handle_rtcp_packet

    async def handle_rtcp(packet: Any) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            packet = copy.copy(packet)
            packet.lost = state.to_resend(packet.lost)
        elif isinstance(packet, RtcpRrPacket | RtcpSrPacket):
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    state.note_report(report.highest_sequence, report.packets_lost)
        await handle(packet)
        if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            _share_bitrate(sender, packet, state.media_share)
    internals.replace(sender, "_handle_rtcp_packet", handle_rtcp)
    sender._ooblex_protection = state


def _share_bitrate(sender: Any, packet: RtcpPsfbPacket, share: float) -> None:
    """Leave room for parity in the receiver's estimate (REMB): the encoder gets the media's share."""
    try:
        bitrate, ssrcs = unpack_remb_fci(packet.fci)
    except ValueError:
        return
    encoder = internals.encoder(sender)
    if sender._ssrc in ssrcs and encoder is not None and hasattr(encoder, "target_bitrate"):
        encoder.target_bitrate = int(bitrate * share)


def protection_stats(pc: RTCPeerConnection) -> dict[str, float]:
    """What forward error correction did on ``pc``: parity sent, packets rebuilt, loss last reported, and
    NACKs sent twice for that loss and NACKs for frames that stopped arriving (``recovery``)."""
    sent = rebuilt = malformed = copies = probes = 0
    loss = 0.0
    for transceiver in pc.getTransceivers():
        sender = getattr(transceiver.sender, "_ooblex_protection", None)
        if sender is not None:
            sent += sender.parity_sent
            loss = max(loss, sender.loss)
        receiver = getattr(transceiver.receiver, "_ooblex_protection", None)
        if receiver is not None:
            rebuilt += receiver.recovery.rebuilt
            malformed += receiver.malformed
        nacks = getattr(transceiver.receiver, internals.NACKS, None)
        copies += getattr(nacks, "copies", 0)
        probes += getattr(nacks, "probes", 0)
    return {"parity_sent": sent, "rebuilt": rebuilt, "malformed": malformed, "peer_loss": round(loss, 4),
            "nack_copies": copies, "tail_probes": probes}
