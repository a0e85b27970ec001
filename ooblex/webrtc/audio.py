"""Audio pass-through: a publisher's Opus packets, undecoded, to every output, in step with the video.

Nothing here decodes or encodes. ``tap_receiver`` stands in for an aiortc audio receiver's jitter
buffer (the one place each depayloaded RTP packet passes), so packets leave it the moment they
arrive and the decoder thread never sees one. An ``OpusTrack`` hands packets back to aiortc as
``av.Packet`` objects, which ``RTCRtpSender`` packs into RTP as they are (``Encoder.pack``).

Between the two sits ``AudioRelay``: it evens out the publisher's packet timing and holds each
packet for as long as the video takes through the gateway (``LipSync``: each processed frame's
time from decoded to sent, smoothed, slewed, bounded), so a viewer hears a word with the picture
of the lips that said it. Audio never waits
for video frames themselves: when a thread is slow and frames drop, the hold stays at the delay
the frames that do come out have, and audio flows on without gaps.
"""

from __future__ import annotations

import asyncio
import bisect
import fractions
import logging
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import av
from aiortc import MediaStreamTrack, RTCRtpReceiver
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtp import RtpPacket

from . import internals

log = logging.getLogger("ooblex.webrtc")

#: Opus always runs an RTP clock of 48 kHz (RFC 7587), whatever the sampling rate inside.
OPUS_RATE = 48000
TIME_BASE = fractions.Fraction(1, OPUS_RATE)
#: Packets queued per output track before the oldest is dropped (1 s of 20 ms packets).
TRACK_QUEUE = 50
#: A packet this far (s) off the recent transit starts a new timeline (the publisher restarted its clock).
RESET_S = 1.0


@dataclass(slots=True)
class AudioPacket:
    """One encoded Opus packet as it arrived."""

    #: RTP timestamp in 48 kHz ticks since the stream's first packet (wrap-around unwrapped).
    timestamp: int
    data: bytes
    #: ``time.monotonic()`` when it arrived.
    arrived: float


class _Unwrap:
    """32-bit RTP timestamps -> ticks since the first, across wrap-around, tolerating reordering."""

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0  # unwrapped value of the newest timestamp seen

    def __call__(self, ts: int) -> int:
        if self._first is None:
            self._first = ts
            return 0
        step = (ts - (self._first + self._last)) & 0xFFFFFFFF
        if step >= 1 << 31:  # an older packet (reordered): a negative step
            step -= 1 << 32
        value = self._last + step
        self._last = max(self._last, value)
        return value


class PacketTap(JitterBuffer):
    """Stands in for an audio receiver's jitter buffer: hands each packet on, gives the decoder nothing."""

    def __init__(self, on_packet: Callable[[AudioPacket], None]) -> None:
        super().__init__(capacity=16)
        self._on_packet = on_packet
        self._unwrap = _Unwrap()
        self.packets = 0

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        if packet.payload:
            self.packets += 1
            self._on_packet(AudioPacket(self._unwrap(packet.timestamp), packet.payload, time.monotonic()))
        return False, None


def tap_receiver(receiver: RTCRtpReceiver, on_packet: Callable[[AudioPacket], None]) -> PacketTap | None:
    """Route ``receiver``'s packets to ``on_packet`` instead of its decoder; None if aiortc changed.

    Call after ``setRemoteDescription`` and before media flows (as ``jitter.low_latency``).
    """
    if internals.jitter_buffer(receiver) is None:
        log.warning("aiortc internals changed: cannot tap the audio receiver (audio is not passed through)")
        return None
    tap = PacketTap(on_packet)
    internals.set_jitter_buffer(receiver, tap)
    return tap


class LipSync:
    """How long to hold audio so it leaves with the video of the same instant.

    ``observe`` takes each processed frame's delay through the gateway; the hold follows their
    median over the last ``window`` frames (one slow frame does not move it), moves towards it at
    most ``slew`` seconds per second (a change listeners' jitter buffers absorb without a click),
    and stays within ``[0, max_s]``. Before the first frame the hold is 0; until ``window`` frames
    are known it follows their median at once (a stream's first frames are the slowest to encode).
    """

    def __init__(self, max_s: float = 0.5, window: int = 15, slew: float = 0.05) -> None:
        self.max_s = max_s
        self.slew = slew
        self._delays: deque[float] = deque(maxlen=window)
        self._seen = 0
        self._target: float | None = None
        self._hold = 0.0
        self._at = time.monotonic()

    def observe(self, delay_s: float) -> None:
        """One video frame took ``delay_s`` from decoded to sent."""
        self._delays.append(min(max(delay_s, 0.0), self.max_s))
        self._target = statistics.median(self._delays)
        self._seen += 1
        if self._seen <= (self._delays.maxlen or 1):  # the first frames (slow to encode) set it directly
            self._hold, self._at = self._target, time.monotonic()

    def hold(self, now: float | None = None) -> float:
        """The hold now, in seconds."""
        now = time.monotonic() if now is None else now
        if self._target is not None:
            step = self.slew * max(now - self._at, 0.0)
            self._hold += max(-step, min(step, self._target - self._hold))
        self._at = now
        return self._hold

    @property
    def target(self) -> float | None:
        return self._target


class AudioRelay:
    """One publisher's audio: packets in (from a tap), held by ``sync``, out to every subscribed track.

    A packet is due at the time it would have arrived without jitter (its media time plus the
    median transit of the last ``window`` packets: a publisher that sends in bursts, as a loaded
    machine does, leaves here evenly paced, so listeners need no deep jitter buffer) plus the
    hold. One that arrives after that leaves at once. Packets leave in timestamp order; one that
    arrives after a later one has left, or twice, is dropped (``late``): listeners conceal a
    missing packet, but not one that goes back in time. The queue holds at most ``max_packets`` (the hold is
    bounded, so this is only reached if the clock stalls); past it the oldest leaves at once.
    """

    def __init__(self, sync: LipSync, max_packets: int = 512, window: int = 100) -> None:
        self.sync = sync
        self.max_packets = max_packets
        self._queue: list[tuple[int, float, AudioPacket]] = []  # (timestamp, due without the hold, packet)
        self._transits: deque[float] = deque(maxlen=window)
        self._transit = 0.0
        self._tracks: set[OpusTrack] = set()
        self._wake = asyncio.Event()
        self._last_out: int | None = None
        self.closed = False
        self.counts = {"in": 0, "out": 0, "late": 0, "overflow": 0}

    def push(self, packet: AudioPacket) -> None:
        self.counts["in"] += 1
        i = bisect.bisect_left(self._queue, packet.timestamp, key=lambda e: e[0])
        duplicate = i < len(self._queue) and self._queue[i][0] == packet.timestamp
        if duplicate or self._last_out is not None and packet.timestamp <= self._last_out:
            self.counts["late"] += 1
            return
        self._queue.insert(i, (packet.timestamp, self._paced(packet), packet))
        if len(self._queue) > self.max_packets:
            self.counts["overflow"] += 1
            self._send(self._queue.pop(0)[2])
        self._wake.set()

    def _paced(self, packet: AudioPacket) -> float:
        """When ``packet`` would have arrived at the median transit of recent packets."""
        media = packet.timestamp / OPUS_RATE
        transit = packet.arrived - media
        if self._transits and abs(transit - self._transit) > RESET_S:  # a new timeline (publisher restarted)
            self._transits.clear()
        self._transits.append(transit)
        self._transit = statistics.median(self._transits)
        return media + self._transit

    async def run(self) -> None:
        """Release packets when due, until cancelled."""
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
                continue
            now = time.monotonic()
            wait = self._queue[0][1] + self.sync.hold(now) - now
            if wait > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            self._send(self._queue.pop(0)[2])

    def _send(self, packet: AudioPacket) -> None:
        self._last_out = packet.timestamp
        self.counts["out"] += 1
        for track in list(self._tracks):
            track.put(packet)

    def subscribe(self) -> OpusTrack:
        """A new output track (for a peer connection's audio sender); it ends when the relay closes."""
        track = OpusTrack(self)
        if self.closed:
            track.put(None)
        self._tracks.add(track)
        return track

    def unsubscribe(self, track: OpusTrack) -> None:
        self._tracks.discard(track)

    @property
    def listeners(self) -> int:
        return len(self._tracks)

    def close(self) -> None:
        self.closed = True
        for track in list(self._tracks):
            track.put(None)
        self._tracks.clear()

    def describe(self) -> dict[str, Any]:
        """For stream status: packets in/out/late, listeners, the hold now and its target (ms)."""
        target = self.sync.target
        return {**self.counts, "listeners": self.listeners, "hold_ms": round(self.sync.hold() * 1e3, 1),
                "target_ms": None if target is None else round(target * 1e3, 1)}


class OpusTrack(MediaStreamTrack):
    """An audio track of encoded Opus packets: aiortc sends them without decoding or encoding."""

    kind = "audio"

    def __init__(self, relay: AudioRelay | None = None, size: int = TRACK_QUEUE) -> None:
        super().__init__()
        self._relay = relay
        self._queue: asyncio.Queue[AudioPacket | None] = asyncio.Queue(size)
        self._origin: int | None = None
        self.sent = 0

    def put(self, packet: AudioPacket | None) -> None:
        """Queue ``packet`` (None ends the track); a full queue loses its oldest packet."""
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(packet)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        if self._origin is None:
            self._origin = packet.timestamp
        out = av.Packet(packet.data)
        out.pts = packet.timestamp - self._origin
        out.time_base = TIME_BASE
        self.sent += 1
        return out

    def stop(self) -> None:
        super().stop()
        if self._relay is not None:
            self._relay.unsubscribe(self)


class MediaClock:
    """A publisher's shared start: its video and audio tracks each wait for ``start + media time``,
    so a file's picture and sound leave in step whichever track asks first."""

    def __init__(self) -> None:
        self.start: float | None = None

    async def wait_until(self, media_s: float) -> None:
        if self.start is None:
            self.start = time.monotonic()
        wait = self.start + media_s - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


class PacedAudioTrack(MediaStreamTrack):
    """Sends audio from ``next_chunk()`` in real time on ``clock``: an ``av.AudioFrame`` (aiortc encodes
    it to Opus) or an Opus ``av.Packet`` (sent as it is), each with ``pts``/``time_base``; None ends it."""

    kind = "audio"

    def __init__(self, next_chunk: Callable[[], Awaitable[av.AudioFrame | av.Packet | None]],
                 clock: MediaClock | None = None) -> None:
        super().__init__()
        self._next = next_chunk
        self.clock = clock or MediaClock()
        self.sent = 0

    async def recv(self) -> av.AudioFrame | av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        chunk = await self._next()
        if chunk is None:
            self.stop()
            raise MediaStreamError
        if chunk.pts is not None and chunk.time_base is not None:
            await self.clock.wait_until(float(chunk.pts * chunk.time_base))
        self.sent += 1
        return chunk
