"""Issue 21, point 10 (tokens), against real gateways (``running_gateway``) and the real ``ooblex token`` command.

Each finding is replayed as the attacker did it and must now fail with a clear 4xx (or a refusal to mint):
no maximum TTL, no revocation, ``exp: NaN``, an unchecked ``iss``, a missing ``thread``/``stream`` meaning
``*``, ``ooblex token view`` silently covering every stream, and 403s that tell whether a stream exists.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import numpy as np
import pytest
import redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from ooblex import jpeg
from ooblex.gateway import Settings
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS
from ooblex.token_keys import BUILTIN, STORE_KEY, FileKeys, signing_key
from ooblex.tokens import Rules, mint, verify

from .cluster_fixtures import needs_redis, redis_server  # noqa: F401
from .gateway_server import running_gateway
from .media import sdp_offer

pytestmark = pytest.mark.timeout(120)
SECRET = "round2-token-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
IMAGE = jpeg.encode(np.full((48, 64, 3), 90, np.uint8))
JPEG = {"Content-Type": "image/jpeg"}


def settings(**kw: object) -> Settings:
    return Settings(**{"loopback_candidates": True, "secret": SECRET, **kw})


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def forged(**changes: object) -> str:
    """A token as another system would sign it, with the right key: valid claims with ``changes`` (None drops)."""
    now = int(time.time())
    claims = {"iss": "ooblex", "aud": "ooblex", "sub": "attacker", "scope": "publish", "thread": "invert",
              "iat": now, "exp": now + 600, **changes}
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, signing_key(SECRET.encode(), BUILTIN),
                      algorithm="HS256", headers={"kid": BUILTIN})


def ooblex(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real ``ooblex`` command with the test secret."""
    full = {**os.environ, "OOBLEX_SECRET": SECRET, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", "ooblex", *args], env=full, capture_output=True, text=True,
                          timeout=60)


# --- 1. no maximum TTL ------------------------------------------------------------------------------------
def test_the_cli_refuses_a_lifetime_over_the_maximum() -> None:
    out = ooblex("token", "publish", "--thread", "invert", "--ttl", "99999999999d")
    assert out.returncode == 2 and not out.stdout
    assert "token lifetime must be > 0 and at most 1 d for publish tokens (OOBLEX_MAX_TOKEN_TTL_S)" in out.stderr
    out = ooblex("token", "control", "--ttl", "8d")
    assert out.returncode == 2 and "at most 7 d for control tokens" in out.stderr
    out = ooblex("token", "control", "--ttl", "30d", OOBLEX_MAX_TOKEN_TTL_CONTROL_S=str(31 * 86400))
    assert out.returncode == 0, out.stderr  # the maximum is a setting


async def test_a_gateway_refuses_tokens_that_live_too_long_or_never_expire() -> None:
    now = int(time.time())
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings()) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            ok = await client.post("/api/v1/frames/invert", content=IMAGE, headers={**JPEG, **auth(forged())})
            assert ok.status_code == 200
            for token, reason in [(forged(exp=now + 10 * 365 * 86400), "lives longer"),
                                  (forged(scope="control", exp=now + 8 * 86400), "lives longer"),
                                  (forged(exp=float("nan")), "finite"), (forged(exp=float("inf")), "finite"),
                                  (forged(iat=now + 9 * 365 * 86400, exp=now + 9 * 365 * 86400 + 60), "future")]:
                r = await client.post("/api/v1/frames/invert", content=IMAGE, headers={**JPEG, **auth(token)})
                assert r.status_code == 401 and reason in r.json()["detail"], (reason, r.text)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings(max_token_ttl_s=60)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            r = await client.post("/api/v1/frames/invert", content=IMAGE, headers={**JPEG, **auth(forged())})
        assert r.status_code == 401 and "lives longer (exp - iat = 10 m) than publish tokens may here (1 m)" in r.text


# --- 3, 4. exp NaN, iss and aud -------------------------------------------------------------------------------
async def test_issuer_audience_and_every_claim_are_checked() -> None:
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings(token_audience="edge-eu")) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            async def post(token: str) -> httpx.Response:
                return await client.post("/api/v1/frames/invert", content=IMAGE, headers={**JPEG, **auth(token)})

            r = await post(forged(iss="evil"))
            assert r.status_code == 401 and "not issued by 'ooblex'" in r.json()["detail"]
            r = await post(forged())  # default audience, this gateway's is edge-eu
            assert r.status_code == 401 and "another audience: these gateways take aud 'edge-eu'" in r.text
            assert (await post(forged(aud="edge-eu"))).status_code == 200
            for claim in ("exp", "iat", "iss", "aud", "sub", "scope"):
                r = await post(forged(**{"aud": "edge-eu", claim: None}))
                assert r.status_code == 401 and f"lacks the '{claim}' claim" in r.json()["detail"]
            minted = ooblex("token", "publish", "--thread", "invert", OOBLEX_TOKEN_AUDIENCE="edge-eu")
            assert minted.returncode == 0 and (await post(minted.stdout.strip())).status_code == 200


# --- 5. a missing thread or stream is not "*" -----------------------------------------------------------------
async def test_a_token_without_its_thread_or_stream_claim_covers_nothing() -> None:
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings()) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            no_thread = forged(thread=None)
            r = await client.post("/api/v1/frames/invert", content=IMAGE, headers={**JPEG, **auth(no_thread)})
            assert r.status_code == 401 and "publish token must name its thread" in r.json()["detail"]
            async with connect(gw.url.replace("http", "ws") + f"/ws/invert?token={no_thread}") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.recv()
                    await ws.recv()
                assert closed.value.rcvd.code == 4401 and "must name its thread" in closed.value.rcvd.reason
            async with connect(gw.url.replace("http", "ws") + f"/ws/invert?token={forged()}") as ws:
                stream_id = json.loads(await ws.recv())["stream_id"]
                no_stream = forged(scope="view", thread=None)
                r = await client.get(f"/api/v1/streams/{stream_id}", headers=auth(no_stream))
                assert r.status_code == 401 and "view token must name its stream" in r.json()["detail"]
                every = forged(scope="view", thread=None, stream="*")  # "*" said explicitly still works
                assert (await client.get(f"/api/v1/streams/{stream_id}", headers=auth(every))).status_code == 200


# --- 6. ooblex token view ---------------------------------------------------------------------------------------
def test_ooblex_token_view_needs_a_stream_or_all_streams() -> None:
    out = ooblex("token", "view")
    assert out.returncode == 2 and "needs --stream ID (one stream) or --all-streams" in out.stderr and not out.stdout
    out = ooblex("token", "view", "--stream", "s1", "--all-streams")
    assert out.returncode == 2
    one = ooblex("token", "view", "--stream", "s1", "--subject", "tv-3")
    claims = verify(one.stdout.strip(), SECRET)
    assert (claims.scope, claims.stream, claims.subject) == ("view", "s1", "tv-3")
    every = ooblex("token", "view", "--all-streams")
    assert verify(every.stdout.strip(), SECRET).stream == "*"
    assert verify(ooblex("token", "publish").stdout.strip(), SECRET).subject  # a random subject of its own


# --- 7. 403 and 404 say nothing about other streams -------------------------------------------------------------
async def test_answers_about_streams_are_the_same_for_unknown_and_forbidden_ids() -> None:
    publish = mint("publish", thread="invert", subject="cam-1", secret=SECRET)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings()) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            async with connect(gw.url.replace("http", "ws") + f"/ws/invert?token={publish}") as ws:
                hello = json.loads(await ws.recv())
                real = hello["stream_id"]
                # its viewers are one client, apart from the publisher
                assert verify(hello["view_token"], SECRET).subject == "cam-1/viewers"
                unknown = real[:-4] + ("zzzz" if not real.endswith("zzzz") else "yyyy")
                offer = await sdp_offer("recvonly")

                async def answers(headers: dict[str, str]) -> list[tuple[int, str]]:
                    """Status and body of every stream route, once for the real id, once for an unknown one,
                    with the id itself blanked (the caller's own input)."""
                    out = []
                    for sid in (real, unknown):
                        for method, path, kw in [
                                ("GET", f"/api/v1/streams/{sid}", {}), ("GET", f"/mjpeg/{sid}", {}),
                                ("GET", f"/api/v1/streams/{sid}/history", {}),
                                ("PATCH", f"/api/v1/streams/{sid}", {"json": {"params": {"amount": 0.5}}}),
                                ("POST", f"/whep/{sid}", {"content": offer,
                                                          "headers": {"Content-Type": "application/sdp"}}),
                                ("DELETE", f"/whep/{sid}/{sid}", {})]:
                            kw = {**kw, "headers": {**kw.get("headers", {}), **headers}}
                            r = await client.request(method, path, **kw)
                            out.append((r.status_code, r.text.replace(sid, "ID")))
                    return out

                for name, headers in [("no token", {}), ("garbage", auth("x.y.z")),
                                      ("another stream's view token", auth(mint("view", stream="s", secret=SECRET))),
                                      ("another thread's publish token",
                                       auth(mint("publish", thread="edges", secret=SECRET)))]:
                    got = await answers(headers)
                    assert got[:6] == got[6:], name  # the real stream's answers are the unknown id's
                    assert all(status in (401, 403, 404) for status, _ in got), (name, got)
                    assert not any("invert" in body for _, body in got), (name, got)  # its thread is not named
                got = await answers(auth(mint("view", stream="s", secret=SECRET)))
                # a change (PATCH) that the token does not cover is the unknown id's 404 too (issue 21, point 3)
                assert [s for s, _ in got[:6]] == [404] * 6
                got = await answers(auth(mint("publish", thread="edges", secret=SECRET)))
                assert [s for s, _ in got[:6]] == [404] * 6
                control = auth(mint("control", secret=SECRET))
                assert (await client.get(f"/api/v1/streams/{real}", headers=control)).status_code == 200
                assert (await client.get(f"/api/v1/streams/{unknown}", headers=control)).status_code == 404
                assert (await client.get(f"/api/v1/streams/{real}", headers=auth(publish))).status_code == 200
                assert (await client.get(f"/api/v1/streams/{real}", params={"token": hello["view_token"]})
                        ).status_code == 200


# --- 2. revocation: key ids, rotate and revoke, picked up without a restart ------------------------------------
async def test_rotate_and_revoke_with_a_keyring_file(tmp_path: Path) -> None:
    keys = tmp_path / "token-keys.json"
    env = {"OOBLEX_TOKEN_KEYS": str(keys)}
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings(token_keys=str(keys))) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
            async def status(token: str) -> int:
                return (await client.get("/metrics", headers=auth(token))).status_code

            first = ooblex("token", "control", **env).stdout.strip()
            assert jwt.get_unverified_header(first)["kid"] == BUILTIN and await status(first) == 200
            rotated = ooblex("token", "rotate", **env)
            assert rotated.returncode == 0, rotated.stderr
            ring = json.loads(rotated.stdout)
            assert ring["where"] == str(keys) and {k["kid"] for k in ring["keys"]} == {BUILTIN, ring["current"]}
            second = ooblex("token", "control", **env).stdout.strip()
            assert jwt.get_unverified_header(second)["kid"] == ring["current"]
            assert await status(first) == 200 and await status(second) == 200  # old keys stay valid
            refused = ooblex("token", "revoke", ring["current"], **env)
            assert refused.returncode == 2 and "ooblex token rotate" in refused.stderr
            assert ooblex("token", "revoke", BUILTIN, **env).returncode == 0
            r = await client.get("/metrics", headers=auth(first))  # at once, no restart
            assert r.status_code == 401 and "not valid here (revoked" in r.json()["detail"]
            assert await status(second) == 200
            listed = json.loads(ooblex("token", "keys", **env).stdout)
            assert [k["kid"] for k in listed["keys"]] == [ring["current"]]
            assert ooblex("token", "rotate", "--revoke-old", **env).returncode == 0
            assert await status(second) == 401
            # a publisher's shareable view token is signed with the current key too
            publish = mint("publish", thread="invert", secret=SECRET, rules=Rules(keys=FileKeys(SECRET.encode(), keys)))
            r = await client.post("/whip/invert", content=await sdp_offer("sendrecv"),
                                  headers={"Content-Type": "application/sdp", **auth(publish)})
            assert r.status_code == 201
            view = r.headers["x-ooblex-view-token"]
            assert jwt.get_unverified_header(view)["kid"] == jwt.get_unverified_header(publish)["kid"]
            await client.delete(r.headers["location"], headers=auth(publish))


@needs_redis
async def test_rotate_and_revoke_in_a_cluster_store_reach_every_gateway(redis_server, monkeypatch) -> None:  # noqa: F811, ANN001
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    store = {"OOBLEX_STORE": redis_server.url}
    fast = settings(token_keys_refresh_s=0.2)
    with running_gateway(settings=fast, broker=redis_server.url) as one, \
            running_gateway(settings=fast, broker=redis_server.url) as two:
        async with httpx.AsyncClient(timeout=20) as client:
            async def statuses(token: str) -> list[int]:
                return [(await client.get(gw.url + "/metrics", headers=auth(token))).status_code for gw in (one, two)]

            old = ooblex("token", "control", **store).stdout.strip()
            assert await statuses(old) == [200, 200]
            rotated = ooblex("token", "rotate", "--revoke-old", **store)
            assert rotated.returncode == 0 and json.loads(rotated.stdout)["where"] == "the cluster store"
            new = ooblex("token", "control", "--store", redis_server.url).stdout.strip()
            start = time.monotonic()
            while await statuses(old) != [401, 401]:
                assert time.monotonic() - start < 5, "a revoked key still works"
                await asyncio.sleep(0.05)
            assert await statuses(new) == [200, 200]
            # someone who can write Redis cannot bring back the revoked key: not by editing the ring, nor by
            # deleting it (running gateways keep the newest ring they verified)
            raw = redis.Redis.from_url(redis_server.url)
            doc = json.loads(raw.get(STORE_KEY))
            raw.set(STORE_KEY, json.dumps({**doc, "keys": {**doc["keys"], BUILTIN: 0.0}}))
            await asyncio.sleep(0.6)
            assert await statuses(old) == [401, 401] and await statuses(new) == [200, 200]
            raw.delete(STORE_KEY)
            await asyncio.sleep(0.6)
            assert await statuses(old) == [401, 401] and await statuses(new) == [200, 200]
