"""A relay between FFmpeg's RTSP client and a camera, which refuses redirects (FFmpeg has no option to).

FFmpeg follows an RTSP ``3xx`` answer on its own, reconnecting to the ``Location`` the server names,
so a URL that passed the allow-list could lead anywhere. A job's RTSP source therefore goes through
this relay: FFmpeg connects to a loopback port, the relay connects to the address the allow-list
checked (not a fresh DNS answer), with TLS for ``rtsps``. Every message of the server is parsed on
the way: a redirect (``3xx``), a request other than keep-alives and parameters, multicast, or
anything malformed ends both connections. RTP may still come over UDP (or interleaved in the TCP
connection): each ``Transport`` answer gets ``source=<the checked address>``, so FFmpeg sends its
RTCP and NAT packets to the camera, not to an address the server names (``source=``) nor to the
relay's loopback address. What the relay keeps for error messages is its own wording and a status
code, never the server's text.
"""

from __future__ import annotations

import socket
import ssl
import threading
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

#: Requests a server may send a client (RFC 2326 §10); REDIRECT and the rest end the session.
SERVER_REQUESTS = (b"OPTIONS", b"GET_PARAMETER", b"SET_PARAMETER", b"ANNOUNCE")
MAX_HEAD = 64 * 1024
MAX_BODY = 1 << 20


class RTSPRelay:
    """One RTSP session relayed to ``address``; ``url`` is what FFmpeg opens instead of the camera's URL."""

    def __init__(self, camera_url: str, address: tuple[str, int], timeout: float = 10.0) -> None:
        parts = urlsplit(camera_url)
        self._address, self._timeout = address, timeout
        self._tls_host = parts.hostname if parts.scheme.lower() == "rtsps" else None
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        userinfo = parts.netloc.rpartition("@")[0]
        self.url = urlunsplit(("rtsp", f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}",
                               parts.path, parts.query, ""))
        #: Why the relay ended the session (its own words), or None.
        self.refused: str | None = None
        #: The last error status (4xx/5xx) the server answered, or None.
        self.status: int | None = None
        self._sockets: list[socket.socket] = [self._listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="ooblex-rtsp-relay", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            for s in self._sockets:
                _close(s)

    def _serve(self) -> None:
        self._listener.settimeout(self._timeout)
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        finally:
            _close(self._listener)
        try:
            upstream = socket.create_connection(self._address, self._timeout)
            if self._tls_host is not None:
                upstream = ssl.create_default_context().wrap_socket(upstream, server_hostname=self._tls_host)
            upstream.settimeout(None)
        except OSError as exc:
            self.refused = f"cannot connect to the RTSP server: {getattr(exc, 'strerror', None) or type(exc).__name__}"
            _close(client)
            return
        with self._lock:
            self._sockets += [client, upstream]
        threading.Thread(target=self._copy, args=(client, upstream), name="ooblex-rtsp-relay-up", daemon=True).start()
        try:
            self._relay_answers(upstream.makefile("rb"), client)
        except (OSError, ValueError):
            pass
        finally:
            self.close()

    def _copy(self, src: socket.socket, dst: socket.socket) -> None:
        """FFmpeg's requests and RTCP, as they are."""
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self.close()

    def _relay_answers(self, reader: IO[bytes], client: socket.socket) -> None:
        while first := reader.read(1):
            if first == b"$":  # interleaved RTP/RTCP: channel, 16-bit length, data
                head = _exactly(reader, 3)
                client.sendall(first + head + _exactly(reader, int.from_bytes(head[1:], "big")))
                continue
            head = first + _head(reader)
            start = head.split(b"\r\n", 1)[0]
            body = _exactly(reader, _content_length(head))
            if start.startswith(b"RTSP/"):
                code = int(start.split()[1])
                if 300 <= code < 400:
                    self.refused = f"the RTSP server answered a redirect (status {code}); redirects are not followed"
                    return
                if code >= 400:
                    self.status = code
                if b"multicast" in head.lower():
                    self.refused = "the RTSP server offers multicast, which jobs do not read"
                    return
                head = _pin_source(head, self._address[0])
            elif start.split(b" ", 1)[0] not in SERVER_REQUESTS:
                self.refused = "the RTSP server sent a request that is not allowed (REDIRECT or unknown)"
                return
            client.sendall(head + body)


def _pin_source(head: bytes, address: str) -> bytes:
    """``head`` with every ``Transport`` header's ``source``/``destination`` replaced by ``source=address``."""
    lines = head.split(b"\r\n")
    for i, line in enumerate(lines):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"transport":
            params = [p for p in value.strip().split(b";")
                      if not p.strip().lower().startswith((b"source=", b"destination="))]
            lines[i] = b"Transport: " + b";".join([*params, b"source=" + address.encode()])
    return b"\r\n".join(lines)


def _exactly(reader: IO[bytes], n: int) -> bytes:
    data = reader.read(n)
    if len(data) != n:
        raise ValueError("connection closed mid-message")
    return data


def _head(reader: IO[bytes]) -> bytes:
    """The rest of a message's header, up to and including the empty line."""
    head = b""
    while not head.endswith(b"\r\n\r\n") and not head.endswith(b"\n\n"):
        line = reader.readline(MAX_HEAD)
        if not line or len(head) + len(line) > MAX_HEAD:
            raise ValueError("malformed or oversized RTSP header")
        head += line
    return head


def _content_length(head: bytes) -> int:
    for line in head.split(b"\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            if not 0 <= length <= MAX_BODY:
                raise ValueError("RTSP body too large")
            return length
    return 0


def _close(s: Any) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
