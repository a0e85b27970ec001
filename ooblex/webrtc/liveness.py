"""When a peer connection last heard from its peer: any authenticated packet counts.

A session watchdog must tell a vanished peer from a quiet one. Media alone is not enough (a
viewer sends none), and receiver reports alone are not either: RFC 3550 lets a receiver report
every 5 s on average, randomised over 2.5-7.5 s (GStreamer's ``webrtcbin`` does), while ICE
consent checks (RFC 7675) come every ~5 s from browsers and aiortc. So every packet that proves
the peer is there counts: SRTP media and SRTCP of any kind (counted only after they decrypt, so a
stranger's datagrams cannot keep a session alive), and ICE connectivity or consent checks that
carry the peer's valid credentials.

    seen = Liveness(pc)     # after the offer/answer exchange: the transports exist then
    ...
    seen.last               # time.monotonic() of the newest such packet; 0.0 = none yet
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from aioice import stun
from aiortc import RTCPeerConnection

from . import internals


class Liveness:
    """Tracks the newest authenticated packet from the peer of ``pc`` (see the module docstring)."""

    def __init__(self, pc: RTCPeerConnection) -> None:
        self.last = 0.0
        for dtls in {t.receiver.transport for t in pc.getTransceivers() if t.receiver.transport is not None}:
            internals.replace(dtls, "_handle_rtp_data", self._stamped(dtls._handle_rtp_data))
            internals.replace(dtls, "_handle_rtcp_data", self._stamped(dtls._handle_rtcp_data))
            self._watch_ice(dtls.transport._connection)

    def _stamped(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``handler`` (called only for packets that decrypted), noting the time first."""
        @functools.wraps(handler)
        def stamped(*args: Any, **kwargs: Any) -> Any:
            self.last = time.monotonic()
            return handler(*args, **kwargs)
        return stamped

    def _watch_ice(self, connection: Any) -> None:
        original = connection.request_received

        @functools.wraps(original)
        def request_received(message: stun.Message, addr: tuple[str, int], protocol: Any) -> None:
            if ("USERNAME" in message.attributes and "MESSAGE-INTEGRITY" in message.attributes
                    and message.check_message_integrity(connection.local_password.encode("utf8"))):
                self.last = time.monotonic()
            original(message, addr, protocol)

        internals.replace(connection, "request_received", request_received)

    def __call__(self) -> float:
        return self.last
