"""HMAC-SHA256 signatures for deploy artifacts.

Workers execute deployed code: anyone who can write to the store could otherwise run code on
every worker. So every manifest is signed with ``OOBLEX_SECRET`` (shared by deployers, workers
and gateways, never sent over the wire) and blobs are content-addressed by SHA-256 inside the
signed manifest. A worker without the secret refuses everything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from ..secret import ENV, get_secret, require_secret

__all__ = ["ENV", "SignatureError", "canonical", "get_secret", "require_secret", "sha256", "sign", "verify"]


class SignatureError(PermissionError):
    """An artifact is unsigned, tampered with, or signed with another secret."""


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes that are signed: the document without its signature, keys sorted, compact."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(doc: dict[str, Any], secret: bytes) -> dict[str, Any]:
    """A copy of ``doc`` with ``signature`` set."""
    return {**doc, "signature": hmac.new(secret, canonical(doc), hashlib.sha256).hexdigest()}


def verify(doc: dict[str, Any], secret: bytes | None) -> None:
    """Raise ``SignatureError`` saying why ``doc`` cannot be trusted."""
    if not secret:
        raise SignatureError(f"refusing artifact: this worker has no {ENV} to verify it with")
    sig = doc.get("signature")
    if not isinstance(sig, str) or not sig:
        raise SignatureError("refusing artifact: it is unsigned")
    expected = hmac.new(secret, canonical(doc), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, expected):
        raise SignatureError("refusing artifact: bad signature (tampered with, or signed with another secret)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
