"""Issue 21, points 1, 4 and 6 (long names): jobs read nothing outside the media root and follow no redirects.

Each attack runs against a real gateway (``running_gateway``) with real FFmpeg (PyAV). The "secret"
outside the root is a bright picture (mean 240) and everything inside is dark (mean 20), so a job's
per-frame means show whether any outside pixel was read.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from ooblex import jpeg, tensor_thread
from ooblex.gateway import Settings

from .gateway_server import running_gateway
from .test_gateway_jobs import wait_done
from .test_gateway_security import eventually
from .test_rtsp import publish, rtsp_server  # noqa: F401 - rtsp_server: the Perl RTSP server fixture

pytestmark = pytest.mark.timeout(120)
DARK, BRIGHT = 20, 240
MARKER = "SERVER-SAID-THIS-7f3a"


@tensor_thread(name="mean")
def mean(frame: np.ndarray) -> dict:
    return {"mean": float(frame.mean())}


def write_ts(path: Path, value: int, frames: int = 6) -> Path:
    """A short MPEG-TS clip of one flat colour."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), value, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """A media root with dark media inside, and bright "secrets" beside it."""
    root = tmp_path / "media"
    (root / "imgs").mkdir(parents=True)
    (root / "other").mkdir()
    (tmp_path / "secret.jpg").write_bytes(jpeg.encode(np.full((48, 64, 3), BRIGHT, np.uint8)))
    write_ts(tmp_path / "secret.ts", BRIGHT)
    write_ts(root / "in.ts", DARK)
    (root / "imgs" / "a.jpg").write_bytes(jpeg.encode(np.full((48, 64, 3), DARK, np.uint8)))
    (root / "other" / "d.jpg").write_bytes(jpeg.encode(np.full((48, 64, 3), DARK, np.uint8)))
    (root / "imgs" / "b.jpg").symlink_to(tmp_path / "secret.jpg")  # out of the root
    (root / "imgs" / "c.jpg").symlink_to("../../secret.jpg")  # out, relatively
    (root / "imgs" / "d.jpg").symlink_to("../other/d.jpg")  # a link that stays inside is fine
    (root / "link.ts").symlink_to(tmp_path / "secret.ts")
    return root


def settings(root: Path, **kw) -> Settings:
    return Settings(**{"loopback_candidates": True, "secret": "", "media_root": str(root), **kw})


def means(job: dict) -> list[float]:
    return [r["result"]["mean"] for r in job.get("results") or []]


def post_job(client: httpx.Client, **body) -> httpx.Response:
    return client.post("/api/v1/jobs", json={"thread": "mean", **body})


# --- 1. the media root -----------------------------------------------------------------------------------
def test_a_folder_source_skips_links_out_of_the_root(media: Path, tmp_path: Path) -> None:
    with running_gateway(threads=[mean], settings=settings(media)) as gw, httpx.Client(base_url=gw.url) as client:
        r = post_job(client, source="imgs")
        assert r.status_code == 201, r.text
        job = wait_done(client, r.headers["Location"], timeout=60)
        assert job["state"] == "done", job
        # a.jpg and d.jpg (a link inside the root) only; b.jpg and c.jpg lead out and are never read
        assert job["result"]["frames_out"] == 2 and all(m < 40 for m in means(job)), job
        # a folder whose only images lead out has nothing to read
        (media / "only-out").mkdir()
        (media / "only-out" / "x.jpg").symlink_to(tmp_path / "secret.jpg")
        r = post_job(client, source="only-out")
        assert r.status_code == 400 and "no images" in r.json()["detail"], r.text
        assert str(tmp_path) not in r.text


def playlist_files(media: Path, tmp_path: Path) -> dict[str, str]:
    """Files that name other files; each would read the bright secret if FFmpeg followed them."""
    secret = tmp_path / "secret.ts"
    hls = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n"
    files = {
        "abs.m3u8": hls.format(secret),
        "file-url.m3u8": hls.format(f"file:{secret}"),
        "up.m3u8": hls.format("../secret.ts"),
        "link.m3u8": hls.format("link.ts"),
        "disguised.mp4": hls.format(secret),  # the demuxer is picked by content, not by name
        "list.ffconcat": "ffconcat version 1.0\nfile in.ts\nfile link.ts\n",
        "abs.ffconcat": f"ffconcat version 1.0\nfile in.ts\nfile '{secret}'\n",
        "list.txt": f"ffconcat version 1.0\nfile '{secret}'\n",
        "cam.sdp": "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 5004 RTP/AVP 96\n"
                   "a=rtpmap:96 H264/90000\n",
    }
    for name, text in files.items():
        (media / name).write_text(text)
    return files


def test_playlists_and_lists_of_files_are_refused(media: Path, tmp_path: Path) -> None:
    files = playlist_files(media, tmp_path)
    for name in ("abs.m3u8", "list.ffconcat"):  # the attacks are real: FFmpeg on its own plays the secret
        with av.open(str(media / name)) as container:
            assert max(f.to_ndarray(format="rgb24").mean() for f in container.decode(video=0)) > 200
    with running_gateway(threads=[mean], settings=settings(media)) as gw, httpx.Client(base_url=gw.url) as client:
        for name in files:
            r = post_job(client, source=name)
            assert r.status_code == 400, (name, r.text)
            detail = r.json()["detail"]
            assert "files that name other files" in detail and "OOBLEX_ALLOW_PLAYLISTS" in detail, detail
            assert str(tmp_path) not in detail
        # a real video is still read
        r = post_job(client, source="in.ts")
        job = wait_done(client, r.headers["Location"], timeout=60)
        assert job["state"] == "done" and job["result"]["frames_out"] == 6 and all(m < 40 for m in means(job))


def test_allowed_playlists_read_only_inside_the_root(media: Path, tmp_path: Path, target: Listener) -> None:
    files = playlist_files(media, tmp_path)
    (media / "ok.m3u8").write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nin.ts\n#EXT-X-ENDLIST\n")
    with running_gateway(threads=[mean], settings=settings(media, allow_playlists=True)) as gw, \
            httpx.Client(base_url=gw.url) as client:
        r = post_job(client, source="ok.m3u8")  # segments inside the root play
        assert r.status_code == 201, r.text
        job = wait_done(client, r.headers["Location"], timeout=60)
        assert job["state"] == "done" and job["result"]["frames_out"] == 6 and all(m < 40 for m in means(job))
        for name in files:
            r = post_job(client, source=name)
            if r.status_code == 201:  # not refused up front: then the job must not show the secret
                job = wait_done(client, r.headers["Location"], timeout=60)
                assert all(m < 40 for m in means(job)), (name, job)
            else:
                assert r.status_code in (400, 403), (name, r.text)
            assert str(tmp_path) not in r.text
        # the ones that name the secret are refused before anything is read
        for name in ("abs.m3u8", "file-url.m3u8", "up.m3u8", "link.m3u8"):
            r = post_job(client, source=name)
            assert r.status_code == 403 and "outside the media root" in r.json()["detail"], (name, r.text)
        (media / "url.m3u8").write_text(  # segments are files only: no request leaves the gateway
            f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\nhttp://127.0.0.2:{target.port}/x.ts\n#EXT-X-ENDLIST\n")
        r = post_job(client, source="url.m3u8")
        assert r.status_code == 403 and "files only" in r.json()["detail"], r.text
        assert target.connections == 0
        for name in ("list.ffconcat", "cam.sdp"):  # concat and SDP stay refused: FFmpeg cannot confine them
            assert post_job(client, source=name).status_code == 400


def test_images_are_decoded_under_the_pixel_limit(media: Path) -> None:
    big = jpeg.encode(np.full((600, 800, 3), DARK, np.uint8))
    (media / "big.jpg").write_bytes(big)
    (media / "mixed").mkdir()
    (media / "mixed" / "1.jpg").write_bytes(jpeg.encode(np.full((48, 64, 3), DARK, np.uint8)))
    (media / "mixed" / "2.jpg").write_bytes(big)
    # a PNG whose header claims 100000x100000 pixels (40 GB decoded): refused from the header
    header = b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + (100000).to_bytes(4, "big") * 2
    (media / "bomb.png").write_bytes(header + b"\x08\x02\x00\x00\x00" + bytes(4) + bytes(64))
    (media / "not-an-image.bmp").write_bytes(b"BM" + bytes(60))
    with running_gateway(threads=[mean], settings=settings(media, max_image_pixels=100 * 100)) as gw, \
            httpx.Client(base_url=gw.url) as client:
        for name, status in (("big.jpg", 413), ("bomb.png", 413), ("not-an-image.bmp", 400)):
            r = post_job(client, source=name)
            assert r.status_code == status, (name, r.text)
        assert "800x600" in post_job(client, source="big.jpg").json()["detail"]
        r = post_job(client, source="mixed")  # the first image is fine; the second fails the job
        assert r.status_code == 201, r.text
        job = wait_done(client, r.headers["Location"], timeout=60)
        assert job["state"] == "failed" and "800x600" in job["error"] and "OOBLEX_MAX_IMAGE_PIXELS" in job["error"]


# --- 6. long names get a 4xx ------------------------------------------------------------------------------
def test_long_names_get_a_4xx(media: Path, tmp_path: Path) -> None:
    with running_gateway(threads=[mean], settings=settings(media)) as gw, httpx.Client(base_url=gw.url) as client:
        for body in ({"source": "a" * 300 + ".mp4"}, {"source": "in.ts", "sink": "b" * 300 + ".mp4"},
                     {"source": "x/" * 3000 + "in.ts"}, {"source": "in.ts", "sink": "d/" * 3000 + "o.mp4"}):
            r = post_job(client, **body)
            assert r.status_code == 400 and "too long" in r.json()["detail"], r.text
            assert len(r.text) < 1000  # the name is not echoed in full
        os.mkfifo(media / "pipe.mp4")  # opening a FIFO would wait for a writer: refused instead
        r = post_job(client, source="pipe.mp4")
        assert r.status_code == 403 and "not a file" in r.json()["detail"], r.text
        # errors name paths relative to the root only
        (media / "broken.mp4").write_bytes(b"\x00" * 4096)
        for body in ({"source": "broken.mp4"}, {"source": str(tmp_path / "secret.ts")}, {"source": "link.ts"},
                     {"source": "in.ts", "sink": str(tmp_path / "x.mp4")}):
            r = post_job(client, **body)
            assert 400 <= r.status_code < 500 and str(tmp_path) not in r.json()["detail"].replace(
                body.get("sink", body["source"]), ""), r.text


# --- 4. URL sources follow no redirects and repeat nothing a server says ---------------------------------
class Listener:
    """A TCP port that counts who connects (the redirect's target: nothing may reach it)."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def target() -> Iterator[Listener]:
    listener = Listener("127.0.0.2")  # another loopback address, not on the allow-list
    yield listener
    listener.close()


def fake_rtsp(answer: str) -> socketserver.ThreadingTCPServer:
    """An RTSP server that answers every request with ``answer`` (a status line and headers)."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for lines in rtsp_requests(self.rfile):
                cseq = next((x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("cseq")), "1")
                self.wfile.write(answer.format(cseq=cseq).encode())

    return serving(Handler)


def rtsp_requests(rfile: Any) -> Iterator[list[str]]:
    """Each request a client sends (its request line and header lines), until it closes the connection."""
    while True:
        lines = []
        while (line := rfile.readline()) not in (b"\r\n", b"\n", b""):
            lines.append(line.decode())
        if not lines:
            return
        yield lines


def serving(handler: type[socketserver.StreamRequestHandler]) -> socketserver.ThreadingTCPServer:
    """``handler`` on a free 127.0.0.1 port, in a daemon thread (the test shuts it down)."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_url_job(gw_settings: Settings, url: str) -> dict:
    with running_gateway(threads=[mean], settings=gw_settings) as gw, httpx.Client(base_url=gw.url) as client:
        r = post_job(client, source=url)
        assert r.status_code == 201, r.text
        return wait_done(client, r.headers["Location"], timeout=60)


def test_rtsp_redirects_are_not_followed(media: Path, target: Listener) -> None:
    location = f"rtsp://127.0.0.2:{target.port}/elsewhere"
    server = fake_rtsp(f"RTSP/1.0 302 Moved {MARKER}\r\nCSeq: {{cseq}}\r\nLocation: {location}\r\n"
                       f"Server: {MARKER}\r\n\r\n")
    url = f"rtsp://127.0.0.1:{server.server_address[1]}/cam"
    try:
        # The attack is real: FFmpeg on its own follows the redirect to the target.
        with pytest.raises(av.error.FFmpegError):
            av.open(url, timeout=5).close()
        assert target.connections >= 1
        before = target.connections
        job = run_url_job(settings(media, source_hosts=["127.0.0.1/32"]), url)
        assert job["state"] == "failed" and "redirects are not followed" in job["error"], job
        assert "302" in job["error"] and MARKER not in job["error"] and "elsewhere" not in job["error"]
        time.sleep(0.3)
        assert target.connections == before
    finally:
        server.shutdown()
        server.server_close()


def test_rtsp_errors_give_the_status_only(media: Path) -> None:
    server = fake_rtsp(f"RTSP/1.0 404 {MARKER}\r\nCSeq: {{cseq}}\r\nServer: {MARKER}\r\n\r\n")
    try:
        job = run_url_job(settings(media, source_hosts=["127.0.0.1/32"]),
                          f"rtsp://127.0.0.1:{server.server_address[1]}/cam")
        assert job["state"] == "failed" and "status 404" in job["error"] and MARKER not in job["error"], job
    finally:
        server.shutdown()
        server.server_close()


SDP = ("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=cam\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n"
       "a=rtpmap:96 H264/90000\r\na=control:track1\r\n")


def aiming_rtsp(udp_port: int) -> socketserver.ThreadingTCPServer:
    """An RTSP server whose SETUP answer names another host (``source=127.0.0.2``) for RTP over UDP."""

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for lines in rtsp_requests(self.rfile):
                method, uri = lines[0].split()[:2]
                headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
                extra, body = "", ""
                if method == "DESCRIBE":
                    body = SDP
                    extra = f"Content-Type: application/sdp\r\nContent-Base: {uri}/\r\nContent-Length: {len(body)}\r\n"
                elif method == "SETUP":
                    if "TCP" in headers["transport"]:
                        self.wfile.write(f"RTSP/1.0 461 Unsupported\r\nCSeq: {headers['cseq']}\r\n\r\n".encode())
                        continue
                    client = headers["transport"].split("client_port=")[1].split(";")[0]
                    extra = (f"Session: 1234\r\nTransport: RTP/AVP;unicast;client_port={client};"
                             f"server_port={udp_port}-{udp_port + 1};source=127.0.0.2\r\n")
                elif method == "PLAY":
                    extra = "Session: 1234\r\n"
                self.wfile.write(f"RTSP/1.0 200 OK\r\nCSeq: {headers['cseq']}\r\n{extra}\r\n{body}".encode())

    return serving(Handler)


def test_rtsp_servers_cannot_aim_udp_elsewhere(media: Path) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.2", 0))
    udp.settimeout(0.1)
    got: list[bytes] = []

    def receive() -> None:
        while True:
            try:
                got.append(udp.recv(2048))
            except TimeoutError:
                continue
            except OSError:
                return

    threading.Thread(target=receive, daemon=True).start()
    server = aiming_rtsp(udp.getsockname()[1])
    url = f"rtsp://127.0.0.1:{server.server_address[1]}/cam"
    try:
        with contextlib.suppress(av.error.FFmpegError):  # the attack is real: FFmpeg on its own sends there
            av.open(url, timeout=3).close()
        assert eventually(lambda: len(got) >= 1)
        got.clear()
        with running_gateway(threads=[mean], settings=settings(media, source_hosts=["127.0.0.1/32"])) as gw, \
                httpx.Client(base_url=gw.url) as client:
            r = post_job(client, source=url)
            assert r.status_code == 201, r.text
            time.sleep(2)  # FFmpeg has set up RTP and sent its first packets by now
            client.delete(r.headers["Location"])
        assert got == []
    finally:
        server.shutdown()
        server.server_close()
        udp.close()




def test_mjpeg_sources_follow_no_redirects_and_keep_the_pixel_limit(media: Path, target: Listener) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/cam.mjpg":  # three small frames, then one over the pixel limit
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=f")
                self.end_headers()
                for size in ((48, 64), (48, 64), (48, 64), (600, 800)):
                    self.wfile.write(b"--f\r\nContent-Type: image/jpeg\r\n\r\n"
                                     + jpeg.encode(np.full((*size, 3), DARK, np.uint8)) + b"\r\n")
                return
            if self.path == "/moved":
                self.send_response(302, MARKER)
                self.send_header("Location", f"http://127.0.0.2:{target.port}/elsewhere")
            else:
                self.send_response(404, MARKER)
            self.send_header("X-Banner", MARKER)
            self.end_headers()
            self.wfile.write(MARKER.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        job = run_url_job(settings(media, source_hosts=["127.0.0.1/32"]), base + "/moved")
        assert job["state"] == "failed" and "redirects are not followed" in job["error"], job
        assert MARKER not in job["error"] and "elsewhere" not in job["error"]
        assert target.connections == 0
        job = run_url_job(settings(media, source_hosts=["127.0.0.1/32"]), base + "/missing.mjpg")
        assert job["state"] == "failed" and "status 404" in job["error"] and MARKER not in job["error"], job
        job = run_url_job(settings(media, source_hosts=["127.0.0.1/32"], max_image_pixels=100 * 100),
                          base + "/cam.mjpg")
        assert job["done"] == 3 and job["state"] == "failed" and "OOBLEX_MAX_IMAGE_PIXELS" in job["error"], job
    finally:
        server.shutdown()
        server.server_close()


def test_a_real_rtsp_camera_still_works_through_the_relay(media: Path, rtsp_server) -> None:  # noqa: F811
    client_port, source_port = rtsp_server
    stop = threading.Event()
    pusher = threading.Thread(target=publish, args=(f"rtsp://127.0.0.1:{source_port}/cam", stop), daemon=True)
    pusher.start()
    time.sleep(0.5)
    try:
        with running_gateway(threads=[mean], settings=settings(media, source_hosts=["127.0.0.1/32"])) as gw, \
                httpx.Client(base_url=gw.url) as client:
            r = post_job(client, source=f"rtsp://127.0.0.1:{client_port}/cam")
            assert r.status_code == 201, r.text
            deadline = time.monotonic() + 20
            while (job := client.get(r.headers["Location"]).json())["done"] < 10 and job["state"] == "running" \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
            assert job["done"] >= 10, job
            assert client.delete(r.headers["Location"]).status_code == 204
    finally:
        stop.set()
        pusher.join(5)

