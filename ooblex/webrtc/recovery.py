"""Recovering from packet loss on a receive path: NACKs that retry, and giving up for a keyframe.

aiortc 1.16 already NACKs a gap once, retransmits (RTX) what it is NACKed, sends a PLI when its
decoder raises, and forces a keyframe when it gets a PLI or FIR. What it lacks, and what made
video freeze for seconds at a few per cent of loss:

- **NACKs are sent once**: when the NACK or its retransmission is lost as well, the packet never
  comes. ``RetryingNacks`` NACKs what is still missing again 3/4, 1.1 and 1.35 round trips later
  (the round trip is learnt from how long retransmissions take to arrive), up to ``MAX_NACKS``
  times: more would flood a full link with retransmissions.
- **The jitter buffer waits without limit** for a missing packet: every later frame is held
  behind it until 512 packets (seconds of video) have piled up. ``RecoveringJitterBuffer`` gives
  up on a hole after ``give_up_s``, asks for a keyframe (PLI), and drops frames until one comes:
  a frame that refers to a lost one cannot be decoded right (VP8/H.264 decoders do not say so,
  they draw garbage). The PLI is repeated while no keyframe arrives.

- **Retransmissions feed the bitrate estimate** (REMB) with the send time of the original packet,
  which reads as a draining queue while the link loses packets; they are left out of it.
- **A lost NACK costs a round trip**: the packet is asked for again only when a retry is due (1.1
  round trips, for browsers). When the peer reports loss on the way our NACKs take (its receiver
  reports of our video, ``protection``), each NACK is sent twice, ``NACK_COPY_S`` apart. A browser
  ignores the copy when the first arrived (libwebrtc resends a packet at most once a round trip), and
  the gateway's own senders do the same (``protection.RESEND_GUARD_S``).
- **A frame's lost last packet is noticed a frame late**: a gap shows when a later packet arrives,
  and after a frame's last packet the next one is the next frame's first, 33-50 ms on. ``TailProbe``
  NACKs it as soon as it is later than the packets of a frame usually are apart (TCP's tail loss
  probe, for RTP).

``recover_losses(pc)`` puts all five on every video receiver of ``pc`` (after ``low_latency``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiortc import RTCPeerConnection
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from . import internals
from .jitter import MarkerJitterBuffer

log = logging.getLogger("ooblex.webrtc")
#: Round trip assumed until retransmissions have measured one.
INITIAL_RTT_S = 0.1
#: A hole older than this is given up on (a keyframe is asked for instead). Long enough for a few
#: retransmission rounds of a keyframe queued behind a rate cap: giving up early turns one lost
#: packet into a keyframe, which on a capped link is the costliest thing to ask for.
GIVE_UP_S = 1.0
#: NACKs per missing packet at most (the first and the retries): past that, each retry is one
#: more retransmission on a link that is probably full.
MAX_NACKS = 5
#: When a missing packet is NACKed again, in round trips after its first NACK: at 3/4 (aiortc resends
#: on every NACK, and a retry sent before a lost retransmission was due saves time), then at 1.1 and
#: 1.35, then 1.1 after each last one. The later ones are for browsers: libwebrtc ignores a NACK for a
#: packet it resent less than its round-trip estimate (+5 ms) ago, so there the 3/4 retry is dropped.
#: The 1.1 one gets through when the path's delay varies little; when the NACK happens to cross
#: faster than the first did (jitter), it is dropped too, and the 1.35 one gets through: a lost
#: retransmission is made good ~2.1-2.4 round trips after the first NACK, not 3.2.
RETRY_AT = (0.75, 1.1, 1.35)
#: From this loss on the way back (the peer's reports of our video), each NACK is sent twice: as
#: retransmissions are from ``protection.DOUBLE_RTX`` on. A NACK is ~50 bytes.
COPY_NACKS_FROM = 0.02
#: How long after a NACK its copy goes: apart, so that one burst does not take both.
NACK_COPY_S = 0.005
#: After a packet that does not end its frame, how long until the next one is taken for lost
#: (``TailProbe``): the largest recent gap between packets of a frame plus ``TAIL_MARGIN_S``,
#: within these bounds. The margin is for jitter: a packet held up holds up the ones behind it.
#: Past a frame interval (33 ms at 30 fps) the next frame shows the loss anyway.
TAIL_WAIT_S = (0.015, 0.035)
TAIL_MARGIN_S = 0.010
#: How much of that largest gap is kept per packet that follows (half of it is forgotten in ~70 packets).
GAP_KEPT = 0.99
#: While waiting for a keyframe, the PLI is repeated this often (it may be lost, too).
PLI_REPEAT_S = 1.0
H264_IDR, H264_SPS, H264_STAP_A, H264_FU_A = 5, 7, 24, 28


def starts_keyframe(codec: str | None, payload: bytes) -> bool:
    """Whether an RTP payload of ``codec`` ("VP8"/"H264") is the first packet of a keyframe."""
    if not payload:
        return False
    if codec == "VP8":
        start = _vp8_start(payload)
        return start is not None and bool(start[1]) and not start[1][0] & 1
    if codec == "H264":
        kind = payload[0] & 0x1F
        if kind == H264_STAP_A and len(payload) > 3:
            kind = payload[3] & 0x1F
        elif kind == H264_FU_A and len(payload) > 1:
            kind = payload[1] & 0x1F if payload[1] & 0x80 else 0
        return kind in (H264_IDR, H264_SPS)
    return False


def _vp8_start(payload: bytes) -> tuple[VpxPayloadDescriptor, bytes] | None:
    """The payload descriptor and data of a VP8 packet that starts a frame; None for any other."""
    try:
        descriptor, data = VpxPayloadDescriptor.parse(payload)
    except ValueError:
        return None
    return (descriptor, data) if descriptor.partition_start and descriptor.partition_id == 0 else None


def _vp8_frame_start(codec: str | None, payload: bytes) -> int | None:
    """The picture id of a VP8 packet that starts a frame; None for anything else."""
    start = _vp8_start(payload) if codec == "VP8" and payload else None
    return start[0].picture_id if start else None


def _follows(last: int, picture: int) -> bool:
    """Whether VP8 picture id ``picture`` comes right after ``last`` (15-bit ids, or 7-bit ones)."""
    return (picture - last) % 0x8000 == 1 or (max(picture, last) < 0x80 and (picture - last) % 0x80 == 1)


class RetryingNacks(NackGenerator):
    """aiortc's NACK generator, remembering when each missing packet was NACKed so it can NACK again."""

    def __init__(self) -> None:
        super().__init__()
        self.rtt = INITIAL_RTT_S
        self.media_ssrc: int | None = None
        self.first: dict[int, float] = {}  # seq -> when first NACKed
        self.last: dict[int, float] = {}   # seq -> when last NACKed
        self.count: dict[int, int] = {}    # seq -> NACKs sent
        self.retries = 0
        self.copies = 0                    # NACKs sent twice (``COPY_NACKS_FROM``)
        self.probed: set[int] = set()      # NACKed before a later packet showed them missing (``TailProbe``)
        self.probes = 0

    def add(self, packet: RtpPacket) -> bool:
        now = time.monotonic()
        self.media_ssrc = packet.ssrc
        seq = packet.sequence_number
        if seq in self.missing and self.last.get(seq) == self.first.get(seq) and seq not in self.probed and \
                not getattr(packet, "_ooblex_rebuilt", False):  # resent after one NACK: a round trip sample (a
            # packet rebuilt from parity, ``protection``, is not; nor one probed for, which may have been on its way)
            sample = now - self.first[seq]
            self.rtt = 0.8 * self.rtt + 0.2 * min(max(sample, 0.005), 1.0)
        missed = super().add(packet)
        for seq in list(self.first):
            if seq not in self.missing:
                del self.first[seq], self.last[seq], self.count[seq]
                self.probed.discard(seq)
        if missed:  # aiortc NACKs every missing packet now
            for seq in self.missing:
                self.first.setdefault(seq, now)
                self.last[seq] = now
                self.count[seq] = self.count.get(seq, 0) + 1
        return missed

    def probe(self, seq: int) -> bool:
        """Take ``seq``, the packet after the newest one, for missing before a later one shows it (``TailProbe``):
        NACKed now by the caller, and retried as any other. False if it is not the next one."""
        if self.max_seq is None or seq != (self.max_seq + 1) & 0xFFFF:
            return False
        now = time.monotonic()
        self.max_seq = seq
        self.missing.add(seq)
        self.first[seq] = self.last[seq] = now
        self.count[seq] = 1
        self.probed.add(seq)
        self.probes += 1
        return True

    def due(self) -> list[int]:
        """Missing packets to NACK again now (``RETRY_AT``; at most ``MAX_NACKS`` NACKs, 20 ms apart or more)."""
        now = time.monotonic()
        seqs = sorted(s for s in self.missing if s in self.last and self.count[s] < MAX_NACKS
                      and now - self.last[s] >= 0.02 and now >= self._retry_at(s))
        for seq in seqs:
            self.last[seq] = now
            self.count[seq] += 1
        self.retries += len(seqs)
        return seqs

    def _retry_at(self, seq: int) -> float:
        retried = self.count[seq] - 1
        if retried < len(RETRY_AT):
            return self.first[seq] + RETRY_AT[retried] * self.rtt
        return self.last[seq] + RETRY_AT[-1] * self.rtt


class TailProbe:
    """NACKs the rest of a frame that stopped arriving: TCP's tail loss probe, for RTP.

    A lost packet shows when a later one arrives. When the lost one ends its frame, the next to arrive
    is the next frame's first, a frame interval later, and the frame and all behind it wait that long
    before its NACK even goes. A frame's packets come close together (paced), so when a packet without
    the marker bit is not followed within the largest recent gap between packets of a frame (plus a
    margin, ``TAIL_WAIT_S``), the next one is NACKed then. A NACK for a packet not sent yet costs ~50
    bytes: libwebrtc and aiortc senders ignore it (neither has it in its history). Should that packet
    then be lost, it is NACKed again only at the first retry (``RETRY_AT``), not when the next packet
    shows the gap: rare (a frame's packets are paced milliseconds apart), and cheaper than a second
    NACK, and so a second retransmission from aiortc senders, after every probe.
    """

    def __init__(self, nacks: RetryingNacks, send: Callable[[list[int]], Awaitable[None]]) -> None:
        self.nacks, self.send = nacks, send
        self.gap = 0.0                  # largest recent gap between packets of a frame
        self.open: int | None = None    # the newest packet, when it did not end its frame
        self.at = 0.0                   # when that came
        self._timer: asyncio.TimerHandle | None = None

    def wait(self) -> float:
        low, high = TAIL_WAIT_S
        return min(max(self.gap + TAIL_MARGIN_S, low), high)

    def saw(self, packet: RtpPacket) -> None:
        """A packet newer than all before it has arrived."""
        now = time.monotonic()
        follows = self.open is not None and packet.sequence_number == (self.open + 1) & 0xFFFF
        self.gap = max(now - self.at if follows else 0.0, self.gap * GAP_KEPT)
        self.open = packet.sequence_number if packet.payload and not packet.marker else None
        self.at = now
        if self.open is not None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait(), self._check)

    def _check(self) -> None:
        self._timer = None
        if self.open is None:
            return
        early = self.at + self.wait() - time.monotonic()
        if early > 0:  # a packet came since the timer was set: wait from that one
            self._timer = asyncio.get_running_loop().call_later(early, self._check)
            return
        seq, self.open = (self.open + 1) & 0xFFFF, None
        if self.nacks.probe(seq):
            _in_background(self.send([seq]))


class RecoveringJitterBuffer(MarkerJitterBuffer):
    """``MarkerJitterBuffer`` that gives up on a hole after ``give_up_s`` and then waits for a keyframe."""

    def __init__(self, capacity: int, codec_of: Callable[[int], str | None], give_up_s: float = GIVE_UP_S) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.codec_of = codec_of
        self.give_up_s = give_up_s
        self.waiting_keyframe = False
        self.gave_up = 0        # holes given up on
        self.discarded = 0      # frames dropped while waiting for a keyframe
        self._stalled_since: float | None = None
        self._last_pli = 0.0
        self._just_discarded = False
        self._picture_id: int | None = None  # of the last VP8 frame released
        self.skipped = 0        # holes that held no media (a lost parity packet) stepped over

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        pli, frame = super().add(packet)
        now = time.monotonic()
        if frame is None and self._head_missing() and self._hole_without_media():
            self.skipped += 1
            frame = self._remove_frame(packet.sequence_number)
        if frame is None and self._head_missing():
            self._stalled_since = self._stalled_since or now
            if now - self._stalled_since > self.give_up_s:
                self._skip_hole()
                self.gave_up += 1
                self.waiting_keyframe = True
                self._stalled_since = None
                frame = self._remove_frame(packet.sequence_number)
        else:
            self._stalled_since = None
        while frame is None and self._just_discarded:  # a dropped frame frees the next one: go on
            self._just_discarded = False
            frame = self._remove_frame(packet.sequence_number)
        if self.waiting_keyframe and now - self._last_pli > PLI_REPEAT_S:
            pli = True
        if pli:
            self._last_pli = now
        return pli, frame

    def _head_missing(self) -> bool:
        return self._origin is not None and self._packets[self._origin % self._capacity] is None and any(
            p is not None for p in self._packets)

    def _hole_without_media(self) -> bool:
        """Whether the missing packets at the head held no video, and so are not worth waiting for: the
        next packet with data starts the VP8 frame right after the last one released (its picture id
        follows on). A lost parity packet (``protection``) or padding leaves such a hole, and nobody
        resends those. The hole is stepped over when so; anything else waits for NACKs."""
        if self._picture_id is None:
            return False
        for count in range(1, self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]  # type: ignore[operator]
            if packet is None or not packet._data:  # type: ignore[attr-defined]
                continue
            picture = _vp8_frame_start(self.codec_of(packet.payload_type), packet.payload)
            if picture is None or not _follows(self._picture_id, picture):
                return False
            self.remove(count)
            return True
        return False

    def _skip_hole(self) -> None:
        """Move the start of the buffer past the missing packets to the next packet there is."""
        while self._packets[self._origin % self._capacity] is None:  # type: ignore[operator]
            self.remove(1)

    def _release(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame | None:  # type: ignore[override]
        frame = super()._release(packets, timestamp, count)
        self._picture_id = _vp8_frame_start(self.codec_of(packets[0].payload_type), packets[0].payload)
        if self.waiting_keyframe:
            if not starts_keyframe(self.codec_of(packets[0].payload_type), packets[0].payload):
                self.discarded += 1
                self._just_discarded = True
                return None
            self.waiting_keyframe = False
        return frame


def recover_losses(pc: RTCPeerConnection) -> int:
    """Give every video receiver of ``pc`` retrying NACKs and a jitter buffer that gives up for a keyframe.

    Call after ``setRemoteDescription`` (and ``low_latency``), before media flows; returns how many
    receivers were changed.
    """
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        current = internals.jitter_buffer(receiver)
        if transceiver.kind != "video" or current is None or isinstance(current, RecoveringJitterBuffer):
            if transceiver.kind == "video" and current is None:
                log.warning("aiortc internals changed: cannot install loss recovery")
            continue
        codecs: dict[int, Any] = internals.receiver_codecs(receiver)

        def codec_of(payload_type: int, codecs: dict[int, Any] = codecs) -> str | None:
            codec = codecs.get(payload_type)
            return codec.name if codec is not None else None

        internals.set_jitter_buffer(receiver, RecoveringJitterBuffer(current.capacity, codec_of))
        nacks = RetryingNacks()
        internals.set_nack_generator(receiver, nacks)
        internals.replace(receiver, "_handle_rtp_packet", _nacking_again(receiver, nacks, codec_of))
        internals.replace(receiver, "_send_rtcp_nack", _copying_nacks(receiver, nacks, _loss_back(transceiver)))
        changed += 1
    return changed


def _loss_back(transceiver: Any) -> Callable[[], float]:
    """The loss the peer reports of our video on ``transceiver``: the loss on the way our NACKs take (0
    without protected video going back, ``protection``: then nothing says the way back is lossy)."""
    def loss() -> float:
        sender = getattr(transceiver.sender, "_ooblex_protection", None)
        return sender.loss if sender is not None else 0.0
    return loss


_sending: set[asyncio.Task[None]] = set()


def _in_background(coro: Awaitable[None]) -> None:
    """Run ``coro`` (a NACK going out) without waiting for it, keeping the task referenced until done."""
    task = asyncio.ensure_future(coro)
    _sending.add(task)
    task.add_done_callback(_sending.discard)


def _copying_nacks(receiver: Any, nacks: RetryingNacks, loss_back: Callable[[], float]) -> Callable[..., Any]:
    """The receiver's NACK sender, sending each NACK again ``NACK_COPY_S`` later from ``COPY_NACKS_FROM``
    loss on the way back."""
    send = receiver._send_rtcp_nack

    async def copy_later(media_ssrc: int, lost: list[int]) -> None:
        await asyncio.sleep(NACK_COPY_S)
        await send(media_ssrc, lost)

    @functools.wraps(send)
    async def send_and_copy(media_ssrc: int, lost: list[int]) -> None:
        await send(media_ssrc, lost)
        if loss_back() >= COPY_NACKS_FROM:
            nacks.copies += 1
            _in_background(copy_later(media_ssrc, list(lost)))
    return send_and_copy


def _nacking_again(receiver: Any, nacks: RetryingNacks, codec_of: Callable[[int], str | None]) -> Callable[..., Any]:
    """The receiver's packet handler, followed by NACKs for packets still missing (``RETRY_AT``), and for the
    rest of a frame that stopped arriving (``TailProbe``).

    Retransmissions are kept out of the bitrate estimate (REMB): they carry the send time of the
    original packet, so the estimator would read their late arrival as a fast-draining queue and
    raise the estimate just when the link is losing packets.
    """
    handle = receiver._handle_rtp_packet
    tail = TailProbe(nacks, lambda lost: receiver._send_rtcp_nack(nacks.media_ssrc, lost))

    @functools.wraps(handle)
    async def handle_and_retry(packet: RtpPacket, arrival_time_ms: int) -> None:
        resent = codec_of(packet.payload_type) == "rtx"
        if resent:
            packet.extensions.abs_send_time = None
        await handle(packet, arrival_time_ms=arrival_time_ms)
        if not resent and packet.sequence_number == nacks.max_seq:
            tail.saw(packet)
        due = nacks.due() if nacks.missing else []
        if due and nacks.media_ssrc is not None:
            await receiver._send_rtcp_nack(nacks.media_ssrc, due)
    return handle_and_retry
