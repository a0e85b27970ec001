"""``/ooblex/kernels/<kernel id>/live/<widget id>``: the live widget's WebSocket, proxied to its kernel.

The browser's frames then reach the kernel's live loop thread through its side channel
(``ooblex/jupyter/channel.py``) instead of the kernel's shell, which is busy while a cell runs.
Same origin as the notebook, so it works wherever Jupyter does (any ``base_url``, behind JupyterHub).

Who may connect: a user Jupyter authenticates (``ws_authenticated``: no redirect, 403) and authorizes
to execute in kernels, from a page of an allowed origin (Jupyter's own WebSocket origin check, 403).
Where it goes: the Unix socket the kernel announced next to its connection file, looked up from the
kernel id in the URL (404 for a kernel this server does not run); nothing the browser sends names a
path, host or port. Bounds (settings, from the server's environment): message size
(``OOBLEX_LIVE_MAX_MESSAGE_BYTES``), frames the kernel has not answered (``OOBLEX_LIVE_MAX_IN_FLIGHT``;
more are answered "refused" here) and bytes queued toward the kernel.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import ws_authenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ooblex.jupyter.channel import BINARY, READ_BUFFER, TEXT, ProtocolError, frame, locate, read_message, unpack

#: Frames unanswered after this long no longer count as in flight (a lost reply must not stall the view).
IN_FLIGHT_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LiveLimits:
    max_message_bytes: int = 16 << 20
    max_in_flight: int = 4

    @classmethod
    def from_env(cls) -> LiveLimits:
        return cls(int(os.environ.get("OOBLEX_LIVE_MAX_MESSAGE_BYTES", cls.max_message_bytes)),
                   int(os.environ.get("OOBLEX_LIVE_MAX_IN_FLIGHT", cls.max_in_flight)))


class LiveChannelHandler(WebSocketMixin, WebSocketHandler, JupyterHandler):
    auth_resource = "kernels"

    def initialize(self, limits: LiveLimits) -> None:
        self.limits = limits
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pump: asyncio.Task[None] | None = None
        self.in_flight: dict[int, float] = {}
        self.refused = 0

    def set_default_headers(self) -> None:
        """No CSP and friends on a WebSocket upgrade (as Jupyter's kernel WebSocket)."""

    @property
    def max_message_size(self) -> int:
        return self.limits.max_message_bytes

    def get_compression_options(self) -> None:
        return None  # JPEG and pixels do not compress; deflate would only cost CPU

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None))[1]
        message = exc.log_message if isinstance(exc, web.HTTPError) and exc.log_message else self._reason
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"message": message}))

    @ws_authenticated
    async def get(self, kernel_id: str, widget: str) -> None:
        if not await ensure_async(self.authorizer.is_authorized(self, self.current_user, "execute", "kernels")):
            raise web.HTTPError(403, "not allowed to use kernels")
        if self.request.headers.get("Upgrade", "").lower() != "websocket":
            raise web.HTTPError(400, "expected a WebSocket upgrade")
        if not self.check_origin(self.request.headers.get("Origin")):
            raise web.HTTPError(403, "cross-origin WebSocket refused")
        await self._connect(kernel_id, widget)
        try:
            await super().get(kernel_id, widget)
        finally:
            if self.pump is None and self.writer is not None:
                self.writer.close()  # the upgrade failed: do not keep the kernel connection

    async def _connect(self, kernel_id: str, widget: str) -> None:
        km = self.kernel_manager
        if kernel_id not in km:
            raise web.HTTPError(404, f"no kernel {kernel_id} on this server")
        try:
            path = locate(km.get_kernel(kernel_id).connection_file)
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path, limit=READ_BUFFER), CONNECT_TIMEOUT_S)
        except LookupError as exc:
            raise web.HTTPError(404, str(exc)) from None
        except (OSError, asyncio.TimeoutError) as exc:
            raise web.HTTPError(502, f"the kernel's live channel does not answer ({exc})") from None
        self.writer.write(frame(TEXT, json.dumps({"type": "hello", "widget": widget}).encode()))
        try:
            kind, body = await asyncio.wait_for(read_message(self.reader, 1 << 16), CONNECT_TIMEOUT_S)
            reply = json.loads(body)
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
            self.writer.close()
            raise web.HTTPError(502, f"the kernel's live channel did not answer the hello ({exc!r})") from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            self.writer.close()
            raise web.HTTPError(404, str(reply.get("message") if isinstance(reply, dict) else reply))

    def open(self, *args: Any, **kwargs: Any) -> None:
        super().open()
        self.set_nodelay(True)
        self.pump = asyncio.ensure_future(self._from_kernel())

    def on_message(self, message: str | bytes) -> None:
        """Browser -> kernel: frames counted and bounded, everything else passed on as it is."""
        if self.writer is None or self.writer.is_closing():
            return
        if isinstance(message, str):
            self.writer.write(frame(TEXT, message.encode()))
            return
        try:
            header, _ = unpack(message)
        except ProtocolError as exc:
            self.log.warning("ooblex live proxy: dropping a bad binary message: %s", exc)
            return
        seq = header.get("seq")
        if header.get("type") == "frame" and isinstance(seq, int):
            now = time.monotonic()
            for s in [s for s, t0 in self.in_flight.items() if now - t0 > IN_FLIGHT_TIMEOUT_S]:
                del self.in_flight[s]
            buffered = self.writer.transport.get_write_buffer_size()
            if len(self.in_flight) >= self.limits.max_in_flight or buffered > self.limits.max_message_bytes:
                self.refused += 1
                self._send_browser(json.dumps({"type": "ack", "ack": seq, "lane": None,
                                               "refused": f"{len(self.in_flight)} frames in flight"}), False)
                return
            self.in_flight[seq] = now
        self.writer.write(frame(BINARY, message))

    async def _from_kernel(self) -> None:
        """Kernel -> browser, awaiting each write: a slow browser slows the kernel's sends (which then
        send acks without pixels) instead of filling this server's memory."""
        assert self.reader is not None
        why = "the kernel's live channel closed"
        try:
            while True:
                kind, body = await read_message(self.reader, self.limits.max_message_bytes)
                header = unpack(body)[0] if kind == BINARY else json.loads(body)
                ack = header.get("ack") if isinstance(header, dict) else None
                if isinstance(ack, int):
                    for s in [s for s in self.in_flight if s <= ack]:
                        del self.in_flight[s]
                await self.write_message(body if kind == BINARY else body.decode(), binary=kind == BINARY)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except WebSocketClosedError:
            return
        except (ProtocolError, ValueError) as exc:
            why = f"bad message from the kernel: {exc}"
            self.log.warning("ooblex live proxy: %s", why)
        self.close(1011, why[:120])

    def _send_browser(self, message: str, binary: bool) -> None:
        try:
            self.write_message(message, binary=binary)
        except WebSocketClosedError:
            pass

    def on_close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.writer is not None:
            self.writer.close()


def live_handlers(base_url: str) -> list[tuple[str, type, dict[str, Any]]]:
    route = url_path_join(base_url, "ooblex", "kernels", r"(?P<kernel_id>[\w-]+)", "live", r"(?P<widget>\w+)")
    return [(route, LiveChannelHandler, {"limits": LiveLimits.from_env()})]
