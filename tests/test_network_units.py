"""Pure logic of the network pieces: TURN REST credentials, ICE server Link headers, DTLS suites, settings."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import time

import httpx
import pytest

from ooblex.gateway import Settings, create_app
from ooblex.tokens import mint
from ooblex.webrtc.ice import ice_server_links, ice_servers_from_links
from ooblex.webrtc.turn import turn_credentials

from .netns import in_netns

SECRET = "s" * 32


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to check the HMAC independently")
def test_turn_rest_credentials_match_an_independent_hmac() -> None:
    username, password = turn_credentials("north-secret", "alice", ttl_s=600, now=1_700_000_000)
    assert username == "1700000600:alice"
    digest = subprocess.run(["openssl", "dgst", "-sha1", "-hmac", "north-secret", "-binary"], input=username.encode(),
                            capture_output=True, check=True).stdout
    assert password == base64.b64encode(digest).decode()
    with pytest.raises(ValueError, match="shared secret"):
        turn_credentials("", "alice", 600)
    with pytest.raises(ValueError, match="must not contain ':'"):
        turn_credentials("x", "a:b", 600)


def test_ice_server_links_round_trip() -> None:
    servers = [{"urls": ["turn:t.example.com:3478?transport=udp", "turns:t.example.com:5349"],
                "username": "1700000600:ab", "credential": "x/y+z="}, {"urls": "stun:s.example.com:3478"}]
    links = ice_server_links(servers)
    assert links[0] == ('<turn:t.example.com:3478?transport=udp>; rel="ice-server"; username="1700000600:ab"; '
                        'credential="x/y+z="; credential-type="password"')
    header = ", ".join(links) + ', <https://example.com/next>; rel="next"'
    assert ice_servers_from_links([header]) == [
        {"urls": "turn:t.example.com:3478?transport=udp", "username": "1700000600:ab", "credential": "x/y+z="},
        {"urls": "turns:t.example.com:5349", "username": "1700000600:ab", "credential": "x/y+z="},
        {"urls": "stun:s.example.com:3478"}]


def test_turn_settings_need_the_secret() -> None:
    with pytest.raises(ValueError, match="turn_secret"):
        Settings(turn_urls=["turn:t.example.com:3478"])
    settings = Settings(turn_urls=["turn:t.example.com:3478"], turn_secret="hunter2-turn")
    assert "hunter2-turn" not in repr(settings)


def test_dtls_offers_ecdhe_rsa_as_well_as_ecdsa() -> None:
    from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
    from OpenSSL import SSL

    from ooblex.webrtc import accept_rsa_peers

    accept_rsa_peers()
    ciphers = SSL.Connection(RTCCertificate.generateCertificate()._create_ssl_context(SRTP_PROFILES)).get_cipher_list()
    assert "ECDHE-RSA-AES128-GCM-SHA256" in ciphers and "ECDHE-ECDSA-AES128-GCM-SHA256" in ciphers
    assert not [c for c in ciphers if not c.startswith("ECDHE-") and not c.startswith("TLS_")], ciphers


async def test_turn_credentials_only_after_the_token_check() -> None:
    settings = Settings(secret=SECRET, turn_urls=["turn:203.0.113.5:3478?transport=udp"], turn_secret="t",
                        turn_ttl_s=300)
    app = create_app(settings=settings)
    anything = {"Authorization": "Bearer " + mint("publish", secret=SECRET)}
    publish = {"Authorization": "Bearer " + mint("publish", thread="identity", secret=SECRET)}
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as http:
        for path, headers, status in [("/whip/identity", {}, 401), ("/whep/anything", {}, 401),
                                      ("/whip/identity", {"Authorization": "Bearer " + mint(
                                          "view", stream="x", secret=SECRET)}, 403),
                                      ("/whip/nope", anything, 404), ("/whep/nostream", anything, 404)]:
            r = await http.options(path, headers=headers)
            assert r.status_code == status and "link" not in r.headers, (path, r.status_code, r.text)
        r = await http.options("/whip/identity", headers=publish)
        assert r.status_code == 204 and "Link" in r.headers["access-control-expose-headers"]
        [server] = ice_servers_from_links([r.headers["link"]])
    expiry = int(server["username"].split(":")[0])
    assert server["urls"] == "turn:203.0.113.5:3478?transport=udp"
    assert abs(expiry - (time.time() + 300)) < 5


@in_netns
async def test_whip_answer_links_carry_credentials_for_the_session() -> None:
    from .gateway_server import running_gateway
    from .media import sdp_offer

    settings = Settings(loopback_candidates=True, turn_urls=["turn:203.0.113.5:3478"], turn_secret="t",
                        ice_servers=[{"urls": "stun:203.0.113.5:3478"}])
    with running_gateway(settings=settings) as gw:
        async with httpx.AsyncClient(timeout=20) as http:
            r = await http.post(gw.url + "/whip/identity", content=await sdp_offer("sendonly"),
                                headers={"Content-Type": "application/sdp"})
            assert r.status_code == 201, r.text
            session = r.headers["location"].rsplit("/", 1)[1]
            servers = ice_servers_from_links(r.headers.get_list("link"))
            await http.delete(gw.url + r.headers["location"])
    assert servers[0] == {"urls": "stun:203.0.113.5:3478"}
    assert re.fullmatch(rf"\d{{10}}:{re.escape(session)}", servers[1]["username"]), servers
