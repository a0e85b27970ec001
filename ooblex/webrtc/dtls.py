"""DTLS that completes a handshake with RSA peers as well as ECDSA ones.

aiortc's certificate is ECDSA (P-256), and it restricts its DTLS cipher list to ECDHE-ECDSA suites.
That is enough while aiortc is the DTLS server (its own certificate picks the suite), but an
aiortc *client* then cannot talk to a server whose certificate is RSA: GStreamer's ``webrtcbin``
uses RSA-2048 by default, and an aiortc answer to an ``a=setup:actpass`` offer makes aiortc the
client, so every stock ``webrtcbin`` publisher or viewer failed with "no shared cipher".

``accept_rsa_peers()`` adds the ECDHE-RSA counterparts of the same suites (forward secret AEAD
first, as browsers order them). It changes how aiortc builds its DTLS context process-wide; our
own certificate stays ECDSA.
"""

from __future__ import annotations

from typing import Any

from aiortc.rtcdtlstransport import RTCCertificate

from . import internals

#: ECDHE with ECDSA or RSA authentication; AES-GCM and ChaCha20 first, CBC-SHA1 for old stacks.
CIPHERS = b":".join([
    b"ECDHE-ECDSA-AES128-GCM-SHA256", b"ECDHE-RSA-AES128-GCM-SHA256",
    b"ECDHE-ECDSA-AES256-GCM-SHA384", b"ECDHE-RSA-AES256-GCM-SHA384",
    b"ECDHE-ECDSA-CHACHA20-POLY1305", b"ECDHE-RSA-CHACHA20-POLY1305",
    b"ECDHE-ECDSA-AES128-SHA", b"ECDHE-RSA-AES128-SHA",
    b"ECDHE-ECDSA-AES256-SHA", b"ECDHE-RSA-AES256-SHA",
])

_original = RTCCertificate._create_ssl_context


def _create_ssl_context(self: RTCCertificate, *args: Any, **kwargs: Any) -> Any:
    ctx = _original(self, *args, **kwargs)
    ctx.set_cipher_list(CIPHERS)
    return ctx


def accept_rsa_peers() -> None:
    """Let every aiortc DTLS handshake in this process accept RSA as well as ECDSA peers (idempotent)."""
    internals.replace(RTCCertificate, "_create_ssl_context", _create_ssl_context)
