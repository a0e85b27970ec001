"""WebRTC through the gateway with real aiortc peers, inside a network namespace (see netns.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from netns import in_netns
from ooblex.webrtc import framecode
from ooblex.webrtc.client import ImageTrack, WhepClient, WhipClient

pytestmark = pytest.mark.timeout(120)


def moving_picture(width: int = 640, height: int = 480):  # noqa: ANN201
    """A textured picture that changes every frame (encoders need something to encode)."""
    base = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    i = 0

    def next_image() -> np.ndarray:
        nonlocal i
        i += 1
        return np.roll(base, i * 4, axis=1)
    return next_image


async def collect_numbers(track, count: int, sent: dict[int, float] | None = None,  # noqa: ANN001
                          timeout: float = 20.0) -> tuple[list[int], list[float]]:
    """Frame numbers read back from ``count`` received frames, and their round trips (s) if ``sent``."""
    numbers: list[int] = []
    rtts: list[float] = []
    deadline = time.monotonic() + timeout
    while len(numbers) < count and time.monotonic() < deadline:
        frame = await asyncio.wait_for(track.recv(), timeout)
        n = framecode.read(frame.to_ndarray(format="rgb24"))
        if n is not None:
            numbers.append(n)
            if sent is not None and n in sent:
                rtts.append(time.time() - sent[n])
    return numbers, rtts


@in_netns
@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_whip_round_trip_identity(codec: str) -> None:
    from gateway_server import running_gateway

    with running_gateway() as gw:
        track = ImageTrack(moving_picture(), fps=30)
        async with WhipClient(gw.url + "/whip/identity", track, codec=codec) as client:
            await client.wait_connected()
            numbers, rtts = await collect_numbers(client.remote, 60, track.sent)
            streams = gw.state.engine.streams
            assert client.stream_id in streams
            assert len(numbers) == 60, f"only {len(numbers)} numbered frames came back"
            assert numbers == sorted(numbers), "frames came back out of order"
            assert numbers[-1] - numbers[0] >= 59, "frames were lost on the way"
            print(f"{codec}: {len(numbers)} frames, last rtt {np.median(rtts) * 1e3:.1f} ms (median)")
        await asyncio.sleep(0.5)
        assert client.stream_id not in gw.state.engine.streams, "DELETE did not close the stream"
        assert not gw.state.sessions.items
