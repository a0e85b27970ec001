"""The capacity benchmark's replay client (``benchmarks/replay.py``): its loop decodes, and returned frames
are paired with the frames sent, whatever constant a server adds and a tick of rounding."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import replay  # noqa: E402
from capacity import PICTURES  # noqa: E402


@pytest.mark.parametrize("offset", [0, 123_456_789, 2**32 - 1500])
def test_returned_frames_are_paired_with_their_own_despite_drops_and_rounding(offset: int) -> None:
    rng = random.Random(offset)
    sent = {replay.stamp(n) % replay.WRAP: (n, float(n)) for n in range(600)}
    learnt, paired, returned_count = replay.Offset(), [], 0
    for n in range(40, 600):
        if rng.random() < 0.3:  # the server dropped it (latest frame wins)
            continue
        returned_count += 1
        returned = (replay.stamp(n) + offset - rng.choice((0, 1))) % replay.WRAP  # stock aiortc rounds down a tick
        if learnt.value is None:
            learnt.learn(returned, {s: v for s, v in sent.items() if v[0] <= n + 3})
            continue
        paired.append((n, learnt.find(returned, sent)[0]))
    assert len(paired) >= returned_count - 10, "the offset was not learnt from the first few frames"
    assert all(n == got for n, got in paired)


def test_a_wrong_offset_is_not_kept_when_frames_are_evenly_spaced() -> None:
    """Without the capture jitter every shift by whole frames would fit: the jitter is what decides."""
    sent = {n * 3000: (n, float(n)) for n in range(300)}
    learnt = replay.Offset()
    for n in range(100, 110):
        learnt.learn(n * 3000 + 77, sent)
    assert learnt.value is None


@pytest.mark.parametrize("picture", sorted(PICTURES))
def test_the_loop_starts_on_its_only_keyframe_and_decodes_whole(picture: str) -> None:
    """Every picture the benchmark offers makes a seamless loop: no scene cut for the encoder to key on."""
    import av

    frames = replay.loop_of_frames(PICTURES[picture](), frames=160, warmup=10)
    decoder = av.CodecContext.create("vp8", "r")
    decoded = [f for data in frames + frames[:5] for f in decoder.decode(av.Packet(data))]
    assert len(frames) == 160 and len(decoded) == 165  # round the loop and on, nothing undecodable

