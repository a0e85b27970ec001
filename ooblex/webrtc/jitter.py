"""A jitter buffer that releases a video frame the moment its last packet arrives.

aiortc's ``JitterBuffer`` only knows a frame is complete when the *next* frame's first packet
arrives, so every receive hop adds one frame interval (33 ms at 30 fps) before decoding even
starts. Senders mark the last packet of each frame with the RTP marker bit (RFC 6184 / 7741,
and aiortc, Chrome and Firefox all set it), so a frame whose packets are contiguous up to a
marked packet is complete and can go to the decoder at once. Frames without a marker still
complete the old way, so nothing is lost by the change.
"""

from __future__ import annotations

import logging

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket

from . import internals

log = logging.getLogger("ooblex.webrtc")


class MarkerJitterBuffer(JitterBuffer):
    """``JitterBuffer`` that also completes a frame on its RTP marker bit."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        self._drop_empty()
        packets: list[RtpPacket] = []
        timestamp = None
        for count in range(self.capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if timestamp is None:
                timestamp = packet.timestamp
            elif packet.timestamp != timestamp:  # the next frame began: this one is whole
                return self._release(packets, timestamp, count)
            packets.append(packet)
            if packet.marker:  # the last packet of this frame
                return self._release(packets, timestamp, count + 1)
        return None

    def _drop_empty(self) -> None:
        """Skip packets with nothing to decode at the head (padding, a parity packet's place): alone
        they would make an empty frame, which the decoder rejects with a keyframe request."""
        while self._origin is not None:
            head = self._packets[self._origin % self._capacity]
            if head is None or getattr(head, "_data", b""):
                return
            self.remove(1)

    def _release(self, packets: list[RtpPacket], timestamp: int, count: int) -> JitterFrame:
        frame = JitterFrame(data=b"".join(p._data for p in packets), timestamp=timestamp)  # type: ignore[attr-defined]
        self.remove(count)
        return frame


def low_latency(pc: RTCPeerConnection) -> int:
    """Give every video receiver of ``pc`` a ``MarkerJitterBuffer``; returns how many were changed.

    Call after ``setRemoteDescription`` / ``addTransceiver`` and before media flows.
    """
    changed = 0
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "video" or receiver is None:
            continue
        current = internals.jitter_buffer(receiver)
        if current is None:
            log.warning("aiortc internals changed: cannot install the low-latency jitter buffer")
            continue
        if not isinstance(current, MarkerJitterBuffer):
            internals.set_jitter_buffer(receiver, MarkerJitterBuffer(
                capacity=current.capacity, is_video=True))
            changed += 1
    return changed
