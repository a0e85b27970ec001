"""Short-lived TURN credentials by the TURN REST API scheme (coturn ``use-auth-secret``).

The gateway and the TURN server share a secret; the gateway hands each caller a fresh username
``<expiry unix time>:<id>`` and, as password, ``base64(HMAC-SHA1(secret, username))``. The TURN
server recomputes the password from the username alone, so no account is stored anywhere and a
leaked credential stops working at its expiry (coturn checks it when an allocation is made; an
allocation made in time lives on while refreshed).

    >>> username, password = turn_credentials("s3cret", "abc", ttl_s=600, now=1_700_000_000)
    >>> username
    '1700000600:abc'
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time


def turn_credentials(secret: str, user: str, ttl_s: float, now: float | None = None) -> tuple[str, str]:
    """``(username, password)`` valid for ``ttl_s`` seconds from ``now`` (default: the current time)."""
    if not secret:
        raise ValueError("TURN REST credentials need the shared secret (turn_secret)")
    if ":" in user:
        raise ValueError(f"TURN user id {user!r} must not contain ':' (the expiry separator)")
    expiry = int((time.time() if now is None else now) + ttl_s)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


def turn_server(urls: list[str], secret: str, user: str, ttl_s: float) -> dict[str, object]:
    """An RTCIceServer dict for ``urls`` with fresh credentials for ``user``."""
    username, password = turn_credentials(secret, user, ttl_s)
    return {"urls": list(urls), "username": username, "credential": password}
