"""The live widget's side channel: browser frames reach the kernel while a cell runs.

Comm messages travel on the kernel's shell channel, which the kernel reads only between cells, so a
widget fed over its comm freezes whenever the notebook works. The live loop thread (its own event
loop, ``loop.py``) therefore also serves a Unix socket, and the Jupyter server extension
(``ooblex_server_ext.live``, from ``server_ext/live.py``) proxies the browser's WebSocket to it behind
Jupyter's own authentication.

Who can reach it: the socket is 0600 inside a fresh 0700 directory, so other local users cannot
connect, and a web page cannot reach a Unix socket at all. The extension finds it from the kernel
id alone, through a 0600 file next to the kernel's connection file (``kernel-<id>.json`` ->
``kernel-<id>.ooblex.json``), checking that this user owns both; nothing the browser sends names
a path, host or port.

Framing on the socket: ``u32 length | u8 kind | body``, kind ``TEXT`` (a JSON object) or ``BINARY``.
A binary body is ``u32 header length | JSON header | payloads``, byte for byte what the browser sends
and receives over the WebSocket (``pack``/``unpack``). Each connection is one view of one widget and
starts with ``{"type": "hello", "widget": <widget id>}``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Protocol

from .loop import LoopThread, shared_loop

log = logging.getLogger("ooblex.live")

TEXT, BINARY = 0, 1
#: Largest message either side accepts (a raw 1080p RGBA frame is 8.3 MB).
MAX_MESSAGE_BYTES = 16 << 20
#: Bytes queued toward a slow reader before outgoing frames lose their pixels (latest-frame-wins).
MAX_BUFFERED_BYTES = 4 << 20
#: Stream buffer size: a raw frame (1.2 MB at 640x480) arrives without pausing the socket dozens of times.
READ_BUFFER = 4 << 20
HELLO_TIMEOUT_S = 10.0
_HEAD = struct.Struct(">IB")
_U32 = struct.Struct(">I")


class ProtocolError(ValueError):
    """A message that breaks the framing (too long, unknown kind, bad header): the connection ends."""


# --- framing (both ends) ---------------------------------------------------------------------
def frame(kind: int, body: bytes) -> bytes:
    """One socket message."""
    return _HEAD.pack(len(body), kind) + body


async def read_message(reader: asyncio.StreamReader, max_bytes: int = MAX_MESSAGE_BYTES) -> tuple[int, bytes]:
    """The next ``(kind, body)``; ``asyncio.IncompleteReadError`` at the end of the stream."""
    size, kind = _HEAD.unpack(await reader.readexactly(_HEAD.size))
    if kind not in (TEXT, BINARY):
        raise ProtocolError(f"unknown message kind {kind}")
    if size > max_bytes:
        raise ProtocolError(f"message of {size} bytes (limit {max_bytes})")
    return kind, await reader.readexactly(size)


def pack(header: dict[str, Any], payloads: list[bytes]) -> bytes:
    """A binary message: the header (with ``sizes`` of the payloads) followed by the payloads."""
    head = json.dumps({**header, "sizes": [len(p) for p in payloads]}, separators=(",", ":")).encode()
    return b"".join([_U32.pack(len(head)), head, *payloads])


def unpack(body: bytes | memoryview) -> tuple[dict[str, Any], list[memoryview]]:
    """Header and payloads of a binary message; without ``sizes`` the rest is one payload."""
    view = memoryview(body)
    if len(view) < _U32.size:
        raise ProtocolError("binary message shorter than its header length")
    (n,) = _U32.unpack(view[:_U32.size])
    end = _U32.size + n
    if end > len(view):
        raise ProtocolError(f"header of {n} bytes in a {len(view)}-byte message")
    try:
        header = json.loads(bytes(view[_U32.size:end]))
    except ValueError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    rest = view[end:]
    sizes = header.get("sizes")
    if sizes is None:
        return header, [rest]
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes) or sum(sizes) != len(rest):
        raise ProtocolError(f"payload sizes {sizes!r} do not add up to {len(rest)} bytes")
    out, at = [], 0
    for s in sizes:
        out.append(rest[at:at + s])
        at += s
    return header, out


# --- discovery (the kernel writes, the server extension reads) -------------------------------
def channel_file(connection_file: str | os.PathLike[str]) -> Path:
    """Where a kernel's side channel is announced: next to its connection file."""
    p = Path(connection_file)
    return p.with_name(f"{p.stem}.ooblex.json")


def kernel_id(connection_file: str | os.PathLike[str]) -> str | None:
    """The Jupyter server's kernel id, from the connection file name it gives every kernel."""
    m = re.fullmatch(r"kernel-([0-9a-zA-Z-]+)\.json", Path(connection_file).name)
    return m.group(1) if m else None


def locate(connection_file: str | os.PathLike[str]) -> str:
    """The socket path a kernel announced; ``LookupError`` naming why not (none, or not trustworthy)."""
    path = channel_file(connection_file)
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise LookupError("the kernel has no live channel (no ob.live widget yet, or an older ooblex)") from None
    uid = os.getuid()
    if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_mode & 0o022:
        log.warning("ooblex: ignoring %s: not a regular file of uid %d, or writable by others", path, uid)
        raise LookupError(f"the kernel's live channel file {path.name} is not trustworthy")
    try:
        sock = json.loads(path.read_text())["socket"]
        sst = os.lstat(sock)
    except (OSError, ValueError, KeyError, TypeError):
        raise LookupError("the kernel's live channel is gone (kernel restarting or stopped?)") from None
    if not stat.S_ISSOCK(sst.st_mode) or sst.st_uid != uid or sst.st_mode & 0o077:
        log.warning("ooblex: ignoring socket %s: not a 0600 socket of uid %d", sock, uid)
        raise LookupError("the kernel's live channel socket is not trustworthy")
    return str(sock)


# --- the kernel's end ------------------------------------------------------------------------
class Peer(Protocol):
    """Where a message for the browser goes: a side-channel connection or the widget's comm."""

    def send(self, content: dict[str, Any], buffers: list[bytes]) -> None: ...


class Endpoint(Protocol):
    """A widget as the side channel sees it (all calls on the loop thread)."""

    def attach(self, conn: Connection) -> None: ...

    def detach(self, conn: Connection) -> None: ...

    def on_channel(self, conn: Connection, header: dict[str, Any], payloads: list[memoryview]) -> None: ...


class Connection:
    """One browser view on the side channel; ``send`` may be called from any thread."""

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        self.writer = writer
        self.loop = loop
        self.closed = False
        self.dropped = 0

    def send(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        if _off_loop(self.loop):
            self.loop.call_soon_threadsafe(self.send, content, buffers)
            return
        if self.closed or self.writer.is_closing():
            return
        if buffers and self.writer.transport.get_write_buffer_size() > MAX_BUFFERED_BYTES:
            self.dropped += 1  # the browser reads slower than frames come: send the ack, not the pixels
            content, buffers = {"type": "ack", "ack": content.get("ack"), "lane": content.get("lane")}, []
        if buffers:
            self.writer.write(frame(BINARY, pack(content, buffers)))
        else:
            self.writer.write(frame(TEXT, json.dumps(content, separators=(",", ":")).encode()))


def _off_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is not loop
    except RuntimeError:
        return True


class SideChannel:
    """The kernel's Unix socket server (on the live loop thread) and its announcement file."""

    def __init__(self, loop: LoopThread, connection_file: str) -> None:
        self.loop = loop
        self.kernel_id = kernel_id(connection_file)
        self.file = channel_file(connection_file)
        _sweep()
        self.dir = Path(tempfile.mkdtemp(prefix=f"ooblex-live-{os.getpid()}-"))  # 0700, short enough for AF_UNIX
        self.path = self.dir / "channel.sock"
        self.widgets: dict[str, Endpoint] = {}
        self.server: asyncio.AbstractServer | None = None
        loop.run(self._start()).result(10)
        atexit.register(self.close)

    async def _start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=READ_BUFFER)
        os.chmod(self.path, 0o600)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"socket": str(self.path), "pid": os.getpid()}, f)
        os.replace(tmp, self.file)

    def register(self, widget_id: str, endpoint: Endpoint) -> None:
        self.widgets[widget_id] = endpoint

    def unregister(self, widget_id: str) -> None:
        self.widgets.pop(widget_id, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection(writer, asyncio.get_running_loop())
        endpoint: Endpoint | None = None
        try:
            wid = _hello(*await asyncio.wait_for(read_message(reader, 4096), HELLO_TIMEOUT_S))
            endpoint = self.widgets.get(wid) if wid is not None else None
            if endpoint is None:
                why = "no hello naming a widget" if wid is None else \
                    f"no live widget {wid[:64]!r} in this kernel (closed, or the kernel restarted)"
                conn.send({"type": "error", "status": 404, "message": why}, [])
                return
            conn.send({"type": "hello", "ok": True}, [])
            endpoint.attach(conn)
            while True:
                kind, body = await read_message(reader)
                if kind == TEXT:
                    try:
                        header, payloads = json.loads(body), []
                    except ValueError:
                        header, payloads = {"type": "invalid JSON"}, []
                else:
                    header, payloads = unpack(body)
                endpoint.on_channel(conn, header, payloads)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
            pass
        except ProtocolError as exc:
            log.warning("ooblex live widget: side channel closed: %s", exc)
        finally:
            conn.closed = True
            if endpoint is not None:
                endpoint.detach(conn)
            writer.close()

    def close(self) -> None:
        """Stop serving and remove the socket and the announcement (also at interpreter exit)."""
        with contextlib.suppress(OSError, ValueError):
            if json.loads(self.file.read_text()).get("socket") == str(self.path):
                self.file.unlink()
        if self.server is not None and self.loop.thread.is_alive():
            self.loop.call(self.server.close)
        shutil.rmtree(self.dir, ignore_errors=True)


def _hello(kind: int, body: bytes) -> str | None:
    """The widget id a connection's first message names, if it is a well-formed hello."""
    try:
        hello = json.loads(body) if kind == TEXT else None
    except ValueError:
        return None
    wid = hello.get("widget") if isinstance(hello, dict) and hello.get("type") == "hello" else None
    return wid if isinstance(wid, str) else None


def _sweep() -> None:
    """Remove socket directories of this user's kernels that died without cleaning up (killed)."""
    for d in Path(tempfile.gettempdir()).glob("ooblex-live-*-*"):
        try:
            pid = int(d.name.split("-")[2])
            if d.lstat().st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (ValueError, OSError):
            continue


_lock = threading.Lock()
_shared: SideChannel | None = None
_tried = False


def shared_channel() -> SideChannel | None:
    """This kernel's side channel, started on first use; None outside a Jupyter kernel or if it cannot start."""
    global _shared, _tried
    with _lock:
        if _shared is None and not _tried:
            _tried = True
            connection_file = _connection_file()
            if connection_file is not None:
                try:
                    _shared = SideChannel(shared_loop(), connection_file)
                except OSError as exc:
                    log.warning("ooblex live widget: no side channel (%s); frames use the comm", exc)
        return _shared


def _connection_file() -> str | None:
    """The running kernel's connection file; None outside a kernel (importing ipykernel's app there
    would replace the ``comm`` package's manager, so it is only looked up when already imported)."""
    app_module = sys.modules.get("ipykernel.kernelapp")
    if app_module is None or not app_module.IPKernelApp.initialized():
        return None
    from ipykernel.connect import get_connection_file

    try:
        return os.path.abspath(get_connection_file(app_module.IPKernelApp.instance()))
    except (OSError, RuntimeError):
        return None
