"""Issue 21, points 2 and 3, against a real gateway: a few addresses (or one IPv6 /64, or one token
holder) cannot lock other clients out, and nobody ends or changes a session that is not theirs.

Other clients are other loopback addresses (127.0.0.2-5: the client socket binds its source address)
or, for IPv6, addresses of one /64 added to ``lo`` inside a network namespace. WebRTC runs inside a
namespace too (``in_netns``), so ICE only ever uses loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time

import aioice
import httpx
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ooblex import jpeg
from ooblex.gateway import Settings
from ooblex.gateway.clients import network_of
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS
from ooblex.tokens import mint
from ooblex.webrtc import loopback_candidates
from ooblex.webrtc.client import ImageTrack

from .gateway_server import running_gateway
from .media import sdp_offer
from .netns import in_netns

pytestmark = pytest.mark.timeout(120)
SECRET = "round-two-limits-secret-0123456789"
IMAGE = jpeg.encode(np.full((48, 64, 3), 90, np.uint8))
SDP = {"Content-Type": "application/sdp"}
ATTACKERS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
OFFERERS = ["127.0.0.6", "127.0.0.7", "127.0.0.8", "127.0.0.9"]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def with_subject(scope: str, subject: str, **claims: str) -> str:
    """A token minted for ``subject`` (a JWT ``sub``), as a web service minting per-user tokens would."""
    target = {"thread": "*"} if scope == "publish" else {"stream": claims.get("stream", "*")}
    return mint(scope, subject=subject, ttl_s=600, secret=SECRET, **target)


def http_from(address: str) -> httpx.AsyncClient:
    """An HTTP client whose connections come from ``address``."""
    return httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=address), timeout=30)


async def socket_from(url: str, address: str) -> ClientConnection:
    return await connect(url, local_addr=(address, 0), open_timeout=20)


async def eventually(condition, timeout: float = 15.0) -> bool:
    """Poll ``condition`` until true or ``timeout``; the bound only catches a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


# --- who a client is ---------------------------------------------------------------------------------------------
def test_a_client_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert network_of("192.0.2.7") == "192.0.2.7"
    assert network_of("::ffff:192.0.2.7") == "192.0.2.7"  # IPv4-mapped counts as the IPv4 address
    same = {network_of(f"2001:db8:1:2::{i:x}") for i in range(1, 500)} | {network_of("2001:db8:1:2:ffff:1:2:3")}
    assert same == {"2001:db8:1:2::/64"}
    assert network_of("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert network_of("fe80::1%eth0") == "fe80::/64"
    assert network_of("2001:db8:1:2ff::1", 56) == network_of("2001:db8:1:200::1", 56) == "2001:db8:1:200::/56"
    assert network_of("testclient") == "testclient"
    with pytest.raises(ValueError, match="client_ipv6_prefix"):
        Settings(client_ipv6_prefix=129)


# --- point 2: fair limits ----------------------------------------------------------------------------------------
async def _watch(url: str, token: str, address: str) -> RTCPeerConnection:
    """A real WHEP viewer whose signalling comes from ``address``; returns once connected."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    with loopback_candidates():
        await pc.setLocalDescription(await pc.createOffer())
    async with http_from(address) as http:
        r = await http.post(url, content=pc.localDescription.sdp, headers={**SDP, **auth(token)})
    if r.status_code != 201:
        await pc.close()
        raise PermissionError(f"{r.status_code} {r.text}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
    assert await eventually(lambda: pc.connectionState == "connected", 30), pc.connectionState
    return pc


async def _offer_forever(url: str, token: str, address: str, offer: str, answered: list[int]) -> None:
    """An attacker that keeps 4 offers that never connect open from ``address``: re-offers all the time."""
    async with http_from(address) as http:
        while True:
            r = await http.post(url, content=offer, headers={**SDP, **auth(token)})
            answered.append(r.status_code)
            await asyncio.sleep(0.2)


async def _send_frames(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        while True:
            await ws.send(IMAGE)
            await asyncio.sleep(1.0)


async def _idle_socket_forever(url: str, address: str, opened: list[int]) -> None:
    """An attacker's WebSocket that never sends a frame, only ``{"params": {}}``; reconnects when closed."""
    while True:
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            async with await socket_from(url, address) as ws:
                if "stream_id" in json.loads(await ws.recv()):
                    opened.append(1)
                while True:
                    await ws.send(json.dumps({"params": {}}))
                    await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)


@in_netns
async def test_four_addresses_and_a_token_holder_cannot_lock_a_newcomer_out() -> None:
    """All the attacks of issue 21 point 2 at once, at the default limits; a new publisher gets a session in 1 s."""
    defaults = Settings()
    limits = Settings(loopback_candidates=True, secret=SECRET)
    # every token has its own subject (``sub``), and per-client limits count subjects: one holder spread over
    # 4 addresses is one client. So the attack is colluding holders, one token per attacking address.
    publish = mint("publish", subject="publisher", secret=SECRET)
    holders = {a: mint("publish", subject=f"holder-{i}", secret=SECRET) for i, a in enumerate(ATTACKERS + OFFERERS)}
    tasks: list[asyncio.Task] = []
    viewers: list[RTCPeerConnection] = []
    with running_gateway(settings=limits) as gw:
        ws_url = gw.url.replace("http", "ws") + f"/ws/identity?token={publish}"
        async with connect(ws_url) as source:  # the stream the token holder watches
            hello = json.loads(await source.recv())
            tasks.append(asyncio.create_task(_send_frames(source)))
            whep = f"{gw.url}/whep/{hello['stream_id']}"
            try:
                # viewers from 4 addresses, each with its own view token: they stop at max_viewer_sessions
                stream_id = hello["stream_id"]
                views = {a: mint("view", stream=stream_id, subject=f"viewer-{i}", secret=SECRET)
                         for i, a in enumerate(ATTACKERS)}
                for address in ATTACKERS:
                    for _ in range(defaults.max_viewer_sessions // len(ATTACKERS)):
                        viewers.append(await _watch(whep, views[address], address))
                with pytest.raises(PermissionError, match="OOBLEX_MAX_VIEWER_SESSIONS"):
                    viewers.append(await _watch(whep, views[ATTACKERS[0]], ATTACKERS[0]))
                # 4 x 16 WebSockets that send only {"params": {}}, and 4 x 4 offers that never connect
                opened: list[int] = []
                answered: list[int] = []
                offer = await sdp_offer("sendrecv")
                for address in ATTACKERS:
                    mine = gw.url.replace("http", "ws") + f"/ws/identity?token={holders[address]}"
                    tasks += [asyncio.create_task(_idle_socket_forever(mine, address, opened))
                              for _ in range(defaults.max_streams_per_client)]
                for address in OFFERERS:
                    tasks += [asyncio.create_task(_offer_forever(f"{gw.url}/whip/identity", holders[address], address,
                                                                 offer, answered)) for _ in range(4)]
                state = gw.state
                assert await eventually(lambda: len(state.engine.streams) == defaults.max_streams, 30), \
                    f"the idle sockets hold {len(state.engine.streams)} streams"
                await asyncio.sleep(defaults.stream_evict_idle_s + 0.5)  # the sockets have been idle a while
                assert await eventually(lambda: len(state.sessions.items) == defaults.max_sessions, 30)
                assert await eventually(lambda: len(state.engine.streams) == defaults.max_streams, 30)
                assert 429 in answered and len(opened) >= defaults.max_streams - 5

                # a newcomer: a real WHIP publisher from 127.0.0.1
                pc = RTCPeerConnection()
                pc.addTransceiver(ImageTrack(lambda: np.zeros((120, 160, 3), np.uint8)), direction="sendrecv")
                with loopback_candidates():
                    await pc.setLocalDescription(await pc.createOffer())
                async with httpx.AsyncClient(timeout=30) as http:
                    started = time.monotonic()
                    r = await http.post(f"{gw.url}/whip/identity", content=pc.localDescription.sdp,
                                        headers={**SDP, **auth(publish)})
                    waited = time.monotonic() - started
                assert r.status_code == 201, r.text
                print(f"newcomer's WHIP session answered in {waited * 1000:.0f} ms with the attacks running")
                assert waited < 1.0, f"the newcomer waited {waited:.2f} s for a session"
                await pc.setRemoteDescription(RTCSessionDescription(sdp=r.text, type="answer"))
                assert await eventually(lambda: pc.connectionState == "connected", 30), pc.connectionState
                assert state.sessions.evicted >= 1  # an unconnected attacker offer made room
                async with httpx.AsyncClient(timeout=30) as http:
                    metrics = (await http.get(f"{gw.url}/metrics", headers=auth(mint("control", secret=SECRET)))).text
                evicted = [line for line in metrics.splitlines() if line.startswith("ooblex_sessions_evicted_total{")]
                assert evicted and float(evicted[0].split()[1]) >= 1, evicted
                await pc.close()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await asyncio.gather(*(v.close() for v in viewers))


async def _ice_only_offer(conn: aioice.Connection) -> str:
    """A real offer whose ICE side is ``conn``: the peer answers ICE checks and sends consent checks, but never
    starts DTLS, so it never connects."""
    with loopback_candidates():
        await conn.gather_candidates()
    lines = [line for line in (await sdp_offer("sendrecv")).splitlines()
             if not line.startswith(("a=candidate:", "a=end-of-candidates", "a=ice-ufrag:", "a=ice-pwd:"))]
    at = next(i for i, line in enumerate(lines) if line.startswith("a=mid:")) + 1
    ice = [f"a=ice-ufrag:{conn.local_username}", f"a=ice-pwd:{conn.local_password}",
           *(f"a=candidate:{c.to_sdp()}" for c in conn.local_candidates), "a=end-of-candidates"]
    return "\r\n".join(lines[:at] + ice + lines[at:]) + "\r\n"


@in_netns
async def test_a_peer_that_does_ice_but_never_dtls_is_closed_at_connect_timeout() -> None:
    limits = Settings(secret="", loopback_candidates=True, connect_timeout_s=2.0, session_idle_s=20.0)
    conn = aioice.Connection(ice_controlling=True)
    with running_gateway(settings=limits) as gw:
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(gw.url + "/whip/identity", content=await _ice_only_offer(conn), headers=SDP)
        assert r.status_code == 201, r.text
        started = time.monotonic()
        answer = r.text.splitlines()
        conn.remote_username = next(x.split(":", 1)[1] for x in answer if x.startswith("a=ice-ufrag:"))
        conn.remote_password = next(x.split(":", 1)[1] for x in answer if x.startswith("a=ice-pwd:"))
        for line in answer:
            if line.startswith("a=candidate:"):
                await conn.add_remote_candidate(aioice.Candidate.from_sdp(line[len("a=candidate:"):]))
        await conn.add_remote_candidate(None)
        await asyncio.wait_for(conn.connect(), 20)  # ICE succeeds: the gateway hears authenticated checks
        assert await eventually(lambda: not gw.state.sessions.items, 10), "an ICE-only peer kept its session"
        lived = time.monotonic() - started
        assert lived < 6, f"closed after {lived:.1f} s, expected about connect_timeout_s (2 s)"
        await conn.close()


async def test_sockets_that_send_only_control_messages_are_reaped() -> None:
    limits = Settings(loopback_candidates=True, secret="", ws_idle_s=1.5)
    with running_gateway(settings=limits) as gw:
        url = gw.url.replace("http", "ws") + "/ws/identity"
        async with connect(url) as chatty, connect(url) as working:
            for ws in (chatty, working):
                json.loads(await ws.recv())
            started = time.monotonic()

            async def keep_sending(ws: ClientConnection, message: str | bytes) -> None:
                with contextlib.suppress(ConnectionClosed):
                    while True:
                        await ws.send(message)
                        await asyncio.sleep(0.2)

            talk = asyncio.create_task(keep_sending(chatty, json.dumps({"params": {}})))
            work = asyncio.create_task(keep_sending(working, IMAGE))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(chatty.recv(), 10)
            lived = time.monotonic() - started
            assert closed.value.rcvd.code == 4408 and "no frames" in closed.value.rcvd.reason
            assert 1.2 < lived < 5, f"closed after {lived:.1f} s, expected about ws_idle_s (1.5 s)"
            assert not working.close_code, "a socket that sends frames was closed"
            for task in (talk, work):
                task.cancel()
            await asyncio.gather(talk, work, return_exceptions=True)


async def test_idle_sockets_give_way_to_a_client_with_fewer_streams() -> None:
    limits = Settings(secret="", max_streams=6, max_streams_per_client=3, stream_evict_idle_s=3.0)
    frame = {"content": IMAGE, "headers": {"Content-Type": "image/jpeg"}}
    with running_gateway(settings=limits) as gw:
        url = gw.url.replace("http", "ws") + "/ws/identity"
        idle = [await socket_from(url, address) for address in ("127.0.0.2", "127.0.0.3") for _ in range(3)]
        for ws in idle:
            json.loads(await ws.recv())
        async with http_from("127.0.0.6") as newcomer:
            r = await newcomer.post(gw.url + "/api/v1/frames/identity", **frame)
            assert r.status_code == 429 and "OOBLEX_MAX_STREAMS" in r.json()["detail"]  # none idle long enough yet
            await asyncio.sleep(3.2)
            for ws in idle:  # control messages do not make a socket active, frames do
                await ws.send(json.dumps({"params": {}}))
            await idle[0].send(IMAGE)
            await asyncio.sleep(0.2)
            r = await newcomer.post(gw.url + "/api/v1/frames/identity", **frame)
            assert r.status_code == 200, r.text
        codes = []
        for ws in idle:
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 0.5)
            codes.append(ws.close_code)
        assert codes.count(4408) == 1 and codes[0] is None, codes  # one idle socket, never the one that sent
        for ws in idle:
            await ws.close()


async def test_with_a_secret_limits_also_count_the_token_subject() -> None:
    limits = Settings(secret=SECRET, max_streams_per_client=2, max_sessions_per_client=2)
    alice, bob = with_subject("publish", "alice"), with_subject("publish", "bob")
    with running_gateway(settings=limits) as gw:
        url = gw.url.replace("http", "ws") + "/ws/identity?token="
        held = [await socket_from(url + alice, a) for a in ("127.0.0.2", "127.0.0.3")]
        for ws in held:
            assert "stream_id" in json.loads(await ws.recv())
        async with await socket_from(url + alice, "127.0.0.4") as third:  # a new address, the same subject
            refused = json.loads(await third.recv())
            assert refused["status"] == 429 and "subject alice" in refused["error"]
        async with await socket_from(url + bob, "127.0.0.4") as other:
            assert "stream_id" in json.loads(await other.recv())
        for ws in held:
            await ws.close()
        assert await eventually(lambda: len(gw.state.engine.streams) == 0)
        offer = await sdp_offer("sendrecv")
        for address in ("127.0.0.5", "127.0.0.6"):
            async with http_from(address) as http:
                r = await http.post(gw.url + "/whip/identity", content=offer, headers={**SDP, **auth(alice)})
                assert r.status_code == 201, r.text
        async with http_from("127.0.0.7") as http:
            r = await http.post(gw.url + "/whip/identity", content=offer, headers={**SDP, **auth(alice)})
            assert r.status_code == 429 and "(subject alice) has 2 WebRTC sessions" in r.json()["detail"]
            r = await http.post(gw.url + "/whip/identity", content=offer, headers={**SDP, **auth(bob)})
            assert r.status_code == 201, r.text


IPV6_NET = "2001:db8:1:2::"
IPV6_OTHER = "2001:db8:9::1"


def _add_to_lo(addresses: list[str]) -> None:
    for address in addresses:
        subprocess.run(["ip", "-6", "addr", "add", f"{address}/64", "dev", "lo", "nodad"], check=True)


@in_netns
async def test_many_addresses_of_one_ipv6_64_are_one_client() -> None:
    _add_to_lo([f"{IPV6_NET}{i}" for i in range(1, 7)] + [IPV6_OTHER])
    limits = Settings(secret=SECRET, host="::", allowed_hosts=["*"], max_streams_per_client=2,
                      max_pending_per_client=2, loopback_candidates=True)
    def token() -> str:  # a token (and subject) per connection: only the network is shared
        return mint("publish", secret=SECRET)

    with running_gateway(settings=limits, host="::") as gw:
        def url() -> str:
            return gw.url.replace("http", "ws") + f"/ws/identity?token={token()}"

        held = [await socket_from(url(), f"{IPV6_NET}{i}") for i in (1, 2)]
        for ws in held:
            assert "stream_id" in json.loads(await ws.recv())
        async with await socket_from(url(), f"{IPV6_NET}3") as third:
            refused = json.loads(await third.recv())
            assert refused["status"] == 429 and f"{IPV6_NET}/64" in refused["error"]
        async with await socket_from(url(), IPV6_OTHER) as other:  # another /64 is another client
            assert "stream_id" in json.loads(await other.recv())
        for ws in held:
            await ws.close()
        assert await eventually(lambda: not gw.state.engine.streams)
        offer = await sdp_offer("sendrecv")
        codes = []
        for i in (4, 5, 6):
            async with http_from(f"{IPV6_NET}{i}") as http:
                r = await http.post(gw.url + "/whip/identity", content=offer, headers={**SDP, **auth(token())})
                codes.append(r.status_code)
        assert codes == [201, 201, 429], codes
        clients = {s.client.address for s in gw.state.sessions.items.values()}
        assert clients == {f"{IPV6_NET}/64"}
        async with httpx.AsyncClient(timeout=30) as http:  # ::1 itself
            r = await http.post(gw.url + "/whip/identity", content=offer, headers={**SDP, **auth(token())})
            assert r.status_code == 201
        assert any(s.client.address == "::/64" for s in gw.state.sessions.items.values())


# --- point 3: object-level authorisation -------------------------------------------------------------------------
async def _whip(http: httpx.AsyncClient, url: str, thread: str, token: str, offer: str) -> str:
    r = await http.post(f"{url}/whip/{thread}", content=offer, headers={**SDP, **auth(token)})
    assert r.status_code == 201, r.text
    return r.headers["Location"]


async def test_whip_delete_and_patch_are_bound_to_the_thread_and_the_creator() -> None:
    limits = Settings(secret=SECRET, loopback_candidates=True)
    invert, edges = mint("publish", thread="invert", secret=SECRET), mint("publish", thread="edges", secret=SECRET)
    other_invert = mint("publish", thread="invert", ttl_s=1800, secret=SECRET)
    control = mint("control", secret=SECRET)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=limits) as gw:
        offer = await sdp_offer("sendrecv")
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            location = await _whip(http, gw.url, "invert", invert, offer)
            session = location.rsplit("/", 1)[1]
            unknown = await http.delete(f"/whip/edges/{gw.state.instance}.nosuchsession", headers=auth(edges))
            assert unknown.status_code == 404
            unknown_body = unknown.json()["detail"].replace(f"{gw.state.instance}.nosuchsession", session)
            attempts = [("delete", f"/whip/edges/{session}", edges),  # the attack: another thread's URL
                        ("delete", location, edges),  # the right URL, a token for another thread
                        ("delete", location, other_invert),  # a token for the thread, not the creator's
                        ("delete", f"/whip/edges/{session}", control),  # even control: the URL must match
                        ("patch", f"/whip/edges/{session}", edges),
                        ("patch", location, other_invert)]
            for method, path, token in attempts:
                r = await http.request(method.upper(), path, headers=auth(token))
                assert (r.status_code, r.json()["detail"]) == (404, unknown_body), (method, path, r.text)
            assert session in gw.state.sessions.items, "a refused DELETE ended the session"
            assert (await http.delete(location)).status_code == 401
            assert (await http.patch(location, headers=auth(invert))).status_code == 405  # its own: trickle ICE
            assert (await http.delete(location, headers=auth(invert))).status_code == 200
            assert session not in gw.state.sessions.items
            second = await _whip(http, gw.url, "invert", invert, offer)
            assert (await http.delete(second, headers=auth(control))).status_code == 200  # the operator may
            stream = await _open_stream(gw.url, invert, "invert")
            r = await http.patch(f"/api/v1/streams/{stream}", json={"params": {}}, headers=auth(edges))
            missing = await http.patch("/api/v1/streams/nosuchstream", json={"params": {}}, headers=auth(edges))
            assert r.status_code == missing.status_code == 404
            assert r.json()["detail"].replace(stream, "nosuchstream") == missing.json()["detail"]


async def _open_stream(url: str, token: str, thread: str) -> str:
    """An HTTP frame's stream is gone after its answer; a WHIP session's stays: open one and return its stream."""
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(f"{url}/whip/{thread}", content=await sdp_offer("sendrecv"),
                            headers={**SDP, **auth(token)})
        assert r.status_code == 201, r.text
        return r.headers["X-Ooblex-Stream"]


async def test_whep_delete_and_patch_are_bound_to_the_stream_and_the_viewer() -> None:
    limits = Settings(secret=SECRET, loopback_candidates=True)
    publish = mint("publish", thread="identity", secret=SECRET)
    with running_gateway(settings=limits) as gw:
        first = await _open_stream(gw.url, publish, "identity")
        second = await _open_stream(gw.url, publish, "identity")
        mine = mint("view", stream=first, secret=SECRET)
        theirs = mint("view", stream=first, ttl_s=1800, secret=SECRET)  # another viewer of the same stream
        alice, mallory = with_subject("view", "alice", stream=first), with_subject("view", "mallory", stream=first)
        offer = await sdp_offer("recvonly")
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            async def watch(stream: str, token: str) -> str:
                r = await http.post(f"/whep/{stream}", content=offer, headers={**SDP, **auth(token)})
                assert r.status_code == 201, r.text
                return r.headers["Location"]

            victim = await watch(first, theirs)
            victim_id = victim.rsplit("/", 1)[1]
            unknown = await http.delete(f"/whep/{first}/{gw.state.instance}.nosuch", headers=auth(mine))
            assert unknown.status_code == 404
            expected = unknown.json()["detail"].replace(f"{gw.state.instance}.nosuch", victim_id)
            for method, path, token in [("DELETE", victim, mine),  # the attack: my view token, their session
                                        ("PATCH", victim, mine),
                                        ("DELETE", f"/whep/{second}/{victim_id}", publish)]:  # another stream's URL
                r = await http.request(method, path, headers=auth(token))
                assert (r.status_code, r.json()["detail"]) == (404, expected), (method, path, r.text)
            assert victim_id in gw.state.sessions.items
            assert (await http.patch(victim, headers=auth(theirs))).status_code == 405
            assert (await http.delete(victim, headers=auth(theirs))).status_code == 200
            hers = await watch(first, alice)
            assert (await http.delete(hers, headers=auth(mallory))).status_code == 404  # subjects differ
            assert (await http.delete(hers, headers=auth(alice))).status_code == 200


async def test_without_a_secret_a_delete_is_still_bound_to_its_url() -> None:
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=Settings(secret="", loopback_candidates=True)) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as http:
            r = await http.post("/whip/invert", content=await sdp_offer("sendrecv"), headers=SDP)
            session = r.headers["Location"].rsplit("/", 1)[1]
            assert (await http.delete(f"/whip/edges/{session}")).status_code == 404
            assert (await http.delete(r.headers["Location"])).status_code == 200
