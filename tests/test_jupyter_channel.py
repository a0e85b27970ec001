"""The live widget's side channel: a real ``jupyter server`` with the extension, a kernel it started, and
a WebSocket client in place of the browser, through ``/ooblex/kernels/<id>/live/<widget>``.

Frames must keep flowing while the kernel runs a cell; parameters, code swaps, ``record()`` and
``snapshot()`` must work on this path; and the proxy must refuse strangers: no credentials, another
origin, an unknown kernel or widget, a kernel whose announcement is not trustworthy, oversized messages,
too many frames in flight.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import struct
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from ooblex import jpeg
from ooblex.jupyter.channel import channel_file

pytest.importorskip("anywidget")
from tornado.httpclient import HTTPClientError, HTTPRequest  # noqa: E402
from tornado.websocket import websocket_connect  # noqa: E402

from .jupyter_proc import JupyterServer  # noqa: E402
from .kernel_frontend import KernelFrontend  # noqa: E402

ENABLE = '--ServerApp.jpserver_extensions={"ooblex_server_ext": True}'
LIMIT = 1 << 20  # the proxy's message limit in these tests (a setting: OOBLEX_LIVE_MAX_MESSAGE_BYTES)
pytestmark = pytest.mark.timeout(300)

SETUP = """
import time, ooblex as ob

@ob.tensor_thread(params={"k": {"min": 1, "max": 9}})
def invert(frame, k: int = 3):
    return 255 - frame, {"k": k, "boxes": [{"box": [1, 2, 10, 12], "label": "thing"}]}

w = ob.live(invert)
print(w.model_id)
"""


def pack(header: dict, payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack(">I", len(head)) + head + payload


def unpack(data: bytes) -> tuple[dict, list[bytes]]:
    n = struct.unpack(">I", data[:4])[0]
    header = json.loads(data[4:4 + n])
    out, at = [], 4 + n
    for size in header.get("sizes", []):
        out.append(data[at:at + size])
        at += size
    return header, out


def image(value: int = 40) -> np.ndarray:
    img = np.zeros((48, 64, 3), np.uint8)
    img[:, :32] = value
    return img


class Server:
    """A Jupyter server with the extension, one kernel it started, and a client attached to that kernel."""

    def __init__(self, tmp: Path, base_url: str = "/") -> None:
        env = {"OOBLEX_LIVE_MAX_MESSAGE_BYTES": str(LIMIT), "OOBLEX_LIVE_MAX_IN_FLIGHT": "2"}
        self.jupyter = JupyterServer(tmp, args=[ENABLE], env=env, base_url=base_url).start()
        self.base = self.jupyter.url
        self.kernel_id, self.connection_file = self.new_kernel()
        self.kernel = KernelFrontend(self.connection_file)

    def new_kernel(self) -> tuple[str, Path]:
        r = httpx.post(f"{self.base}/api/kernels", headers=self.auth(), json={"name": "python3"}, timeout=30)
        r.raise_for_status()
        kid = r.json()["id"]
        cf = self.jupyter.workdir / "jupyter-home" / "runtime" / f"kernel-{kid}.json"
        deadline = time.time() + 30
        while not cf.exists():
            assert time.time() < deadline, "the kernel's connection file did not appear"
            time.sleep(0.1)
        return kid, cf

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"token {self.jupyter.token}"}

    def ws_url(self, widget: str, kernel: str | None = None) -> str:
        return f"{self.base.replace('http', 'ws', 1)}/ooblex/kernels/{kernel or self.kernel_id}/live/{widget}"

    def login_cookie(self) -> str:
        """The cookie Jupyter sets when a page is opened with ?token= (what the browser then sends)."""
        r = httpx.get(f"{self.base}/api/status?token={self.jupyter.token}", timeout=10)
        return "; ".join(f"{k}={v}" for k, v in r.cookies.items())

    async def connect(self, widget: str, *, kernel: str | None = None, origin: str | None = None,
                      token: bool = True, cookie: str | None = None):
        headers = {"Origin": origin or self.jupyter.origin, **(self.auth() if token else {})}
        if cookie:
            headers["Cookie"] = cookie
        return await websocket_connect(HTTPRequest(self.ws_url(widget, kernel), headers=headers))

    def close(self) -> None:
        self.kernel.close()
        self.jupyter.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("live"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def widget(server):
    return server.kernel.execute(SETUP).strip()


async def read_until(ws, pred, timeout: float = 20) -> tuple[dict, list[bytes]]:
    deadline = time.time() + timeout
    while True:
        msg = await asyncio.wait_for(ws.read_message(), max(deadline - time.time(), 0.01))
        assert msg is not None, f"the proxy closed the WebSocket ({ws.close_code}: {ws.close_reason})"
        header, payloads = unpack(msg) if isinstance(msg, bytes) else (json.loads(msg), [])
        if pred(header):
            return header, payloads


async def send_frame(ws, seq: int, value: int = 40) -> tuple[dict, list[bytes]]:
    await ws.write_message(pack({"type": "frame", "seq": seq}, jpeg.encode(image(value))), binary=True)
    return await read_until(ws, lambda h: h.get("type") in ("frame", "ack") and h.get("ack") == seq)


def run(coro):
    return asyncio.run(coro)


def test_frames_flow_while_a_cell_runs(server, widget):
    """The point of the side channel: the kernel sleeps in a cell, frames are still processed."""
    async def feed() -> tuple[int, float]:
        ws = await server.connect(widget)
        t0, n = time.time(), 0
        while time.time() - t0 < 2.0:
            header, payloads = await send_frame(ws, n)
            assert header["type"] == "frame" and header["lane"] == 0 and header["error"] is None
            n += 1
        out = jpeg.decode(payloads[0])
        ws.close()
        return n, float(out[:, :32].mean())

    busy = server.kernel.submit("time.sleep(4); print('slept')")
    time.sleep(0.5)  # the cell is running now
    n, dark_half = run(feed())
    assert server.kernel.result(busy, 30).strip() == "slept"
    assert n >= 5, f"only {n} frames answered in 2 s while the kernel was busy"  # over the comm: none
    assert abs(dark_half - 215) < 6  # inverted


def test_result_overlay_travels_with_the_frame(server, widget):
    async def go():
        ws = await server.connect(widget)
        header, _ = await send_frame(ws, 1)
        ws.close()
        return header

    header = run(go())
    assert header["images"] == [{"role": "output", "format": "jpeg", "width": 64, "height": 48}]
    assert header["overlay"]["boxes"][0]["box"] == [1.0, 2.0, 10.0, 12.0]
    assert header["overlay"]["boxes"][0]["label"] == "thing"


def test_parameters_change_during_a_busy_cell_and_bad_ones_are_refused(server, widget):
    async def go():
        ws = await server.connect(widget)
        await ws.write_message(json.dumps({"type": "params", "lane": 0, "params": {"k": 7}}))
        header, _ = await send_frame(ws, 10)
        await ws.write_message(json.dumps({"type": "params", "lane": 0, "params": {"k": 99}}))
        refusal, _ = await read_until(ws, lambda h: h.get("type") == "params")
        after, _ = await send_frame(ws, 11)
        ws.close()
        return header, refusal, after

    busy = server.kernel.submit("time.sleep(3)")
    time.sleep(0.3)
    header, refusal, after = run(go())
    server.kernel.result(busy, 30)
    assert header["result"]["k"] == 7
    assert "within [1, 9]" in refusal["error"] and refusal["params"]["k"] == 7
    assert after["result"]["k"] == 7


def test_record_and_snapshot_wait_for_side_channel_frames(server, widget):
    """Run All: a widget made in one cell, then a cell calling snapshot() and record() at once, while
    the browser's first frames are still to come over the side channel."""
    fresh = server.kernel.execute("fresh = ob.live(invert, name='fresh')\nprint(fresh.model_id)").strip()
    stop = threading.Event()

    async def feed() -> None:
        ws = await server.connect(fresh)
        seq = 0
        while not stop.is_set():
            await send_frame(ws, seq)
            seq += 1
            await asyncio.sleep(0.02)
        ws.close()

    cell = server.kernel.submit("""
shot = fresh.snapshot(timeout=20)
rec = fresh.record(1.0, timeout=20)
print(shot.output.shape, len(rec.frames), rec, fresh.transport)
""")
    time.sleep(1.0)  # snapshot() is waiting now
    feeder = threading.Thread(target=lambda: run(feed()))
    feeder.start()
    try:
        out = server.kernel.result(cell, 60).strip()
    finally:
        stop.set()
        feeder.join(10)
    assert out.startswith("(48, 64, 3) "), out
    assert int(out.split()[3]) >= 5 and "over 1s, done>" in out and out.endswith("side channel"), out
    server.kernel.execute("fresh.close()")


def test_code_swap_on_rerun_reaches_the_open_connection(server, widget):
    async def go():
        ws = await server.connect(widget)
        before, _ = await send_frame(ws, 2000)
        server.kernel.execute("""
def invert(frame, k: int = 3):
    return frame, {"swapped": True, "k": k}
assert ob.live(invert) is w
""")
        await read_until(ws, lambda h: h.get("type") == "reset")
        after, payloads = await send_frame(ws, 2001)
        ws.close()
        return before, after, payloads

    before, after, payloads = run(go())
    assert "swapped" not in before["result"] and after["result"]["swapped"] is True
    assert abs(int(jpeg.decode(payloads[0])[:, :32].mean()) - 40) < 6  # no longer inverted


def test_raw_frames_in_and_out(server):
    wid = server.kernel.execute("r = ob.live(lambda f: f[:, ::-1], name='raw', codec='raw')\nprint(r.model_id)").strip()

    async def go():
        ws = await server.connect(wid)
        rgba = np.zeros((4, 6, 4), np.uint8)
        rgba[:, :3, :3] = 200
        await ws.write_message(pack({"type": "frame", "seq": 0, "format": "rgba", "width": 6, "height": 4},
                                    rgba.tobytes()), binary=True)
        header, payloads = await read_until(ws, lambda h: h.get("ack") == 0)
        ws.close()
        return header, payloads

    header, payloads = run(go())
    assert header["images"] == [{"role": "output", "format": "rgba", "width": 6, "height": 4}]
    out = np.frombuffer(payloads[0], np.uint8).reshape(4, 6, 4)
    assert (out[:, 3:, :3] == 200).all() and (out[:, :3, :3] == 0).all() and (out[..., 3] == 255).all()  # mirrored
    server.kernel.execute("r.close()")


def test_compare_mode_answers_per_lane(server):
    wid = server.kernel.execute("""
def negative(frame):
    return 255 - frame
c = ob.live([negative, ob.identity], name="cmp")
print(c.model_id)
""").strip()

    async def go():
        ws = await server.connect(wid)
        await ws.write_message(pack({"type": "frame", "seq": 0}, jpeg.encode(image())), binary=True)
        lanes = {}
        while len(lanes) < 2:
            header, payloads = await read_until(ws, lambda h: h.get("type") == "frame")
            lanes[header["lane"]] = jpeg.decode(payloads[0])
        ws.close()
        return lanes

    lanes = run(go())
    assert abs(int(lanes[0][:, :32].mean()) - 215) < 6 and abs(int(lanes[1][:, :32].mean()) - 40) < 6
    out = server.kernel.execute("s = c.snapshot(); print(len(s), [x.output.shape for x in s], len(c.stats()))")
    assert out.strip() == "2 [(48, 64, 3), (48, 64, 3)] 2"
    server.kernel.execute("c.close()")


def test_frames_in_flight_are_bounded_by_the_proxy(server):
    wid = server.kernel.execute("""
@ob.tensor_thread
def slow(frame):
    time.sleep(1.0)
    return frame
s = ob.live(slow, max_in_flight=8)
print(s.model_id)
""").strip()

    async def go():
        ws = await server.connect(wid)
        for seq in range(10):
            await ws.write_message(pack({"type": "frame", "seq": seq}, jpeg.encode(image())), binary=True)
        refused = []
        while len(refused) < 8:
            header, _ = await read_until(ws, lambda h: h.get("type") == "ack" and "refused" in h)
            refused.append(header["ack"])
        ws.close()
        return refused

    refused = run(go())
    assert refused == list(range(2, 10))  # OOBLEX_LIVE_MAX_IN_FLIGHT=2: the first two reach the kernel
    server.kernel.execute("s.close()")


def test_oversized_messages_close_the_websocket(server, widget):
    async def go():
        ws = await server.connect(widget)
        await ws.write_message(b"\0" * (LIMIT + 1), binary=True)
        msg = await asyncio.wait_for(ws.read_message(), 20)
        return msg, ws.close_code

    msg, code = run(go())
    assert msg is None and code == 1009  # "message too big"


def test_bad_messages_are_counted_and_the_channel_keeps_serving(server, widget):
    async def go():
        ws = await server.connect(widget)
        await ws.write_message(json.dumps({"type": "selfdestruct"}))
        await ws.write_message(pack({"type": "frame", "seq": 7000}, b"not a jpeg"), binary=True)
        bad, _ = await read_until(ws, lambda h: h.get("ack") == 7000)
        good, _ = await send_frame(ws, 7001)
        ws.close()
        return bad, good

    before = int(server.kernel.execute("print(w.counters['bad_messages'])"))
    bad, good = run(go())
    assert bad["type"] == "ack" and good["type"] == "frame"
    deadline = time.time() + 10
    while int(server.kernel.execute("print(w.counters['bad_messages'])")) < before + 2:
        assert time.time() < deadline, "bad messages were not counted"
        time.sleep(0.2)


@pytest.mark.parametrize("case", ["no credentials", "wrong token", "a page of another origin"])
def test_strangers_are_refused_with_403(server, widget, case):
    """Jupyter's rules: credentials needed; a cookie-authenticated request (what a hostile page open in
    the user's browser would make) must come from an allowed origin. A request carrying the token itself
    skips the origin check, as for Jupyter's own WebSockets: a web page cannot know the token."""
    async def go():
        if case == "wrong token":
            url = server.ws_url(widget)
            return await websocket_connect(HTTPRequest(url, headers={"Authorization": "token wrong"}))
        if case == "no credentials":
            return await server.connect(widget, token=False)
        return await server.connect(widget, token=False, cookie=server.login_cookie(), origin="http://evil.example")

    with pytest.raises(HTTPClientError) as err:
        run(go())
    assert err.value.code == 403


def test_the_login_cookie_from_the_notebook_page_opens_the_channel(server, widget):
    async def go():
        ws = await server.connect(widget, token=False, cookie=server.login_cookie())
        header, _ = await send_frame(ws, 9000)
        ws.close()
        return header

    assert run(go())["type"] == "frame"


def test_unknown_kernel_or_widget_is_404_with_a_reason(server, widget):
    async def status(**kw) -> tuple[int, str]:
        with pytest.raises(HTTPClientError) as err:
            await server.connect(**kw)
        return err.value.code, err.value.response.body.decode()

    code, body = run(status(widget=widget, kernel=str(uuid.uuid4())))
    assert code == 404 and "no kernel" in body
    code, body = run(status(widget="0" * 32))
    assert code == 404 and "no live widget" in body
    other, _ = server.new_kernel()  # a kernel that never made a live widget
    code, body = run(status(widget=widget, kernel=other))
    assert code == 404 and "has no live channel" in body
    httpx.delete(f"{server.base}/api/kernels/{other}", headers=server.auth(), timeout=30)


def test_a_plain_get_is_400(server, widget):
    r = httpx.get(server.ws_url(widget).replace("ws", "http", 1), headers=server.auth(), timeout=10)
    assert r.status_code == 400 and "WebSocket" in r.json()["message"]


def test_the_socket_is_private_and_announced_next_to_the_connection_file(server, widget):
    announce = channel_file(server.connection_file)
    assert stat.S_IMODE(announce.stat().st_mode) == 0o600
    sock = Path(json.loads(announce.read_text())["socket"])
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
    os.chmod(announce, 0o666)  # someone else could have written it: the proxy must not follow it
    try:
        with pytest.raises(HTTPClientError) as err:
            run(server.connect(widget))
        assert err.value.code == 404 and "not trustworthy" in err.value.response.body.decode()
    finally:
        os.chmod(announce, 0o600)

    async def reopen() -> None:
        (await server.connect(widget)).close()

    run(reopen())


def test_works_under_a_base_url(tmp_path):
    """As behind JupyterHub: the extension lives at {base_url}ooblex/."""
    s = Server(tmp_path, base_url="/user/alice/")
    try:
        wid = s.kernel.execute(SETUP).strip()

        async def go():
            ws = await s.connect(wid)
            header, _ = await send_frame(ws, 0)
            ws.close()
            return header

        assert run(go())["result"]["k"] == 3
    finally:
        s.close()


@pytest.mark.parametrize("first", [b"\x00\x00\x00\x03\x00{{{", b"\x00\x00\x00\x02\x01{}", b"\xff\xff\xff\xff\x00",
                                   b'\x00\x00\x00\x12\x00{"type":"hello"}  '])
def test_the_kernel_end_answers_a_bad_hello_and_keeps_serving(server, widget, first):
    """Straight to the kernel's socket (as its own user could): junk first messages end that connection only."""
    from ooblex.jupyter.channel import locate, read_message

    async def go():
        reader, writer = await asyncio.open_unix_connection(locate(server.connection_file))
        writer.write(first)
        try:
            kind, body = await asyncio.wait_for(read_message(reader), 15)
            reply = json.loads(body)
        except asyncio.IncompleteReadError:
            reply = None  # a frame header it cannot accept: closed without a word
        writer.close()
        return reply

    reply = run(go())
    assert reply is None or (reply["type"] == "error" and reply["status"] == 404)

    async def still():
        ws = await server.connect(widget)
        header, _ = await send_frame(ws, 8000)
        ws.close()
        return header

    assert run(still())["type"] == "frame"
