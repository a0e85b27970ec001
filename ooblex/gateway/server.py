"""Serving a gateway app: uvicorn, with deadlines for reading each request's headers and body.

uvicorn bounds the wait between keep-alive requests, but not how long a client may take to send a
request: one that sends a header line every few seconds (slowloris) or a body a byte at a time
holds its socket and buffers for ever. ``TimedHTTP`` (uvicorn's httptools protocol plus two
timers) closes such connections with ``408``:

- a request's line and headers must arrive within ``Settings.header_timeout_s`` of the connection
  opening or of the previous response (a silent connection is just closed);
- its body within ``body_timeout_s``, plus a second for every ``min_body_rate`` bytes received.

``CheckedWebSocket`` (uvicorn's websockets protocol) closes a socket whose text message is not
UTF-8 with 1007 and a reason, where uvicorn closes it with no reason and logs a traceback.

Every way the gateway is served goes through ``config`` (``ooblex demo``/``gateway``/``up``, the
tests); serve your own ``create_app`` the same way::

    from ooblex.gateway import create_app
    from ooblex.gateway.server import serve
    serve(create_app(threads=[blur]), "127.0.0.1", 8800)
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .settings import Settings

log = logging.getLogger("ooblex.gateway")
#: The uvicorn versions whose protocol internals ``TimedHTTP`` was tested against (pyproject pins them).
TESTED_UVICORN = "0.55"


def _check_uvicorn() -> None:
    """Fail loudly at import if uvicorn's internals that ``TimedHTTP`` relies on have changed."""
    hooks = {HttpToolsProtocol: ("connection_made", "connection_lost", "on_message_begin", "on_headers_complete",
                                 "on_body", "on_message_complete", "on_response_complete", "_should_upgrade"),
             WebSocketsSansIOProtocol: ("send_receive_event_to_app", "handle_parser_exception")}
    missing = [f"{cls.__name__}.{h}" for cls, names in hooks.items() for h in names
               if not callable(getattr(cls, h, None))]
    for cls, attrs in ((HttpToolsProtocol, {"parser", "cycle", "flow", "pipeline", "transport", "loop"}),
                       (RequestResponseCycle, {"response_started", "response_complete", "disconnected",
                                               "message_event"}),
                       (FlowControl, {"read_paused"}),
                       (WebSocketsSansIOProtocol, {"conn", "frames", "curr_msg_data_type", "close_sent"})):
        missing += [f"{cls.__name__}.{n}" for n in sorted(attrs - set(cls.__init__.__code__.co_names))]
    if missing:
        raise RuntimeError(f"uvicorn {uvicorn.__version__} lacks {', '.join(missing)}, which ooblex's header and "
                           f"body timeouts rely on (tested with uvicorn {TESTED_UVICORN}.x): install that version")


_check_uvicorn()


class TimedHTTP(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with header and body deadlines (the class attributes; see ``protocol``)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate: int = 8192

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True  # the parser is between requests
        self._request_begun = False
        self._body_start = 0.0
        self._body_bytes = 0
        super().connection_made(transport)
        self._arm_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._request_begun = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._cancel()
        upgrade = self.parser.should_upgrade() and self._should_upgrade()  # WebSocket: uvicorn hands it over
        super().on_headers_complete()
        if not upgrade:
            self._body_start, self._body_bytes = self.loop.time(), 0
            self._body_timer = self.loop.call_later(self.body_timeout_s, self._body_late)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel()
        self._awaiting_headers, self._request_begun = True, False
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._awaiting_headers and not self.pipeline and not self.transport.is_closing():
            self._arm_headers()

    # --- the deadlines ---------------------------------------------------------------------------------
    def _arm_headers(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _cancel(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self._time_out(f"request headers took longer than {self.header_timeout_s:g} s (OOBLEX_HEADER_TIMEOUT_S)",
                           answer=self._request_begun)

    def _body_late(self) -> None:
        self._body_timer = None
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading: the client is not late; its clock restarts
            self._body_start, self._body_bytes = now, 0
            allowed = self.body_timeout_s
        else:
            earned = self._body_bytes / self.min_body_rate if self.min_body_rate else 0.0
            allowed = self._body_start + self.body_timeout_s + earned - now
        if allowed > 0:
            self._body_timer = self.loop.call_later(allowed, self._body_late)
            return
        self._time_out(f"request body took longer than {self.body_timeout_s:g} s plus 1 s per {self.min_body_rate} "
                       "bytes (OOBLEX_BODY_TIMEOUT_S, OOBLEX_MIN_BODY_RATE)",
                       answer=self.cycle is not None and not self.cycle.response_started)

    def _time_out(self, reason: str, answer: bool) -> None:
        """Close the connection, answering ``408`` with ``reason`` when no response has begun."""
        log.debug("closing %s: %s", self.client, reason)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # the app's reads end, its writes go nowhere
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            body = json.dumps({"detail": reason}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


class CheckedWebSocket(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol; a text message that is not UTF-8 closes the socket with 1007 and a reason."""

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            try:
                b"".join(self.frames).decode()
            except UnicodeDecodeError:
                self.frames = []
                self.conn.send_close(1007, "text message is not UTF-8")
                self.handle_parser_exception()  # tells the app, sends the close frame, closes
                return
        super().send_receive_event_to_app()


def protocol(settings: Settings) -> type[TimedHTTP]:
    """``TimedHTTP`` with ``settings``' deadlines (uvicorn makes one protocol object per connection)."""
    return type("TimedHTTP", (TimedHTTP,), {"header_timeout_s": settings.header_timeout_s,
                                            "body_timeout_s": settings.body_timeout_s,
                                            "min_body_rate": settings.min_body_rate})


def config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """A uvicorn ``Config`` for a ``create_app`` app: its settings' deadlines, message limits and proxies.

    Our logging stays in charge (``log_config=None``: uvicorn's own would replace every handler).
    """
    settings: Settings = app.state.gateway.settings
    return uvicorn.Config(app, host=host, port=port, http=protocol(settings), ws=CheckedWebSocket,
                          log_level="warning", log_config=None, access_log=False,
                          **{**settings.server_options(), **options})


def serve(app: Any, host: str, port: int, **options: Any) -> None:
    """Serve ``app`` on ``host:port`` until SIGINT/SIGTERM (then open responses get a few seconds)."""
    uvicorn.Server(config(app, host, port, **{"timeout_graceful_shutdown": 3, **options})).run()
