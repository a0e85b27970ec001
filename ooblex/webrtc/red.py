"""RED (RFC 2198) for video, at the byte level: the envelope that ULPFEC packets travel in.

With RED negotiated, every video packet carries a one-byte header naming its real payload type
(VP8, or ULPFEC for parity packets), so parity shares the media's SSRC and sequence numbers, as
browsers send and expect it. Video RED carries no redundant blocks (browsers send none); older
blocks in a packet that has them are skipped and only the primary one is kept.
"""

from __future__ import annotations

RTP_HEADER = 12


def header_length(packet: bytes) -> int:
    """Bytes of ``packet``'s RTP header: the fixed part, CSRCs and the header extension."""
    if len(packet) < RTP_HEADER or packet[0] >> 6 != 2:
        raise ValueError("not an RTP packet")
    length = RTP_HEADER + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:  # header extension: 4 bytes, then its length in 32-bit words
        if len(packet) < length + 4:
            raise ValueError("RTP header extension cut short")
        length += 4 + 4 * int.from_bytes(packet[length + 2:length + 4], "big")
    if len(packet) < length:
        raise ValueError("RTP header cut short")
    return length


def with_payload_type(packet: bytes, payload_type: int, marker: bool | None = None) -> bytes:
    """``packet`` with another payload type (and marker bit, if given)."""
    mark = packet[1] & 0x80 if marker is None else (0x80 if marker else 0)
    return packet[:1] + bytes([mark | payload_type]) + packet[2:]


def wrap(packet: bytes, red_payload_type: int) -> bytes:
    """``packet`` in a RED envelope: payload type RED, a one-byte block header naming the real one."""
    start = header_length(packet)
    inner = packet[1] & 0x7F
    return with_payload_type(packet[:start], red_payload_type) + bytes([inner]) + packet[start:]


def unwrap(packet: bytes) -> bytes:
    """The packet a RED ``packet`` carries (its primary block), with that block's payload type."""
    start = header_length(packet)
    body = packet[start:]
    if packet[0] & 0x20:  # RTP padding: the last byte counts it
        if not body or body[-1] > len(body):
            raise ValueError("RTP padding longer than the payload")
        body = body[:len(body) - body[-1]]
    skip, pos = 0, 0
    while pos < len(body) and body[pos] & 0x80:  # headers of redundant blocks: F, PT, offset, length
        if pos + 4 > len(body):
            raise ValueError("RED block header cut short")
        skip += int.from_bytes(body[pos + 2:pos + 4], "big") & 0x3FF
        pos += 4
    if pos >= len(body):
        raise ValueError("RED packet without a primary block")
    primary = body[pos] & 0x7F
    data = body[pos + 1 + skip:]
    if pos + 1 + skip > len(body):
        raise ValueError("RED blocks longer than the packet")
    header = bytes([packet[0] & ~0x20 & 0xFF]) + packet[1:start]  # padding is dropped with the envelope
    return with_payload_type(header, primary) + data
