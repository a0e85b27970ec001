"""Pure logic of the audio pass-through: timestamps, the lip-sync hold, the relay, SDP, the sync measure."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ooblex.frame import Frame
from ooblex.media.avsync import BeepDetector, FlashDetector, SyncSignal, offsets
from ooblex.webrtc.audio import AudioPacket, AudioRelay, LipSync, OpusTrack, _Unwrap
from ooblex.wire import decode, encode


def test_rtp_timestamps_unwrap_across_wraparound_and_reordering() -> None:
    unwrap = _Unwrap()
    start = 0xFFFFFFFF - 959
    assert unwrap(start) == 0
    assert unwrap((start + 960) & 0xFFFFFFFF) == 960  # wrapped
    assert unwrap((start + 2880) & 0xFFFFFFFF) == 2880
    assert unwrap((start + 1920) & 0xFFFFFFFF) == 1920  # a late packet keeps its place


def test_lip_sync_follows_the_median_slewed_and_bounded() -> None:
    sync = LipSync(max_s=0.5, window=5, slew=0.05)
    assert sync.hold(0.0) == 0.0  # nothing known yet: no hold
    sync.observe(0.300)  # a stream's first frame: slow
    assert sync.hold() == pytest.approx(0.300)
    for d in (0.100, 0.100, 0.900):  # until the window is full, the median is followed at once
        sync.observe(d)
    assert sync.hold() == pytest.approx(0.200)
    sync.observe(0.100)  # (the outlier was clamped to max_s)
    t0 = sync._at
    assert sync.target == pytest.approx(0.100) and sync.hold(t0) == pytest.approx(0.100)
    for _ in range(5):
        sync.observe(0.300)
    assert sync.target == pytest.approx(0.300)
    assert sync.hold(t0 + 1.0) == pytest.approx(0.150)  # from now on 50 ms per second towards it
    assert sync.hold(t0 + 10.0) == pytest.approx(0.300)  # and no further
    sync.observe(-1.0)
    assert all(0.0 <= d <= 0.5 for d in sync._delays)


def packet(ts: int, arrived: float = 0.0) -> AudioPacket:
    return AudioPacket(ts, ts.to_bytes(4, "big"), arrived)


async def test_relay_holds_orders_fans_out_and_drops_only_the_too_late() -> None:
    sync = LipSync()
    sync.observe(0.05)
    relay = AudioRelay(sync)
    a, b = relay.subscribe(), relay.subscribe()
    runner = asyncio.create_task(relay.run())
    t = time.monotonic()
    relay.push(packet(960, t))
    relay.push(packet(0, t))  # reordered on the way: leaves first
    await asyncio.sleep(0.02)
    assert relay.counts["out"] == 0, "released before its hold"
    first = await asyncio.wait_for(a.recv(), 1)
    assert time.monotonic() - t >= 0.035  # the hold, less half the packets' spacing (their paced arrival)
    second = await asyncio.wait_for(a.recv(), 1)
    assert (first.pts, second.pts) == (0, 960) and bytes(second) == (960).to_bytes(4, "big")
    assert bytes(await b.recv()) == (0).to_bytes(4, "big")  # every listener gets every packet
    relay.push(packet(480, t))  # older than what already left: dropped, not sent back in time
    relay.push(packet(960, t))  # a duplicate
    assert relay.counts["late"] == 2
    b.stop()
    assert relay.listeners == 1
    relay.close()
    with pytest.raises(Exception):  # noqa: B017 - aiortc's MediaStreamError
        await asyncio.wait_for(a.recv(), 1)
    runner.cancel()


async def test_relay_evens_out_a_bursty_publisher_within_the_hold() -> None:
    sync = LipSync()
    sync.observe(0.06)  # the video takes 60 ms: jitter up to that costs the audio nothing
    relay = AudioRelay(sync)
    track = relay.subscribe()
    runner = asyncio.create_task(relay.run())
    out: list[float] = []

    async def listen() -> None:
        while True:
            await track.recv()
            out.append(time.monotonic())
    listener = asyncio.create_task(listen())
    t0 = time.monotonic()
    for burst in range(8):  # five 20 ms packets at once, every 100 ms (a publisher starved of CPU)
        await asyncio.sleep(max(0.0, t0 + burst * 0.1 - time.monotonic()))
        for k in range(5):
            relay.push(packet((burst * 5 + k) * 960, time.monotonic()))
    await asyncio.sleep(0.2)
    listener.cancel()
    runner.cancel()
    gaps = np.diff(out[10:]) * 1e3  # once the median transit has settled
    assert len(out) == 40 and np.median(gaps) == pytest.approx(20, abs=3) and gaps.max() < 40, gaps.round(1)


async def test_a_stalled_output_track_loses_its_oldest_packets_not_the_relay() -> None:
    track = OpusTrack(size=3)
    for ts in range(0, 960 * 5, 960):
        track.put(packet(ts))
    assert (await track.recv()).pts == 0  # the first it hands out starts its own timeline
    assert bytes(await track.recv()) == (960 * 3).to_bytes(4, "big")


def test_offer_audio_direction_and_opus() -> None:
    from ooblex.webrtc.sdp import check_offer

    base = ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\na=sendrecv\r\n"
            "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
            "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:actpass\r\n")
    assert check_offer(base).audio_direction == "inactive" and not check_offer(base).sends_audio
    audio = "m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n" \
            "a=rtpmap:0 PCMU/8000\r\na=sendonly\r\n"
    offer = check_offer(base + audio)
    assert offer.sends_audio and not offer.wants_audio_back
    pcmu = check_offer(base + audio.replace("opus/48000/2", "G722/8000"))
    assert not pcmu.sends_audio, "only Opus is passed through"


def test_frame_media_time_survives_the_wire() -> None:
    frame = Frame(image=np.zeros((4, 4, 3), np.uint8), seq=3)
    frame.pts = 1.25
    assert decode(encode(frame, "raw")).pts == 1.25
    assert decode(encode(Frame(image=None))).pts is None


def test_sync_measure_pairs_flashes_with_beeps() -> None:
    signal = SyncSignal(period=1.0, flash=0.1, fps=30)
    flash, beep = FlashDetector(signal), BeepDetector(signal)
    seen = [t for n in range(90) if (t := flash.feed(float(signal.image(n).mean()), 10.0 + n / 30)) is not None]
    assert seen == pytest.approx([10.0, 11.0, 12.0])
    # frames 30-32 (the second flash's start) were dropped: frame 33's number puts the flash back at 11.0
    late = FlashDetector(signal)
    late.feed(16, 10.9)
    assert late.feed(235, 11.2, media_t=33 / 30) == pytest.approx(11.1)
    heard = []
    for start in range(0, 3 * 48000, 960):  # the sound arrives 30 ms after the picture
        heard += beep.feed(signal.samples(start, 960), 10.03 + start / 48000)
    assert heard == pytest.approx([10.03, 11.03, 12.03], abs=1e-3)
    assert offsets(seen, heard) == pytest.approx([-30.0, -30.0, -30.0], abs=1.0)  # sound late: negative
