"""Scoped bearer tokens: minting, verification, scopes and failure reasons (pure logic)."""

from __future__ import annotations

import base64
import json
import time

import pytest

from ooblex.errors import Forbidden, Unauthorized
from ooblex.tokens import InvalidToken, authorize, bearer, mint, parse_ttl, verify

SECRET = "s3cret-for-tests"


def test_mint_and_verify_round_trip() -> None:
    token = mint("publish", thread="face_blur", ttl_s=60, secret=SECRET)
    assert SECRET not in token and token.count(".") == 2
    claims = verify(token, SECRET)
    assert (claims.scope, claims.thread, claims.stream) == ("publish", "face_blur", "*")
    assert time.time() + 55 < claims.expires <= time.time() + 61


def test_bad_signature_expiry_and_garbage_are_refused() -> None:
    token = mint("control", secret=SECRET)
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(token, "another secret")
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "scope": "control"}).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(f"{head}.{forged}.{sig}", SECRET)
    with pytest.raises(InvalidToken, match="expired"):
        verify(mint("view", ttl_s=1, secret=SECRET), SECRET, now=time.time() + 5)
    for garbage in ("", "abc", "a.b.c", "a.b", "....", "é.é.é", "x" * 5000):
        with pytest.raises(InvalidToken):
            verify(garbage, SECRET)
    with pytest.raises(ValueError, match="scope"):
        mint("admin", secret=SECRET)


def test_scopes() -> None:
    publish = verify(mint("publish", thread="blur", secret=SECRET), SECRET)
    assert publish.allows("publish", thread="blur") and publish.allows("view", thread="blur", stream="s1")
    assert not publish.allows("publish", thread="swap") and not publish.allows("control")
    view = verify(mint("view", stream="s1", secret=SECRET), SECRET)
    assert view.allows("view", thread="blur", stream="s1")
    assert not view.allows("view", stream="s2") and not view.allows("publish", thread="blur")
    control = verify(mint("control", secret=SECRET), SECRET)
    assert control.allows("control") and control.allows("publish", thread="x")


def test_authorize() -> None:
    assert authorize(None, "control", secret=b"") is None  # no secret: open
    with pytest.raises(Unauthorized, match="needs a bearer token"):
        authorize(None, "control", secret=SECRET)
    with pytest.raises(Forbidden, match="does not allow publish for thread 'swap'"):
        authorize(mint("publish", thread="blur", secret=SECRET), "publish", thread="swap", secret=SECRET)
    assert authorize(mint("view", stream="s", secret=SECRET), "view", stream="s", secret=SECRET).scope == "view"


def test_helpers() -> None:
    assert bearer("Bearer abc ") == "abc" and bearer("bearer x") == "x"
    assert bearer("Basic abc") is None and bearer(None) is None and bearer("Bearer ") is None
    assert parse_ttl("90") == 90 and parse_ttl("30m") == 1800 and parse_ttl("2h") == 7200 and parse_ttl("7d") == 604800
    with pytest.raises(ValueError, match="lifetime"):
        parse_ttl("soon")
