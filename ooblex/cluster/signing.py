"""HMAC-SHA256 signatures for what the cluster store holds: artifacts, thread states, status records.

Anyone who can write to the store could otherwise run code on every worker, switch or remove
versions, or point clients (and their tokens) at a server of their own. So every document a
machine acts on is signed, and each kind with its own key derived from ``OOBLEX_SECRET``
(``ooblex.secret.derive``): a signature made for one purpose never passes as another (an
artifact's as a status record, either as a bearer token). The secret itself never travels.
Blobs are content-addressed by SHA-256 inside the signed manifest.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from ..errors import Forbidden
from ..secret import ENV, derive, get_secret, require_secret

__all__ = ["ARTIFACT", "ENV", "MARK", "RECORD", "STATE", "SignatureError", "canonical", "get_secret", "require_secret",
           "sha256", "sign", "verify", "warn_once"]

#: Purposes, one derived key each: deploy manifests, per-thread states, worker/gateway status records,
#: the cluster's high-water mark.
ARTIFACT, STATE, RECORD, MARK = "artifact", "state", "record", "mark"
log = logging.getLogger("ooblex.cluster")
_warned: set[str] = set()
_MAX_WARNED = 1024  # a flood of forged documents must not grow memory without bound


class SignatureError(Forbidden):
    """A document is unsigned, tampered with, signed with another secret or stored under another key."""


def canonical(doc: dict[str, Any]) -> bytes:
    """The bytes that are signed: the document without its signature, keys sorted, compact."""
    body = {k: v for k, v in doc.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _mac(doc: dict[str, Any], secret: bytes, purpose: str) -> str:
    return hmac.new(derive(secret, purpose), canonical(doc), hashlib.sha256).hexdigest()


def sign(doc: dict[str, Any], secret: bytes, purpose: str) -> dict[str, Any]:
    """A copy of ``doc`` with ``signature`` set, made with the key derived for ``purpose``."""
    return {**doc, "signature": _mac(doc, secret, purpose)}


def verify(doc: Any, secret: bytes | None, purpose: str, what: str = "artifact") -> None:
    """Raise ``SignatureError`` saying why ``doc`` (a ``what``) cannot be trusted for ``purpose``."""
    if not secret:
        raise SignatureError(f"refusing {what}: this machine has no {ENV} to verify it with")
    if not isinstance(doc, dict):
        raise SignatureError(f"refusing {what}: it is not a signed document")
    sig = doc.get("signature")
    if not isinstance(sig, str) or not sig:
        raise SignatureError(f"refusing {what}: it is unsigned")
    if not hmac.compare_digest(sig, _mac(doc, secret, purpose)):
        raise SignatureError(f"refusing {what}: bad signature (tampered with, or signed with another secret)")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def warn_once(key: str, msg: str, *args: Any) -> None:
    """Log a refusal once per ``key`` (a forged document is read again at every poll)."""
    if key in _warned:
        return
    if len(_warned) >= _MAX_WARNED:
        key, msg, args = "", "%d different refusals logged; further ones are not", (_MAX_WARNED,)
        if key in _warned:
            return
    _warned.add(key)
    log.warning(msg, *args)
