"""HMAC-SHA256 signatures for deploy artifacts, and bearer tokens for control endpoints.

Workers execute deployed code: anyone who can write to the store could otherwise run code on
every worker. So every manifest is signed with ``OOBLEX_SECRET`` (shared by deployers, workers
and gateways, never sent over the wire) and blobs are content-addressed by SHA-256 inside the
signed manifest. A worker without the secret refuses everything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

ENV = "OOBLEX_SECRET"


class SignatureError(PermissionError):
    """An artifact is unsigned, tampered with, or signed with another secret."""


def get_secret(explicit: str | bytes | None = None) -> bytes | None:
    """The cluster secret: ``explicit``, else ``$OOBLEX_SECRET``, else None."""
    value = explicit if explicit is not None else os.environ.get(ENV) or None
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else value


def require_secret(explicit: str | bytes | None = None) -> bytes:
    secret = get_secret(explicit)
    if not secret:
        raise SignatureError(f"no cluster secret: set {ENV} (the same value on deployers, workers and "
                             "gateways), e.g. export OOBLEX_SECRET=$(python -c "
                             "'import secrets; print(secrets.token_urlsafe(32))')")
    return secret


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


def control_token(secret: str | bytes | None = None) -> str | None:
    """The bearer token for control endpoints, derived from the secret (the secret itself never travels)."""
    key = get_secret(secret)
    if not key:
        return None
    return hmac.new(key, b"ooblex-control-v1", hashlib.sha256).hexdigest()


def check_bearer(authorization: str | None, secret: str | bytes | None = None) -> bool:
    """For gateways: is this ``Authorization`` header allowed to use control endpoints?

    True when no secret is configured (an open dev setup); otherwise it must be
    ``Bearer <control_token()>``.
    """
    token = control_token(secret)
    if token is None:
        return True
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
