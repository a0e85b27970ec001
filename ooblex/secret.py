"""The cluster secret (``OOBLEX_SECRET``) and the keys derived from it, one per purpose.

One secret is shared by deployers, workers, gateways and the Jupyter extension; it never
travels. Each use (artifact signatures, status records, bearer tokens) signs with its own
derived key, so a value signed for one purpose can never pass as another.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from .errors import Forbidden

ENV = "OOBLEX_SECRET"


class MissingSecret(Forbidden):
    """An operation that needs the cluster secret was attempted without one."""


def get_secret(explicit: str | bytes | None = None) -> bytes | None:
    """The cluster secret: ``explicit``, else ``$OOBLEX_SECRET``, else None."""
    value = explicit if explicit is not None else os.environ.get(ENV) or None
    if not value:
        return None
    return value.encode() if isinstance(value, str) else value


def require_secret(explicit: str | bytes | None = None) -> bytes:
    """The cluster secret, or ``MissingSecret`` saying how to set one."""
    secret = get_secret(explicit)
    if not secret:
        raise MissingSecret(f"no cluster secret: set {ENV} (the same value on deployers, workers and "
                            "gateways), e.g. export OOBLEX_SECRET=$(python -c "
                            "'import secrets; print(secrets.token_urlsafe(32))')")
    return secret


def derive(secret: bytes, purpose: str) -> bytes:
    """The key for ``purpose`` (``"record"``, ``"token/<kid>"``, ...): HMAC-SHA256 of the secret."""
    return hmac.new(secret, f"ooblex/{purpose}/v1".encode(), hashlib.sha256).digest()
