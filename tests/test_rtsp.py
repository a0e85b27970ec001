"""An RTSP camera source, against a real RTSP server (Perl RTSP::Server) fed by an FFmpeg publisher."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import ooblex as ob
from ooblex.cluster.servers import free_port, wait_port

SERVER = """
use AnyEvent; use RTSP::Server;
my $srv = RTSP::Server->new(log_level => 0, client_listen_port => $ARGV[0], source_listen_port => $ARGV[1],
  rtp_start_port => $ARGV[2], client_listen_address => '127.0.0.1', source_listen_address => '127.0.0.1');
$srv->listen; AnyEvent->condvar->recv;
"""


@pytest.fixture
def rtsp_server(tmp_path: Path):
    if not shutil.which("perl") or subprocess.run(["perl", "-MRTSP::Server", "-e1"]).returncode:
        pytest.skip("Perl RTSP::Server (Debian librtsp-server-perl) not installed; .ci/system-deps installs it")
    script = tmp_path / "rtsp.pl"
    script.write_text(SERVER)
    client, source = free_port(), free_port()
    proc = subprocess.Popen(["perl", str(script), str(client), str(source), str(free_port() // 2 * 2)])
    try:
        wait_port("127.0.0.1", client, 10)
        wait_port("127.0.0.1", source, 10)
        yield client, source
    finally:
        proc.terminate()
        proc.wait(5)


def publish(url: str, stop: threading.Event) -> None:
    import av

    with av.open(url, "w", format="rtsp") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.codec_context.gop_size = 5  # a late joiner decodes cleanly within 5 frames
        i = 0
        while not stop.is_set():
            img = np.zeros((120, 160, 3), np.uint8)
            img[..., 2] = min(3 * i, 255)  # brightness encodes the frame number
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
            i += 1
            time.sleep(1 / 30)


def test_rtsp_source_runs_live(rtsp_server) -> None:
    client, source = rtsp_server
    stop = threading.Event()
    pusher = threading.Thread(target=publish, args=(f"rtsp://127.0.0.1:{source}/cam", stop), daemon=True)
    pusher.start()
    time.sleep(0.5)
    got: list[ob.Frame] = []
    try:
        handle = ob.run(ob.identity, source=f"rtsp://127.0.0.1:{client}/cam", sink=got.append, background=True)
        deadline = time.time() + 15
        while len(got) < 10 and time.time() < deadline and handle.running:
            time.sleep(0.05)
        handle.stop()
        handle.wait(10)
    finally:
        stop.set()
        pusher.join(5)
    assert len(got) >= 10
    assert got[0].image.shape == (120, 160, 3)
    assert handle.mode == "live"
    tags = [int(np.median(f.image[..., 2])) for f in got]
    # The picture advances. Not asserted frame by frame: a late joiner's first frames and UDP loss
    # under load can garble single frames.
    assert max(tags) - min(tags) >= 9
    seqs = [f.seq for f in got]
    assert seqs == sorted(set(seqs))  # output never goes backwards or repeats
