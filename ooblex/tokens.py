"""Scoped, expiring bearer tokens signed with keys derived from the cluster secret (JWT, HS256, PyJWT).

With ``OOBLEX_SECRET`` set, nothing that starts work or reveals a stream works without one:

- ``publish`` (claim ``thread``: a name or ``"*"``): start streams on that thread (WHIP, HTTP
  frames, WebSocket), and watch or tune the streams of that thread whose id you hold;
- ``view`` (claim ``stream``: an id or ``"*"``): watch that stream (WHEP, MJPEG, its status);
- ``control``: everything, including listings, metrics, jobs and the console.

Every token must carry ``iss: "ooblex"``, ``aud`` (the gateways' audience, ``OOBLEX_TOKEN_AUDIENCE``),
``sub`` (whom it was minted for: per-client limits count it), ``scope``, ``iat`` and ``exp`` (finite,
no longer apart than the scope's maximum lifetime), and a ``kid`` header naming a valid key of the
keyring (``ooblex.token_keys``). A ``publish`` token without ``thread`` or a ``view`` token without
``stream`` is refused: ``"*"`` must be said. Tokens are standard JWTs, so a web service can mint
them without Ooblex (HMAC-SHA256 with ``derive(secret, "token/<kid>")``), or with ``mint(...)``.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from .errors import BadRequest, Forbidden, Unauthorized
from .secret import get_secret, require_secret
from .token_keys import REFRESH_S, Keys, keys_for, signing_key

SCOPES = ("publish", "view", "control")
ANY = "*"
ISSUER = "ooblex"
#: Default ``aud``: gateways of one cluster share it (``Settings.token_audience``).
AUDIENCE = "ooblex"
#: Default lifetime of a minted token.
DEFAULT_TTL_S = 3600.0
#: Default longest lifetime of a control token, and of a publish or view token (``Settings``).
MAX_TTL_CONTROL_S = 7 * 86400.0
MAX_TTL_S = 86400.0
#: How far ahead of a gateway's clock a minting machine's may be (``iat`` in the future).
CLOCK_SKEW_S = 60.0
MAX_TOKEN_CHARS = 4096
#: The claim that names what a scope is for; a token of that scope without it is refused.
TARGET = {"publish": "thread", "view": "stream"}
REQUIRED = ["exp", "iat", "iss", "aud", "sub", "scope"]
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidToken(Unauthorized):
    """A bearer token that is malformed, expired, revoked, for another audience or signed with another secret."""


@dataclass(frozen=True)
class Token:
    """A verified token's claims. An absent ``thread``/``stream`` ("") covers nothing."""

    scope: str
    thread: str = ""
    stream: str = ""
    expires: float = 0.0
    #: Whom the token was minted for (``sub``); per-client limits key on it.
    subject: str = ""
    #: The key it was signed with (``kid``).
    key: str = ""

    def may(self, scope: str) -> bool:
        """May a token of this scope do ``scope`` at all (on some thread or stream)?"""
        return self.scope == "control" or scope == "view" or (scope == "publish" and self.scope == "publish")

    def allows(self, scope: str, *, thread: str | None = None, stream: str | None = None) -> bool:
        """May the holder do ``scope`` on ``thread`` / ``stream``?

        ``control`` may do anything. A ``publish`` token for thread T may publish to T and view
        or tune any stream of T (the caller still needs the stream's unguessable id). A ``view``
        token may view its one stream (or all, with ``*``).
        """
        if self.scope == "control":
            return True
        if self.scope == "publish":
            return scope in ("publish", "view") and thread is not None and self.thread in (ANY, thread)
        return scope == "view" and stream is not None and self.stream in (ANY, stream)


@dataclass(frozen=True)
class Rules:
    """What a token must say to pass here, and where its keys are (a gateway's ``Settings``, or the env)."""

    audience: str = AUDIENCE
    max_ttl_s: float = MAX_TTL_S
    max_ttl_control_s: float = MAX_TTL_CONTROL_S
    #: The keyring; None: the built-in key.
    keys: Keys | None = field(default=None, compare=False)

    def max_ttl(self, scope: str) -> float:
        return self.max_ttl_control_s if scope == "control" else self.max_ttl_s

    def keyring(self, secret: bytes) -> Keys:
        return self.keys if self.keys is not None else Keys(secret)

    @classmethod
    def from_env(cls, secret: bytes, store: str | None = None, watch: bool = False) -> Rules:
        """From ``OOBLEX_TOKEN_AUDIENCE``, ``OOBLEX_MAX_TOKEN_TTL_S``, ``OOBLEX_MAX_TOKEN_TTL_CONTROL_S`` and
        ``OOBLEX_TOKEN_KEYS`` (the gateway's settings of those names), with the keyring in ``store``
        (default ``$OOBLEX_STORE``, or ``$OOBLEX_BROKER`` when it is Redis) unless a file is set; ``watch``:
        re-read it in the background (long-lived processes)."""
        from .cluster.config import env_broker

        broker = env_broker()
        store = store or os.environ.get("OOBLEX_STORE") or (broker if broker.startswith("redis") else None)
        if store and importlib.util.find_spec("redis") is None:  # no cluster extra: no store to read
            store = None
        keys = keys_for(secret, os.environ.get("OOBLEX_TOKEN_KEYS", ""), store,
                        _env_float("OOBLEX_TOKEN_KEYS_REFRESH_S", REFRESH_S), watch=watch)
        return cls(os.environ.get("OOBLEX_TOKEN_AUDIENCE") or AUDIENCE, _env_float("OOBLEX_MAX_TOKEN_TTL_S", MAX_TTL_S),
                   _env_float("OOBLEX_MAX_TOKEN_TTL_CONTROL_S", MAX_TTL_CONTROL_S), keys)


def mint(scope: str, *, thread: str = ANY, stream: str | None = None, ttl_s: float = DEFAULT_TTL_S,
         subject: str | None = None, secret: str | bytes | None = None, rules: Rules | None = None) -> str:
    """A token for ``scope`` valid ``ttl_s`` seconds (at most the scope's maximum), for ``subject``
    (default: a new random id), signed with the keyring's current key (``rules``: default from the env).
    A ``publish`` token is for ``thread`` (default any); a ``view`` token names its ``stream`` (or ``"*"``)."""
    if scope not in SCOPES:
        raise BadRequest(f"token scope must be one of {list(SCOPES)}, got {scope!r}")
    if scope == "view" and not stream:
        raise BadRequest("a view token is for one stream (stream=ID) or, said explicitly, every one (stream='*')")
    key = require_secret(secret)
    rules = rules or _env_rules(key)
    longest = rules.max_ttl(scope)
    if not 0 < ttl_s <= longest:
        raise BadRequest(f"token lifetime must be > 0 and at most {_span(longest)} for {scope} tokens "
                         f"(OOBLEX_MAX_TOKEN_TTL{'_CONTROL' if scope == 'control' else ''}_S), got {_span(ttl_s)}")
    ring = rules.keyring(key).signing_ring()
    if not ring.current:
        raise BadRequest("no valid token key to sign with: the token keyring does not verify (see the log)")
    now = int(time.time())
    claims: dict[str, Any] = {"iss": ISSUER, "aud": rules.audience, "sub": subject or secrets.token_urlsafe(12),
                              "scope": scope, "iat": now, "exp": now + min(max(1, round(ttl_s)), int(longest))}
    if scope in TARGET:
        claims[TARGET[scope]] = thread if scope == "publish" else stream
    return jwt.encode(claims, signing_key(key, ring.current), algorithm="HS256", headers={"kid": ring.current})


def verify(token: str, secret: str | bytes | None = None, *, now: float | None = None,
           rules: Rules | None = None) -> Token:
    """The claims of ``token`` if it is a well-formed, unexpired token for this audience signed with a
    valid key; else ``InvalidToken`` saying why."""
    key = require_secret(secret)
    rules = rules or _env_rules(key)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidToken(f"malformed bearer token (expected a JWT of at most {MAX_TOKEN_CHARS} characters)")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError:
        raise InvalidToken("malformed bearer token (expected a JWT: three base64url parts)") from None
    ring = rules.keyring(key).ring()
    if not isinstance(kid, str) or kid not in ring.keys:
        raise InvalidToken("bearer token is signed with a key that is not valid here (revoked, from another "
                           "cluster, or no kid header): mint a new one (ooblex token ...)")
    try:
        claims = jwt.decode(token, signing_key(key, kid), algorithms=["HS256"], audience=rules.audience,
                            issuer=ISSUER, options={"require": REQUIRED, "verify_exp": False, "verify_iat": False})
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(_reason(exc, rules)) from None
    return _checked(claims, kid, rules, time.time() if now is None else now)


def authorize(token: str | None, scope: str, *, thread: str | None = None, stream: str | None = None,
              secret: str | bytes | None = None, rules: Rules | None = None) -> Token | None:
    """Check a presented token for one action. No secret configured: allowed (returns None).

    Raises ``Unauthorized`` (no or bad token) or ``Forbidden`` (a valid token of another scope).
    """
    if get_secret(secret) is None:
        return None
    claims = verified(token, scope, secret=secret, rules=rules)
    if not claims.allows(scope, thread=thread, stream=stream):
        target = f" for thread {thread!r}" if thread else ""
        raise Forbidden(f"this token (scope {claims.scope!r}) does not allow {scope}{target}")
    return claims


def verified(token: str | None, scope: str, *, secret: str | bytes | None = None,
             rules: Rules | None = None) -> Token:
    """The claims of a presented token (``Unauthorized`` if there is none or it is invalid) for an action of
    ``scope``."""
    if not token:
        raise Unauthorized(f"this needs a bearer token with scope {scope!r} ('Authorization: Bearer <token>' "
                           "or ?token=<token>; mint one with: ooblex token ...)")
    return verify(token, secret, rules=rules)


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


def _checked(claims: dict[str, Any], kid: str, rules: Rules, now: float) -> Token:
    """The token's claims, checked beyond what PyJWT checks: finite times, lifetime, scope and target."""
    exp, iat, scope, sub = claims["exp"], claims["iat"], claims["scope"], claims["sub"]
    if not all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in (exp, iat)):
        raise InvalidToken("bearer token's exp and iat must be finite numbers (seconds since 1970)")
    if exp <= now:
        raise InvalidToken("bearer token has expired: mint a new one (ooblex token ...)")
    if iat > now + CLOCK_SKEW_S:
        raise InvalidToken("bearer token is issued in the future (iat): check the clock where it was minted")
    if scope not in SCOPES:
        raise InvalidToken(f"bearer token's scope must be one of {list(SCOPES)}")
    if exp - iat > rules.max_ttl(scope):
        raise InvalidToken(f"bearer token lives longer (exp - iat = {_span(exp - iat)}) than {scope} tokens may "
                           f"here ({_span(rules.max_ttl(scope))}): mint a shorter one")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("bearer token's sub (whom it is for) must be a non-empty string")
    target = TARGET.get(scope)
    value = claims.get(target) if target else ""
    if not isinstance(value, str) or (target and not value):
        raise InvalidToken(f"a {scope} token must name its {target} (a claim {target!r}: a name, or '*' for all)")
    return Token(scope, value if target == "thread" else "", value if target == "stream" else "", float(exp),
                 sub, kid)


def _reason(exc: jwt.InvalidTokenError, rules: Rules) -> str:
    if isinstance(exc, jwt.InvalidSignatureError):
        return "bearer token has a bad signature (signed with another OOBLEX_SECRET?)"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"bearer token lacks the {exc.claim!r} claim (needed: {', '.join(REQUIRED)})"
    if isinstance(exc, jwt.InvalidAudienceError):
        return f"bearer token is for another audience: these gateways take aud {rules.audience!r}"
    if isinstance(exc, jwt.InvalidIssuerError):
        return f"bearer token is not issued by {ISSUER!r} (iss)"
    if isinstance(exc, jwt.InvalidAlgorithmError):
        return "bearer token is not an HS256 JWT"
    return "malformed bearer token (not a JWT with JSON claims)"


def _span(seconds: float) -> str:
    """``90000`` -> ``"1.04 d"``: lifetimes in the unit a reader expects."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise BadRequest(f"{name} expects a number of seconds, got {raw!r}") from None
    if not value > 0 or not math.isfinite(value):
        raise BadRequest(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


_cached: tuple[tuple[Any, ...], Rules] | None = None


def _env_rules(secret: bytes) -> Rules:
    """``Rules.from_env`` for callers that pass none, made once per environment (one keyring, read at most
    every ``OOBLEX_TOKEN_KEYS_REFRESH_S``)."""
    global _cached
    names = ("OOBLEX_TOKEN_AUDIENCE", "OOBLEX_MAX_TOKEN_TTL_S", "OOBLEX_MAX_TOKEN_TTL_CONTROL_S", "OOBLEX_TOKEN_KEYS",
             "OOBLEX_TOKEN_KEYS_REFRESH_S", "OOBLEX_STORE", "OOBLEX_BROKER", "OOBLEX_CLUSTER")
    env = (secret, *(os.environ.get(n) for n in names))
    if _cached is None or _cached[0] != env:
        _cached = (env, Rules.from_env(secret, watch=True))
    return _cached[1]


__all__ = ["ANY", "AUDIENCE", "SCOPES", "InvalidToken", "Rules", "Token", "authorize", "bearer", "mint",
           "parse_ttl", "verified", "verify"]
