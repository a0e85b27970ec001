"""ob.run and the `ooblex run` CLI with real files, folders and an MJPEG server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ooblex as ob
from ooblex import jpeg
from ooblex.media import MJPEGServerSink, SourceError, open_source
from ooblex.media.sources import ArraySource, LatestFrameReader

from .media import numbered_frame


@ob.tensor_thread
def brighten(frame, amount: int = 40):
    """Adds ``amount`` to every pixel and reports the mean."""
    return np.clip(frame.astype(np.int16) + amount, 0, 255).astype(np.uint8), {"mean": float(frame.mean())}


def test_file_to_file_processes_every_frame(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    handle = ob.run(brighten, source=str(clip), sink=str(out))
    assert handle.frames_in == handle.frames_out == 48
    assert [seq for seq, _ in handle.results] == list(range(48))
    decoded = list(open_source(str(out)))
    assert len(decoded) == 48
    original = next(iter(open_source(str(clip))))[0]
    assert decoded[0][0].mean() > original.mean() + 20  # the effect is in the written file
    snap = ob.stats(handle)
    assert snap["processed"] == 48 and snap["dropped"] == 0


def test_image_folder_and_params(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg.encode(numbered_frame(i * 50)))
    seen = []
    handle = ob.run(brighten, source=tmp_path, sink=seen.append, params={"amount": 0})
    assert handle.frames_out == 3 and len(seen) == 3
    assert all(abs(f.result["mean"] - f.image.mean()) < 1e-6 for f in seen)  # amount=0: unchanged


def test_bad_sources_and_params_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        ob.run(brighten, source=str(tmp_path / "missing.mp4"))
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        ob.run(brighten, source=str(tmp_path / "junk.mp4"))
    with pytest.raises(ValueError, match="no parameter"):
        ob.run(brighten, source=[numbered_frame(0)], params={"nope": 1})


def test_mjpeg_sink_feeds_an_mjpeg_source() -> None:
    """A live run into an MJPEG server, read back by a second live run over HTTP."""
    frames = [numbered_frame(i, 64, 48) for i in range(200)]
    sink = MJPEGServerSink()
    producer = ob.run(ob.identity, source=ArraySource(frames, live=True, fps=60), sink=sink,
                      background=True)
    got: list[ob.Frame] = []
    consumer = ob.run(ob.identity, source=sink.url, sink=got.append, background=True)
    deadline = time.time() + 10
    while len(got) < 5 and time.time() < deadline:
        time.sleep(0.05)
    consumer.stop()
    producer.stop()
    sink.close()
    consumer.wait(10)
    producer.wait(10)
    assert len(got) >= 5
    assert got[0].image.shape == (48, 64, 3) and consumer.stats.counters["processed"] >= 5


def test_background_run_can_be_stopped() -> None:
    endless = (numbered_frame(i % 200) for i in range(10**9))
    handle = ob.run(ob.identity, source=ArraySource(endless, live=True, fps=100),
                    background=True)
    time.sleep(0.3)
    assert handle.running
    handle.stop()
    handle.wait(10)
    assert not handle.running and handle.frames_out > 0


def test_cli_run(clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.mp4"
    thread_file = tmp_path / "mythreads.py"
    thread_file.write_text("import ooblex as ob\n\n@ob.tensor_thread\ndef inv(frame, k: int = 0):\n"
                           "    return 255 - frame, {'k': k}\n")
    proc = subprocess.run([sys.executable, "-m", "ooblex", "run", f"{thread_file}:inv", "--source", str(clip),
                           "--sink", str(out), "--param", "k=3", "-q"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert '"processed": 48' in proc.stdout
    assert len(list(open_source(str(out)))) == 48
    bad = subprocess.run([sys.executable, "-m", "ooblex", "run", f"{thread_file}:inv", "--source", str(clip),
                          "--param", "zz=1", "-q"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no parameter 'zz'" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "ooblex", "run", "nothing", "--source", str(clip)],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "cannot find tensor thread" in missing.stderr


def test_cli_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "ooblex", "--version"], capture_output=True, text=True)
    assert proc.stdout.strip() == f"ooblex {ob.__version__}"


def test_progress_bar_for_files(clip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ob.run(ob.identity, source=str(clip), progress=True)
    assert "48/48" in capsys.readouterr().err


def test_latest_frame_reader_keeps_only_the_newest() -> None:
    reader = LatestFrameReader(ArraySource([numbered_frame(i) for i in range(50)], live=True, fps=500))
    time.sleep(0.3)
    item = reader.get()
    assert item is not None and int(item[0][0, 0, 2]) == 49 and reader.dropped > 0
    assert reader.get(timeout=0.1) is None and reader.done
