"""Pure logic of the live widget: the overlay schema, the side channel's framing and frame codecs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from ooblex.jupyter import frames
from ooblex.jupyter.channel import (
    BINARY,
    TEXT,
    ProtocolError,
    channel_file,
    frame,
    kernel_id,
    pack,
    read_message,
    unpack,
)
from ooblex.jupyter.overlay import MAX_BOXES, overlay


def test_overlay_keeps_the_documented_items():
    result = {"boxes": [{"box": [1, 2, 30, 40], "label": "face", "score": 0.5, "color": "#ff0000",
                         "points": [[3, 4], {"xy": [5, 6]}]}],
              "points": [[7, 8]], "labels": ["cat 0.93", {"text": "dog", "score": 0.41}], "size": [320, 240],
              "count": 1}
    assert overlay(result) == {
        "boxes": [{"box": [1.0, 2.0, 30.0, 40.0], "label": "face", "score": 0.5, "color": "#ff0000",
                   "points": [[3.0, 4.0], [5.0, 6.0]]}],
        "points": [[7.0, 8.0]], "labels": ["cat 0.93", "dog 0.41"], "size": [320.0, 240.0]}


@pytest.mark.parametrize("result", [None, "text", {"count": 3}, {"boxes": "no"}, {"boxes": [{"box": [1, 2]}]},
                                    {"points": [[1, "x"]]}, {"labels": [None, 3.5j]}])
def test_nothing_to_draw_is_none(result):
    assert overlay(result) is None


def test_overlay_skips_bad_items_and_is_bounded():
    result = {"boxes": [{"box": [0, 0, 1, 1], "color": "red; background: url(x)", "label": "x" * 500},
                        {"box": [True, 0, 1, 1]}] + [{"box": [0, 0, 1, 1]}] * (MAX_BOXES + 50),
              "size": [0, 10]}
    out = overlay(result)
    assert len(out["boxes"]) == MAX_BOXES - 1  # the bool box is skipped, the rest cut at the limit
    assert out["boxes"][0]["color"] is None and len(out["boxes"][0]["label"]) == 64 and out["size"] is None


async def test_framing_round_trip_and_limits():
    body = pack({"type": "frame", "seq": 3}, [b"abc", b"", b"defg"])
    header, payloads = unpack(body)
    assert header == {"type": "frame", "seq": 3, "sizes": [3, 0, 4]} and [bytes(p) for p in payloads] == [
        b"abc", b"", b"defg"]
    reader = asyncio.StreamReader()
    reader.feed_data(frame(TEXT, b'{"a":1}') + frame(BINARY, body) + frame(BINARY, b"x" * 100) + frame(7, b""))
    assert await read_message(reader) == (TEXT, b'{"a":1}')
    assert await read_message(reader) == (BINARY, body)
    with pytest.raises(ProtocolError, match="100 bytes"):
        await read_message(reader, max_bytes=99)


@pytest.mark.parametrize("body, why", [(b"\0\0", "shorter"), (b"\0\0\0\x09{}", "header of 9"),
                                       (b"\0\0\0\x02[]", "not a JSON object"), (b"\0\0\0\x01{", "not JSON"),
                                       (b'\0\0\0\x0d{"sizes":[5]}abc', "do not add up")])
def test_bad_binary_messages_are_protocol_errors(body, why):
    with pytest.raises(ProtocolError, match=why):
        unpack(body)


def test_a_browser_frame_without_sizes_is_one_payload():
    header, payloads = unpack(b'\0\0\0\x02{}' + b"jpeg")
    assert header == {} and [bytes(p) for p in payloads] == [b"jpeg"]


def test_the_announcement_sits_next_to_the_connection_file():
    assert channel_file("/run/user/0/jupyter/runtime/kernel-abc-1.json").as_posix() == \
        "/run/user/0/jupyter/runtime/kernel-abc-1.ooblex.json"
    assert kernel_id("/x/kernel-0b8c-11ef.json") == "0b8c-11ef" and kernel_id("/x/my-kernel.json") is None


def test_raw_codec_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), np.uint8)
    meta, data = frames.encode(img, "raw", 80)
    assert meta == {"format": "rgba", "width": 7, "height": 5} and len(data) == 5 * 7 * 4
    msg = frames.incoming({"seq": 1, **meta}, [data])
    assert (frames.decode(msg) == img).all()


def test_face_detect_results_carry_the_overlay_schema():
    pytest.importorskip("dlib")
    import cv2

    from ooblex_models.detect import face_detect

    from .kernel_frontend import ROOT

    photo = cv2.cvtColor(cv2.imread(str(ROOT / "tests" / "data" / "one_face.jpg")), cv2.COLOR_BGR2RGB)
    result = face_detect(photo)
    drawn = overlay(result)
    assert len(drawn["boxes"]) == 1 and drawn["boxes"][0]["label"] == "face"
    assert drawn["boxes"][0]["box"] == [float(v) for v in result["faces"][0]["box"]]
    assert len(drawn["boxes"][0]["points"]) == 68 and drawn["size"] == [640.0, 480.0]


def test_socket_directories_of_dead_kernels_are_swept(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys
    import tempfile

    from ooblex.jupyter.channel import _sweep

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"ooblex-live-{dead.stdout.strip()}-abc"
    alive = tmp_path / f"ooblex-live-{os.getpid()}-def"
    other = tmp_path / "ooblex-live-notapid-x"
    for d in (gone, alive, other):
        d.mkdir()
    _sweep()
    assert not gone.exists() and alive.exists() and other.exists()


def test_ob_live_shows_every_option_in_its_signature_and_docstring() -> None:
    """Shift-Tab on ``ob.live`` shows its options: the same parameters as the widget's ``live``, each documented."""
    import inspect

    import ooblex as ob
    from ooblex.jupyter import registry

    top, inner = inspect.signature(ob.live).parameters, inspect.signature(registry.live).parameters
    assert list(top) == list(inner)
    assert all(top[k].default == inner[k].default for k in top)
    doc = inspect.getdoc(ob.live)
    assert all(f"``{k}``" in doc for k in top)


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_recording_saves_a_playable_file_at_the_pace_it_was_captured(tmp_path, suffix: str) -> None:
    import av

    from ooblex.jupyter.recording import Recording, Shot

    rec = Recording(seconds=60)
    t0 = 1_000_000.0
    for i in range(10):  # 10 frames over 0.9 s (10 fps), brightness rising
        img = np.full((48, 64, 3), 20 * i, np.uint8)
        rec.add(Shot(img, img, None, None, i, 5.0, captured=t0 + 0.1 * i))
    rec.stop()
    path = rec.save(tmp_path / f"clip{suffix}")
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(stream)]
    assert len(frames) == 10
    assert [round(t, 1) for t, _ in frames] == [round(0.1 * i, 1) for i in range(10)]
    assert [round(float(img.mean()) / 20) for _, img in frames] == list(range(10))
    with av.open(str(path)) as c:
        assert not c.streams.audio  # no sound was heard: video only
    with pytest.raises(ValueError, match="use one of"):
        rec.save(tmp_path / "clip.txt")
    with pytest.raises(ValueError, match="no frames"):
        Recording(seconds=1).save(tmp_path / "empty.mp4")


def _tone_recording(tone_from: float, tone_to: float):
    """10 frames over 0.9 s and sound heard from 1 s before to 1.2 s after the first frame (20 ms chunks):
    silent but for a 1 kHz tone from ``tone_from`` to ``tone_to`` seconds after the first frame."""
    from ooblex.jupyter.recording import SOUND_RATE, Recording, Shot

    rec = Recording(seconds=60)
    t0, n = rec.started, SOUND_RATE // 50
    for i in range(10):
        img = np.full((48, 64, 3), 20 * i, np.uint8)
        rec.add(Shot(img, img, None, None, i, 5.0, captured=t0 + 0.1 * i))
    for k in range(-50, 60):
        t = np.arange(n) / SOUND_RATE + k * 0.02
        pcm = (np.sin(2 * np.pi * 1000 * t) * 16000 * ((t >= tone_from) & (t < tone_to))).astype(np.int16)
        rec.add_sound(np.stack([pcm, pcm], 1), t0 + k * 0.02)
    return rec.stop()


@pytest.mark.parametrize("suffix", [".mp4", ".webm"])
def test_recorded_sound_is_saved_in_step_with_the_frames_and_cut_to_them(tmp_path, suffix: str) -> None:
    import av

    from ooblex.media.avsync import mono

    rec = _tone_recording(0.5, 0.6)
    path = rec.save(tmp_path / f"clip{suffix}")
    with av.open(str(path)) as c:
        video, audio = c.streams.video[0], c.streams.audio[0]
        assert audio.codec_context.name == {".mp4": "aac", ".webm": "opus"}[suffix]
        last_frame = max(f.time for f in c.decode(video))
    with av.open(str(path)) as c:
        chunks = [(f.time, mono(f), f.sample_rate) for f in c.decode(c.streams.audio[0])]
    rate = chunks[0][2]
    samples = np.concatenate([m for _, m, _ in chunks])
    loud = np.flatnonzero(np.abs(samples) > 0.1) / rate + chunks[0][0]
    assert abs(chunks[0][0]) < 0.005 and abs(loud[0] - 0.5) < 0.005 and abs(loud[-1] - 0.6) < 0.005
    end = chunks[0][0] + len(samples) / rate
    assert abs(last_frame - 0.9) < 0.01 and 1.0 <= end < 1.0 + 0.03  # the frames' span plus one frame
    gif = rec.save(tmp_path / "clip.gif")
    with av.open(str(gif)) as c:
        assert len(list(c.decode(c.streams.video[0]))) == 10 and not c.streams.audio


def test_a_recording_keeps_sound_only_from_just_before_it_started_until_it_is_over() -> None:
    from ooblex.jupyter.recording import SOUND_LEAD_S, SOUND_RATE, Recording, Shot

    pcm = np.zeros((SOUND_RATE // 50, 2), np.int16)
    rec = Recording(seconds=60, max_frames=1)
    rec.add_sound(pcm, rec.started - SOUND_LEAD_S - 1)
    assert not rec.has_sound  # heard long before the recording's first frames were captured
    rec.add_sound(pcm, rec.started - SOUND_LEAD_S / 2)
    assert rec.has_sound
    stopped = Recording(seconds=60).stop()
    stopped.add_sound(pcm, time.time() + 1)
    full = Recording(seconds=60, max_frames=1)
    full.add(Shot(None, np.zeros((8, 8, 3), np.uint8), None, None, 0, None, captured=time.time()))
    full.add_sound(pcm, time.time())
    assert not stopped.has_sound and not full.has_sound


def test_a_files_sound_is_handed_on_as_far_as_its_frames_on_their_clock(tmp_path, caplog) -> None:
    import av

    from ooblex.jupyter.feed import Soundtrack
    from ooblex.media.audio import AudioInput
    from ooblex.media.avsync import SyncSignal

    clip = SyncSignal(period=0.5).write(tmp_path / "sync.mp4", 1.0)
    with av.open(str(clip)) as c:
        audio = AudioInput.probe(c, str(clip))
    heard: list[tuple[float, np.ndarray]] = []
    sound = Soundtrack(audio, lambda samples, at: heard.append((at, samples)))
    sound.play(0.0, 0.1, 1000.0)  # the first frame, shown at 1000.0; the next one is 0.1 s on
    covered = sum(len(s) for _, s in heard) / 48000
    assert abs(heard[0][0] - 1000.0) < 0.001 and 0.1 <= covered < 0.1 + 0.02
    assert all(s.dtype == np.int16 and s.shape[1] == 2 for _, s in heard)
    sound.play(0.1, 0.1, 1005.0)  # a stall of 4.9 s: the rest of the sound waits with the frames
    assert abs(heard[-1][0] + len(heard[-1][1]) / 48000 - 1005.1) < 0.02 and heard[-1][0] > 1005.0
    sound.close()

    def unreadable():
        raise OSError(5, "Input/output error")

    broken = Soundtrack(AudioInput(str(clip), audio.index, "aac", 0.0, 1.0, reopen=unreadable),
                        lambda *_: pytest.fail("nothing can be heard"))
    broken.play(0.0, 0.1, 1000.0)
    broken.play(0.1, 0.1, 1000.1)  # warned once, the pictures go on
    assert [r.getMessage() for r in caplog.records if "cannot be read" in r.getMessage()] == [
        f"ooblex live widget: the sound of {str(clip)!r} cannot be read, going on without it: Input/output error"]
    broken.close()
