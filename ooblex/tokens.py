"""Scoped, expiring bearer tokens signed with the cluster secret (JWT, HS256).

With ``OOBLEX_SECRET`` set, nothing that starts work or reveals a stream works without one:

- ``publish`` (claim ``thread``: a name or ``*``): start streams on that thread (WHIP, HTTP
  frames, WebSocket), and watch or tune the streams of that thread whose id you hold;
- ``view`` (claim ``stream``: an id or ``*``): watch that stream (WHEP, MJPEG, its status);
- ``control``: everything, including listings, metrics, jobs and the console.

Tokens are standard JWTs (any JWT library verifies them with the derived key), so a web
service can mint them for its users without Ooblex: ``mint("publish", thread="face_blur")``.
The key is derived from the secret (``ooblex.secret.derive``): the secret itself never travels.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass

from .errors import BadRequest, Forbidden, Unauthorized
from .secret import derive, get_secret, require_secret

SCOPES = ("publish", "view", "control")
ANY = "*"
#: Default lifetime of a minted token.
DEFAULT_TTL_S = 3600.0
_HEADER = {"alg": "HS256", "typ": "JWT"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, expired or signed with another secret."""


@dataclass(frozen=True)
class Token:
    """A verified token's claims."""

    scope: str
    thread: str = ANY
    stream: str = ANY
    expires: float = 0.0
    #: The ``sub`` claim: who the token was minted for ("" if none); per-client limits also count it.
    subject: str = ""

    def allows(self, scope: str, *, thread: str | None = None, stream: str | None = None) -> bool:
        """May the holder do ``scope`` on ``thread`` / ``stream``?

        ``control`` may do anything. A ``publish`` token for thread T may publish to T and view
        or tune any stream of T (the caller still needs the stream's unguessable id). A ``view``
        token may view its one stream (or all, with ``*``).
        """
        if self.scope == "control":
            return True
        if self.scope == "publish":
            return scope in ("publish", "view") and self.thread in (ANY, thread)
        return scope == "view" and self.stream in (ANY, stream)


def mint(scope: str, *, thread: str = ANY, stream: str = ANY, ttl_s: float = DEFAULT_TTL_S,
         secret: str | bytes | None = None) -> str:
    """A token for ``scope`` valid ``ttl_s`` seconds, signed with the secret (``$OOBLEX_SECRET``)."""
    if scope not in SCOPES:
        raise BadRequest(f"token scope must be one of {list(SCOPES)}, got {scope!r}")
    if not ttl_s > 0:
        raise BadRequest(f"token lifetime must be > 0 seconds, got {ttl_s!r}")
    now = int(time.time())
    claims = {"iss": "ooblex", "scope": scope, "thread": thread, "stream": stream, "iat": now,
              "exp": now + int(round(ttl_s))}
    head_body = f"{_b64(json.dumps(_HEADER).encode())}.{_b64(json.dumps(claims, separators=(',', ':')).encode())}"
    return f"{head_body}.{_b64(_sign(require_secret(secret), head_body))}"


def verify(token: str, secret: str | bytes | None = None, *, now: float | None = None) -> Token:
    """The claims of ``token`` if it is well formed, correctly signed and unexpired; else ``InvalidToken``."""
    key = require_secret(secret)
    parts = token.split(".")
    if len(parts) != 3 or len(token) > 4096:
        raise InvalidToken("malformed bearer token (expected a JWT: three base64url parts)")
    head_body = f"{parts[0]}.{parts[1]}"
    try:
        given = _unb64(parts[2])
        header, claims = json.loads(_unb64(parts[0])), json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise InvalidToken("malformed bearer token (not base64url JSON)") from None
    if not hmac.compare_digest(given, _sign(key, head_body)):
        raise InvalidToken("bearer token has a bad signature (signed with another OOBLEX_SECRET?)")
    if not isinstance(header, dict) or header.get("alg") != "HS256" or not isinstance(claims, dict):
        raise InvalidToken("bearer token is not an HS256 JWT")
    scope, exp = claims.get("scope"), claims.get("exp")
    if scope not in SCOPES or not isinstance(exp, (int, float)):
        raise InvalidToken("bearer token lacks a valid scope or expiry")
    if exp <= (time.time() if now is None else now):
        raise InvalidToken("bearer token has expired: mint a new one (ooblex token ...)")
    return Token(scope, str(claims.get("thread", ANY)), str(claims.get("stream", ANY)), float(exp),
                 str(claims.get("sub", "")))


def authorize(token: str | None, scope: str, *, thread: str | None = None, stream: str | None = None,
              secret: str | bytes | None = None) -> Token | None:
    """Check a presented token for one action. No secret configured: allowed (returns None).

    Raises ``Unauthorized`` (no or bad token) or ``Forbidden`` (a valid token of another scope).
    """
    if get_secret(secret) is None:
        return None
    if not token:
        raise Unauthorized(f"this needs a bearer token with scope {scope!r} ('Authorization: Bearer <token>' "
                           "or ?token=<token>; mint one with: ooblex token ...)")
    claims = verify(token, secret)
    if not claims.allows(scope, thread=thread, stream=stream):
        target = f" for thread {thread!r}" if thread else f" for stream {stream!r}" if stream else ""
        raise Forbidden(f"this token (scope {claims.scope!r}) does not allow {scope}{target}")
    return claims


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    scheme, _, value = (authorization or "").partition(" ")
    return (value.strip() or None) if scheme.lower() == "bearer" else None


def parse_ttl(text: str | float) -> float:
    """``"90"``, ``"30m"``, ``"12h"``, ``"7d"`` -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise BadRequest(f"lifetime must look like 90, 30m, 12h or 7d; got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _sign(secret: bytes, head_body: str) -> bytes:
    return hmac.new(derive(secret, "token"), head_body.encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


__all__ = ["ANY", "SCOPES", "InvalidToken", "Token", "authorize", "bearer", "mint", "parse_ttl",
           "verify"]
