"""The A/V sync test signal over WebRTC: tracks that send it, and a probe that measures it on arrival.

``signal_tracks`` makes a numbered video track and an audio track of ``SyncSignal`` on one clock:
the frame that turns white and the audio frame whose first sample starts the tone leave the
sender at the same instant. ``SyncProbe`` watches a received video track (each decoded frame's
arrival, its brightness and frame number) and taps received Opus packets (each packet's arrival;
decoded here, not by aiortc, whose audio jitter buffer would add its own ~80 ms), then pairs
flashes with beeps: ``offsets()`` in ms, positive when the sound arrives first (``media.avsync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from ..media.avsync import BeepDetector, FlashDetector, SyncSignal, mono, offsets
from . import framecode
from .audio import OPUS_RATE, AudioPacket, MediaClock, PacedAudioTrack
from .client import ImageTrack

#: Samples per audio frame sent (20 ms, Opus's usual packet).
FRAME_SAMPLES = 960


def signal_tracks(signal: SyncSignal, clock: MediaClock | None = None) -> tuple[ImageTrack, PacedAudioTrack]:
    """A numbered video track and an audio track of ``signal``, in step on ``clock``."""
    clock = clock or MediaClock()
    video = ImageTrack(lambda: signal.image(video.count), fps=signal.fps, clock=clock)
    position = 0

    async def next_chunk() -> av.AudioFrame:
        nonlocal position
        samples = signal.samples(position, FRAME_SAMPLES)
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
        frame.sample_rate, frame.pts = OPUS_RATE, position
        frame.time_base = fractions.Fraction(1, OPUS_RATE)
        position += FRAME_SAMPLES
        return frame
    return video, PacedAudioTrack(next_chunk, clock)


class SyncProbe:
    """Measures flash/beep offsets at a receiver: ``watch(video_track)`` and ``on_packet`` (a tap)."""

    def __init__(self, signal: SyncSignal) -> None:
        self.signal = signal
        self.flashes: list[float] = []
        self.beeps: list[float] = []
        self.frames = 0
        self.packets = 0
        #: Sound that never arrived, in samples (by RTP timestamps: a gap before a packet).
        self.missing = 0
        self._next_ts: int | None = None
        self._flash = FlashDetector(signal)
        self._beep = BeepDetector(signal)
        self._decoder = av.CodecContext.create("libopus", "r")

    async def watch(self, track: MediaStreamTrack) -> None:
        """Read ``track`` until it ends, noting when each flash arrived."""
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                now = time.monotonic()
                image = frame.to_ndarray(format="rgb24")
                self.frames += 1
                n = framecode.read(image)
                media_t = None if n is None else n / self.signal.fps
                onset = self._flash.feed(level_of(image), now, media_t)
                if onset is not None:
                    self.flashes.append(onset)

    def on_packet(self, packet: AudioPacket) -> None:
        """One received Opus packet: decode it, note when a beep started (its samples play from arrival)."""
        self.packets += 1
        if self._next_ts is not None and packet.timestamp > self._next_ts:
            self.missing += packet.timestamp - self._next_ts
        at, samples = packet.arrived, 0
        for frame in self._decoder.decode(av.Packet(packet.data)):
            x = mono(frame)
            self.beeps.extend(self._beep.feed(x, at))
            at += len(x) / (frame.sample_rate or OPUS_RATE)
            samples += frame.samples
        self._next_ts = packet.timestamp + samples

    def offsets(self, after: float = 0.0) -> list[float]:
        """Video minus audio time (ms) for each beep heard after monotonic time ``after``."""
        return offsets([v for v in self.flashes if v >= after], [a for a in self.beeps if a >= after],
                       self.signal.period)


async def watch_for(probe: SyncProbe, track: MediaStreamTrack, seconds: float) -> None:
    """Run ``probe.watch(track)`` for ``seconds``."""
    task = asyncio.create_task(probe.watch(track))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def level_of(image: np.ndarray) -> float:
    """Mean level of the picture's centre (the frame number strip at the top stays out of it)."""
    h, w = image.shape[:2]
    return float(image[h // 4: 3 * h // 4, w // 4: 3 * w // 4].mean())
