"""Scoped bearer tokens: minting, verification, scopes, failure reasons and the keyring (pure logic, files)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest

from ooblex.errors import Forbidden, Unauthorized
from ooblex.token_keys import BUILTIN, STORE_KEY, FileKeys, Ring, StoreKeys, signing_key
from ooblex.tokens import InvalidToken, Rules, Token, authorize, bearer, mint, parse_ttl, verify

from .cluster_fixtures import needs_redis, redis_server  # noqa: F401

SECRET = "s3cret-for-tests"
KEY = signing_key(SECRET.encode(), BUILTIN)


def claims(**changes: object) -> dict:
    """Valid claims of a publish token, with ``changes`` (None removes a claim)."""
    now = int(time.time())
    base = {"iss": "ooblex", "aud": "ooblex", "sub": "cam-1", "scope": "publish", "thread": "blur", "iat": now,
            "exp": now + 600}
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


def signed(payload: dict, kid: str | None = BUILTIN, key: bytes = KEY) -> str:
    """A token made as another system would make one (PyJWT, the documented derived key)."""
    return jwt.encode(payload, key, algorithm="HS256", headers={"kid": kid} if kid else None)


def test_mint_and_verify_round_trip() -> None:
    token = mint("publish", thread="face_blur", ttl_s=60, subject="camera-7", secret=SECRET)
    assert SECRET not in token and token.count(".") == 2
    got = verify(token, SECRET)
    assert (got.scope, got.thread, got.stream, got.subject, got.key) == ("publish", "face_blur", "", "camera-7", "0")
    assert time.time() + 55 < got.expires <= time.time() + 61
    # a standard JWT: any library checks it with the key derived for its kid
    raw = jwt.decode(token, KEY, algorithms=["HS256"], audience="ooblex", issuer="ooblex")
    assert set(raw) == {"iss", "aud", "sub", "scope", "thread", "iat", "exp"}
    assert jwt.get_unverified_header(token)["kid"] == BUILTIN
    # each minted token gets a subject of its own unless one is given
    assert verify(mint("control", secret=SECRET), SECRET).subject != verify(mint("control", secret=SECRET),
                                                                             SECRET).subject


def test_bad_signature_expiry_and_garbage_are_refused() -> None:
    token = mint("control", secret=SECRET)
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(token, "another secret")
    head, body, sig = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps(claims(scope="control")).encode()).decode()
    with pytest.raises(InvalidToken, match="bad signature"):
        verify(f"{head}.{forged}.{sig}", SECRET)
    with pytest.raises(InvalidToken, match="expired"):
        verify(mint("view", stream="s", ttl_s=1, secret=SECRET), SECRET, now=time.time() + 5)
    for garbage in ("", "abc", "a.b.c", "a.b", "....", "é.é.é", "x" * 5000):
        with pytest.raises(InvalidToken, match="malformed"):
            verify(garbage, SECRET)
    with pytest.raises(ValueError, match="scope"):
        mint("admin", secret=SECRET)
    with pytest.raises(ValueError, match="stream='\\*'"):
        mint("view", secret=SECRET)
    with pytest.raises(InvalidToken, match="HS256"):
        verify(jwt.encode(claims(), "k" * 48, algorithm="HS384", headers={"kid": BUILTIN}), SECRET)
    with pytest.raises(InvalidToken, match="HS256"):
        verify(jwt.encode(claims(), None, algorithm="none", headers={"kid": BUILTIN}), SECRET)


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "scope"])
def test_every_required_claim_is_required(claim: str) -> None:
    assert verify(signed(claims()), SECRET).thread == "blur"
    with pytest.raises(InvalidToken, match=f"lacks the '{claim}' claim"):
        verify(signed(claims(**{claim: None})), SECRET)


def test_issuer_audience_and_times_are_checked() -> None:
    with pytest.raises(InvalidToken, match="not issued by 'ooblex'"):
        verify(signed(claims(iss="someone-else")), SECRET)
    with pytest.raises(InvalidToken, match="another audience: these gateways take aud 'ooblex'"):
        verify(signed(claims(aud="another-cluster")), SECRET)
    assert verify(signed(claims(aud="edge-1")), SECRET, rules=Rules(audience="edge-1")).scope == "publish"
    with pytest.raises(InvalidToken, match="another audience"):
        verify(mint("control", secret=SECRET, rules=Rules(audience="edge-1")), SECRET)
    for bad in (float("nan"), float("inf"), float("-inf")):  # JSON NaN / Infinity never expire otherwise
        with pytest.raises(InvalidToken, match="finite"):
            verify(signed(claims(exp=bad)), SECRET)
        with pytest.raises(InvalidToken, match="finite"):
            verify(signed(claims(iat=bad)), SECRET)
    with pytest.raises(InvalidToken, match="finite"):
        verify(signed(claims(exp="2099-01-01")), SECRET)
    with pytest.raises(InvalidToken, match="finite"):
        verify(signed(claims(exp=True)), SECRET)
    future = int(time.time()) + 10 * 365 * 86400  # an iat far ahead would stretch a short lifetime for years
    with pytest.raises(InvalidToken, match="issued in the future"):
        verify(signed(claims(iat=future, exp=future + 600)), SECRET)
    with pytest.raises(InvalidToken, match="sub"):
        verify(signed(claims(sub="")), SECRET)


def test_the_longest_lifetime_is_enforced_when_minting_and_when_verifying() -> None:
    with pytest.raises(ValueError, match=r"at most 1 d for publish tokens \(OOBLEX_MAX_TOKEN_TTL_S\), got 1e\+11 d"):
        mint("publish", ttl_s=parse_ttl("99999999999d"), secret=SECRET)
    with pytest.raises(ValueError, match=r"at most 7 d for control tokens"):
        mint("control", ttl_s=parse_ttl("8d"), secret=SECRET)
    for bad in (0, -5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lifetime"):
            mint("view", stream="s", ttl_s=bad, secret=SECRET)
    assert verify(mint("control", ttl_s=parse_ttl("7d"), secret=SECRET), SECRET).scope == "control"
    now = int(time.time())
    with pytest.raises(InvalidToken, match="lives longer"):
        verify(signed(claims(iat=now, exp=now + 86401)), SECRET)
    with pytest.raises(InvalidToken, match="lives longer"):
        verify(signed(claims(scope="control", thread=None, iat=now, exp=now + 8 * 86400)), SECRET)
    assert verify(signed(claims(scope="control", thread=None, iat=now, exp=now + 6 * 86400)), SECRET)
    short = Rules(max_ttl_s=60)
    with pytest.raises(InvalidToken, match="lives longer"):
        verify(signed(claims()), SECRET, rules=short)
    with pytest.raises(ValueError, match="at most 1 m"):
        mint("publish", ttl_s=600, secret=SECRET, rules=short)


def test_a_missing_thread_or_stream_covers_nothing() -> None:
    with pytest.raises(InvalidToken, match="publish token must name its thread"):
        verify(signed(claims(thread=None)), SECRET)
    with pytest.raises(InvalidToken, match="view token must name its stream"):
        verify(signed(claims(scope="view", thread=None)), SECRET)
    with pytest.raises(InvalidToken, match="must name its stream"):
        verify(signed(claims(scope="view", thread=None, stream="")), SECRET)
    with pytest.raises(InvalidToken, match="must name its thread"):
        verify(signed(claims(thread=["a", "b"])), SECRET)
    everything = verify(signed(claims(scope="view", thread=None, stream="*")), SECRET)  # said explicitly: fine
    assert everything.allows("view", stream="any-id")
    assert not Token("publish").allows("publish", thread="blur") and not Token("view").allows("view", stream="s")


def test_key_ids() -> None:
    with pytest.raises(InvalidToken, match="not valid here"):
        verify(signed(claims(), kid=None), SECRET)
    with pytest.raises(InvalidToken, match="not valid here"):
        verify(signed(claims(), kid="k9", key=signing_key(SECRET.encode(), "k9")), SECRET)
    with pytest.raises(InvalidToken, match="bad signature"):  # kid 0 named, signed with another kid's key
        verify(signed(claims(), key=signing_key(SECRET.encode(), "k9")), SECRET)
    head = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "kid": ["0"]}).encode()).decode()
    _, body, sig = signed(claims()).split(".")
    with pytest.raises(InvalidToken, match="malformed"):
        verify(f"{head}.{body}.{sig}", SECRET)


def test_scopes() -> None:
    publish = verify(mint("publish", thread="blur", secret=SECRET), SECRET)
    assert publish.allows("publish", thread="blur") and publish.allows("view", thread="blur", stream="s1")
    assert not publish.allows("publish", thread="swap") and not publish.allows("control")
    assert not publish.allows("view", stream="s1")  # no thread known: not covered
    assert publish.may("publish") and publish.may("view") and not publish.may("control")
    view = verify(mint("view", stream="s1", secret=SECRET), SECRET)
    assert view.allows("view", thread="blur", stream="s1")
    assert not view.allows("view", stream="s2") and not view.allows("publish", thread="blur")
    assert view.may("view") and not view.may("publish")
    control = verify(mint("control", secret=SECRET), SECRET)
    assert control.allows("control") and control.allows("publish", thread="x") and control.may("publish")


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


# --- the keyring -----------------------------------------------------------------------------------------
def test_a_file_keyring_rotates_and_revokes(tmp_path: Path) -> None:
    secret, path = SECRET.encode(), tmp_path / "keys.json"
    keys = FileKeys(secret, path)
    rules = Rules(keys=keys)
    assert keys.ring().current == BUILTIN  # no file yet: the built-in key
    old = mint("publish", thread="a", secret=SECRET, rules=rules)
    ring = FileKeys(secret, path).update(lambda r: r.rotated())  # another process rotates
    assert ring.current != BUILTIN and set(ring.keys) == {BUILTIN, ring.current}
    new = mint("publish", thread="a", secret=SECRET, rules=rules)
    assert verify(new, SECRET, rules=rules).key == ring.current
    assert verify(old, SECRET, rules=rules).key == BUILTIN  # old keys stay valid until removed
    with pytest.raises(ValueError, match="signs new tokens"):
        FileKeys(secret, path).update(lambda r: r.revoked([ring.current]))
    with pytest.raises(ValueError, match="no such token key"):
        FileKeys(secret, path).update(lambda r: r.revoked(["nope"]))
    FileKeys(secret, path).update(lambda r: r.revoked([BUILTIN]))
    with pytest.raises(InvalidToken, match="not valid here"):  # the same reader sees the change at once
        verify(old, SECRET, rules=rules)
    assert verify(new, SECRET, rules=rules).scope == "publish"
    FileKeys(secret, path).update(lambda r: r.rotated(revoke_old=True))
    with pytest.raises(InvalidToken, match="not valid here"):
        verify(new, SECRET, rules=rules)


def test_a_keyring_that_does_not_verify_or_is_older_is_ignored(tmp_path: Path) -> None:
    secret, path = SECRET.encode(), tmp_path / "keys.json"
    first = FileKeys(secret, path).update(lambda r: r.rotated())
    saved = path.read_bytes()
    keys = FileKeys(secret, path)
    assert keys.ring() == first
    second = FileKeys(secret, path).update(lambda r: r.rotated(revoke_old=True))
    assert keys.ring() == second
    path.write_bytes(saved)  # a replayed older ring brings back no revoked key
    assert keys.ring() == second
    forged = {**json.loads(saved), "keys": {"evil": 1.0}, "current": "evil"}
    path.write_text(json.dumps(forged))
    assert keys.ring() == second  # a forged one is ignored too
    path.unlink()
    assert keys.ring() == second  # and a deleted one: the last verified ring stays
    path.write_text(json.dumps(forged))
    fresh = FileKeys(secret, path)  # a reader that never verified a ring trusts no key at all
    assert fresh.ring().keys == {}
    with pytest.raises(InvalidToken, match="not valid here"):
        verify(mint("control", secret=SECRET), SECRET, rules=Rules(keys=fresh))
    with pytest.raises(ValueError, match="no valid token key"):
        mint("control", secret=SECRET, rules=Rules(keys=fresh))
    other = FileKeys(b"another secret", tmp_path / "other.json")
    other.update(lambda r: r.rotated())
    assert FileKeys(secret, tmp_path / "other.json").ring().keys == {}  # signed with another secret


def test_a_ring_round_trips_and_checks_its_shape() -> None:
    ring = Ring(BUILTIN, {BUILTIN: 0.0}).rotated()
    assert Ring.verified(ring.signed(b"k"), b"k") == ring and ring.rotated().seq > ring.seq
    bad = Ring("x y", {"x y": 1.0}).signed(b"k")
    with pytest.raises(ValueError, match="malformed"):
        Ring.verified(bad, b"k")


@needs_redis
def test_a_store_keyring_is_shared_and_polled(redis_server) -> None:  # noqa: F811
    secret = SECRET.encode()
    watched = StoreKeys(secret, redis_server.url, refresh_s=0.1, watch=True)
    assert watched.ring().current == BUILTIN
    ring = StoreKeys(secret, redis_server.url).update(lambda r: r.rotated())
    deadline = time.monotonic() + 5
    while watched.ring() != ring and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watched.ring() == ring
    redis_server_doc = json.loads(StoreKeys(secret, redis_server.url).r.get(STORE_KEY))
    assert redis_server_doc["signature"] and redis_server_doc["current"] == ring.current
    StoreKeys(secret, redis_server.url).r.delete(STORE_KEY)
    time.sleep(0.3)
    assert watched.ring() == ring  # deleting the ring does not bring back the built-in key here
