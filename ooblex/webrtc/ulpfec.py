"""ULPFEC (RFC 5109): parity packets that rebuild a lost RTP packet without waiting a round trip.

One parity packet is the XOR of a group of media packets (everything after their 12-byte fixed
header, and the header fields that differ: marker, payload type, timestamp, length). Any single
packet of the group that is lost can then be rebuilt from the others and the parity, as soon as
they are in, where a NACK costs a round trip (80-200 ms on the networks this is for) and, over two
lossy hops, often two. Only level 0 (the whole packet protected) is used, as browsers do.

This module is the arithmetic on bytes; ``protection`` puts it on aiortc's senders and receivers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .red import RTP_HEADER

FEC_HEADER = 10
#: Media packets one parity packet covers at most (the long mask, ``L`` = 1).
MAX_GROUP = 48


def _seq(packet: bytes) -> int:
    return int.from_bytes(packet[2:4], "big")


def _fold(packets: list[bytes], length: int, start: tuple[int, int, int, int, int] = (0, 0, 0, 0, 0),
          ) -> tuple[int, int, int, int, int]:
    """XOR of what ULPFEC protects in ``packets`` into ``start``: the first two header bytes, the
    timestamp, the length after the fixed header and the first ``length`` bytes after it."""
    first, second, timestamp, sizes, parity = start
    for packet in packets:
        first ^= packet[0]
        second ^= packet[1]
        timestamp ^= int.from_bytes(packet[4:8], "big")
        sizes ^= len(packet) - RTP_HEADER
        parity ^= int.from_bytes(packet[RTP_HEADER:RTP_HEADER + length].ljust(length, b"\0"), "big")
    return first, second, timestamp, sizes, parity


def protect(packets: list[bytes]) -> bytes:
    """The ULPFEC payload protecting ``packets``: serialised RTP packets of one SSRC, in sequence order,
    spanning at most ``MAX_GROUP`` sequence numbers."""
    if not packets:
        raise ValueError("nothing to protect")
    base = _seq(packets[0])
    offsets = [(_seq(p) - base) & 0xFFFF for p in packets]
    if max(offsets) >= MAX_GROUP:
        raise ValueError(f"a parity packet covers at most {MAX_GROUP} sequence numbers")
    length = max(len(p) for p in packets) - RTP_HEADER
    first, second, timestamp, sizes, parity = _fold(packets, length)
    long = max(offsets) >= 16
    bits = 48 if long else 16
    mask = sum(1 << (bits - 1 - o) for o in set(offsets))
    header = (bytes([(0x40 if long else 0) | (first & 0x3F), second]) + base.to_bytes(2, "big")
              + timestamp.to_bytes(4, "big") + sizes.to_bytes(2, "big"))
    level = length.to_bytes(2, "big") + mask.to_bytes(bits // 8, "big")
    return header + level + parity.to_bytes(length, "big")


@dataclass(frozen=True)
class Parity:
    """A parsed ULPFEC payload: which sequence numbers it covers and their XOR."""

    covers: tuple[int, ...]
    first: int
    second: int
    timestamp: int
    sizes: int
    parity: bytes

    @classmethod
    def parse(cls, payload: bytes) -> Parity:
        if len(payload) < FEC_HEADER + 4:
            raise ValueError("ULPFEC packet too short")
        if payload[0] & 0x80:
            raise ValueError("ULPFEC extension flag (E) set: not supported")
        bits = 48 if payload[0] & 0x40 else 16
        level = FEC_HEADER + 2 + bits // 8
        if len(payload) < level:
            raise ValueError("ULPFEC level header cut short")
        base = int.from_bytes(payload[2:4], "big")
        length = int.from_bytes(payload[FEC_HEADER:FEC_HEADER + 2], "big")
        mask = int.from_bytes(payload[FEC_HEADER + 2:level], "big")
        covers = tuple((base + i) & 0xFFFF for i in range(bits) if mask >> (bits - 1 - i) & 1)
        if not covers:
            raise ValueError("ULPFEC packet protects nothing")
        if len(payload) - level != length:
            raise ValueError("ULPFEC protection length does not match the payload")
        return cls(covers, payload[0], payload[1], int.from_bytes(payload[4:8], "big"),
                   int.from_bytes(payload[8:10], "big"), payload[level:])

    def rebuild(self, missing: int, others: list[bytes], ssrc: int) -> bytes:
        """The packet ``missing`` from this parity and all the ``others`` it covers."""
        length = len(self.parity)
        first, second, timestamp, sizes, parity = _fold(others, length, (
            self.first, self.second, self.timestamp, self.sizes, int.from_bytes(self.parity, "big")))
        if sizes > length:
            raise ValueError("ULPFEC cannot rebuild a packet longer than it protects")
        header = (bytes([0x80 | (first & 0x3F), second]) + missing.to_bytes(2, "big")
                  + timestamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big"))
        return header + parity.to_bytes(length, "big")[:sizes]


class Recovery:
    """The receiving side for one SSRC: recent media packets and parities; rebuilds what it can.

    Bounded: the newest ``keep`` media packets (parity covers one frame, at most ``MAX_GROUP``
    packets, and arrives right after it; 256 packets of 1.2 KB are ~300 KB a connection) and
    ``keep_parities`` parity packets are kept.
    """

    def __init__(self, keep: int = 256, keep_parities: int = 64) -> None:
        self.keep, self.keep_parities = keep, keep_parities
        self.media: OrderedDict[int, bytes] = OrderedDict()
        self.parities: list[Parity] = []
        self.ssrc = 0
        self.rebuilt = 0

    def add_media(self, packet: bytes) -> list[bytes]:
        """Note a media packet (de-RED'd, as it was protected); returns packets that could now be rebuilt."""
        self.ssrc = int.from_bytes(packet[8:12], "big")
        self._remember(packet)
        return self._rebuild() if self.parities else []

    def add_parity(self, payload: bytes, ssrc: int) -> list[bytes]:
        """Note a ULPFEC payload; returns packets that could now be rebuilt. ``ValueError`` if malformed."""
        self.parities.append(Parity.parse(payload))
        del self.parities[:-self.keep_parities]
        self.ssrc = ssrc
        return self._rebuild()

    def _remember(self, packet: bytes) -> None:
        self.media[_seq(packet)] = packet
        self.media.move_to_end(_seq(packet))
        while len(self.media) > self.keep:
            self.media.popitem(last=False)

    def _rebuild(self) -> list[bytes]:
        rebuilt: list[bytes] = []
        progress = True
        while progress:
            progress = False
            for parity in list(self.parities):
                missing = [s for s in parity.covers if s not in self.media]
                if len(missing) > 1:
                    continue
                self.parities.remove(parity)
                if not missing:
                    continue
                others = [self.media[s] for s in parity.covers if s != missing[0]]
                try:
                    packet = parity.rebuild(missing[0], others, self.ssrc)
                except ValueError:
                    continue
                self._remember(packet)
                rebuilt.append(packet)
                self.rebuilt += 1
                progress = True
        return rebuilt
