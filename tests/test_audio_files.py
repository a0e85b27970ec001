"""Files and jobs keep their soundtrack: copied (or re-encoded where the container needs it), in sync."""

from __future__ import annotations

import fractions
import subprocess
import sys
import time
from pathlib import Path

import av
import httpx
import numpy as np
import pytest

import ooblex as ob
from ooblex.media.avsync import BeepDetector, FlashDetector, SyncSignal, mono, offsets

from .cluster_fixtures import ROOT, env, needs_redis, redis_server, start_worker, stop  # noqa: F401
from .gateway_server import running_gateway

SIGNAL = SyncSignal(width=192, height=144)


@ob.tensor_thread
def darken(frame):
    """Changes the picture (so the output is really processed) but keeps flashes visible."""
    return (frame * 0.9).astype(np.uint8)


def measure(path: Path) -> dict:
    """The file's codecs, its audio packets and duration, and the flash/beep offsets (ms)."""
    flash, beep = FlashDetector(SIGNAL), BeepDetector(SIGNAL)
    video, audio = [], []
    out: dict = {}
    with av.open(str(path)) as c:
        out["codecs"] = [s.codec_context.name for s in c.streams]
        for f in c.decode(c.streams.video[0]):
            t = flash.feed(float(f.to_ndarray(format="rgb24").mean()), float(f.pts * f.time_base))
            if t is not None:
                video.append(t)
    with av.open(str(path)) as c:
        out["packets"] = [bytes(p) for p in c.demux(c.streams.audio[0]) if p.size] if c.streams.audio else []
    with av.open(str(path)) as c:
        for f in c.decode(audio=0) if c.streams.audio else []:
            audio += beep.feed(mono(f), float(f.pts * f.time_base))
            out["audio_s"] = float(f.pts * f.time_base) + f.samples / f.sample_rate
    out["offsets"] = offsets(video, audio)
    return out


def test_run_copies_the_soundtrack_untouched_and_in_sync(tmp_path: Path) -> None:
    src = SIGNAL.write(tmp_path / "talk.mp4", 4.0)
    out = tmp_path / "out.mp4"
    ob.run(darken, src, out)
    before, after = measure(src), measure(out)
    assert after["codecs"][1:] == ["aac"], after["codecs"]
    assert after["packets"] == before["packets"], "the AAC packets were not copied as they are"
    assert abs(after["audio_s"] - before["audio_s"]) < 0.03
    assert len(after["offsets"]) == 4 and max(abs(o) for o in after["offsets"]) <= 2.0, after["offsets"]


@pytest.mark.parametrize("source,sink,copied", [("talk.webm", "out.mp4", True), ("talk.mp4", "out.webm", False),
                                                ("talk.webm", "out.mkv", True)])
def test_containers_that_cannot_hold_the_codec_get_it_re_encoded(tmp_path: Path, source: str, sink: str,
                                                                  copied: bool) -> None:
    src = SIGNAL.write(tmp_path / source, 3.0)
    out = tmp_path / sink
    ob.run(darken, src, out)
    before, after = measure(src), measure(out)
    assert (after["packets"] == before["packets"]) is copied
    assert abs(after["audio_s"] - before["audio_s"]) < 0.05, (after["audio_s"], before["audio_s"])
    # Opus output starts with its codec delay; all later beeps line up within a millisecond or two.
    assert len(after["offsets"]) == 3 and float(np.median(np.abs(after["offsets"]))) <= 3.0, after["offsets"]


def test_variable_frame_rate_keeps_each_frames_time(tmp_path: Path) -> None:
    src = tmp_path / "vfr.mkv"
    times = [0.0, 0.04, 0.05, 0.2, 0.21, 0.5, 0.9, 1.0]
    with av.open(str(src), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.time_base = fractions.Fraction(1, 1000)
        for i, t in enumerate(times):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
            f.pts = round(t * 1000)
            c.mux(s.encode(f))
        c.mux(s.encode())
    out = tmp_path / "out.mp4"
    ob.run(darken, src, out)
    with av.open(str(out)) as c:
        got = [float(f.pts * f.time_base) for f in c.decode(c.streams.video[0])]
    assert got == pytest.approx(times, abs=0.002)


def test_cli_run_keeps_the_sound(tmp_path: Path) -> None:
    src = SIGNAL.write(tmp_path / "talk.mp4", 2.0)
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-m", "ooblex", "run", "identity", "--source", str(src), "--sink", str(out),
                           "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    after = measure(out)
    assert after["codecs"][1:] == ["aac"] and abs(after["audio_s"] - 2.0) < 0.05


def test_gateway_job_keeps_an_audio_track_of_the_inputs_duration(tmp_path: Path) -> None:
    from ooblex.gateway import Settings

    src = SIGNAL.write(tmp_path / "talk.webm", 3.0)
    with running_gateway(threads=[darken], settings=Settings(media_root=str(tmp_path))) as gw, \
            httpx.Client(base_url=gw.url) as http:
        r = http.post("/api/v1/jobs", json={"thread": "darken", "source": "talk.webm", "sink": "out/talk.mp4"})
        assert r.status_code == 201, r.text
        deadline = time.time() + 60
        while (job := http.get(r.headers["Location"]).json())["state"] == "running" and time.time() < deadline:
            time.sleep(0.2)
        assert job["state"] == "done", job
    before, after = measure(src), measure(tmp_path / "out" / "talk.mp4")
    assert after["codecs"][1] == "opus" and after["packets"] == before["packets"]
    assert abs(after["audio_s"] - before["audio_s"]) < 0.03
    assert len(after["offsets"]) == 3 and float(np.median(np.abs(after["offsets"]))) <= 3.0


@needs_redis
@pytest.mark.timeout(120)
def test_process_on_a_cluster_keeps_the_sound(redis_server, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001, F811
    from .cluster_fixtures import SECRET

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    src = SIGNAL.write(tmp_path / "talk.mp4", 2.0)
    worker = start_worker(redis_server.url)
    try:
        result = ob.process("identity", str(src), cluster=redis_server.url, sink=str(tmp_path / "out.mp4"),
                            progress=False, no_workers_s=30)
    finally:
        stop(worker)
    assert result.frames_out == 60
    after = measure(tmp_path / "out.mp4")
    assert after["packets"] == measure(src)["packets"], "the soundtrack did not survive the cluster round trip"
    assert len(after["offsets"]) == 2 and max(abs(o) for o in after["offsets"]) <= 2.0, after["offsets"]
