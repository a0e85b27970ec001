"""A client behind a NAT reaches the gateway only through a real TURN relay (coturn), on credentials
the gateway minted for it.

    client 10.10.1.2 ── nat (nftables masquerade) 198.51.100.2
        ── 198.51.100.1 turn (coturn) 10.20.0.1 ── gateway 10.20.0.2

The ``turn`` host routes the signalling (TCP to the gateway's port) and nothing else: no UDP
crosses it except what coturn relays, and coturn relays to the gateway only (every other peer
address is denied), so media has no path but the relay.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ooblex.tokens import mint

from .netlab import Lab, problem

ROOT = Path(__file__).resolve().parent.parent
PORT = 8800
TURN = "198.51.100.1"

CLIENT = """
import asyncio, json, os, time
import httpx, numpy as np
from ooblex.webrtc.client import ImageTrack, WhipClient, WebRTCError

URL = "http://10.20.0.2:{port}/whip/identity"

def pair_types(client):
    conn = client.pc.getTransceivers()[0].receiver.transport.transport._connection
    return [[p.local_candidate.type, p.remote_candidate.type] for p in conn._nominated.values()]

async def main():
    out = {{}}
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(100):  # the gateway is starting in its namespace
            try:
                await http.get(URL.rsplit("/whip", 1)[0] + "/healthz"); break
            except httpx.HTTPError:
                await asyncio.sleep(0.2)
        r = await http.options(URL)
        out["options_without_token"] = [r.status_code, r.headers.get("link")]
        r = await http.options(URL, headers={{"Authorization": "Bearer " + os.environ["OOBLEX_TOKEN"]}})
        out["options_with_token"] = [r.status_code, r.headers.get("link")]
    base = np.random.default_rng(0).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    frames = iter(range(10**6))
    track = ImageTrack(lambda: np.roll(base, next(frames) * 4, axis=1), fps=30)
    client = WhipClient(URL, track)  # asks OPTIONS for the servers, gathers a relay candidate
    await client.start()
    await client.wait_connected(20)
    got = 0
    t0 = time.monotonic()
    while got < 60 and time.monotonic() - t0 < 30:
        await asyncio.wait_for(client.remote.recv(), 10)
        got += 1
    out.update(frames_back=got, pairs=pair_types(client), servers=client.ice_servers)
    await client.close()
    direct = WhipClient(URL, ImageTrack(lambda: base), ice_servers=[])  # no relay: must not connect
    await direct.start()
    try:
        await direct.wait_connected(10)
        out["direct"] = "connected"
    except WebRTCError as exc:
        out["direct"] = str(exc)
    await direct.close()
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def coturn_argv(secret: str, log: Path) -> list[str]:
    """coturn as a deployment should run it: REST API credentials, and no open relay."""
    return ["turnserver", "-n", "--listening-ip", TURN, "--listening-port", "3478", "--relay-ip", "10.20.0.1",
            "--min-port", "49160", "--max-port", "49200", "--realm", "ooblex.test", "--fingerprint",
            "--use-auth-secret", "--static-auth-secret", secret,
            "--denied-peer-ip", "0.0.0.0-255.255.255.255", "--allowed-peer-ip", "10.20.0.2",
            "--no-tls", "--no-dtls", "--no-cli", "--no-tcp-relay", "--pidfile", str(log.with_suffix(".pid")),
            "--userdb", str(log.with_suffix(".db")), "--log-file", str(log), "--simple-log", "--verbose"]


@pytest.mark.timeout(180)
def test_client_behind_nat_reaches_gateway_only_through_turn(tmp_path: Path) -> None:
    why = problem() or (None if shutil.which("turnserver") else "coturn not installed (.ci/system-deps)") or (
        None if shutil.which("nft") else "nftables not installed (.ci/system-deps)")
    if why:
        pytest.skip(why)
    secret, turn_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(16)
    with Lab("turn") as lab:
        client, nat, turn, gw = lab.host("client"), lab.host("nat", True), lab.host("turn", True), lab.host("gw")
        lab.link(client, "10.10.1.2/24", nat, "10.10.1.1/24")
        _, nat_out = lab.link(turn, f"{TURN}/24", nat, "198.51.100.2/24")
        lab.link(turn, "10.20.0.1/24", gw, "10.20.0.2/24")
        lab.sh(client, "ip route add default via 10.10.1.1")
        lab.sh(nat, f"ip route add default via {TURN}")
        lab.sh(gw, "ip route add default via 10.20.0.1")
        lab.sh(nat, "nft add table ip nat && nft 'add chain ip nat post { type nat hook postrouting priority 100; }'"
                    f" && nft add rule ip nat post oifname {nat_out} masquerade")
        lab.sh(turn, "nft add table inet fw && nft 'add chain inet fw gate { type filter hook forward priority 0;"
                     " policy drop; }' && nft add rule inet fw gate ct state established,related accept"
                     f" && nft add rule inet fw gate ip daddr 10.20.0.2 tcp dport {PORT} accept")
        log = tmp_path / "coturn.log"
        lab.spawn(turn, coturn_argv(turn_secret, log), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        env = {**_env(), "OOBLEX_SECRET": secret, "OOBLEX_TURN_URLS": f"turn:{TURN}:3478?transport=udp",
               "OOBLEX_TURN_SECRET": turn_secret}
        gateway = lab.spawn(gw, [sys.executable, "-m", "ooblex", "gateway", "--host", "10.20.0.2", "--port", str(PORT),
                                 "--broker", "memory://"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        token = mint("publish", thread="identity", secret=secret)
        run = lab.spawn(client, [sys.executable, "-c", CLIENT.format(port=PORT)], env={**_env(), "OOBLEX_TOKEN": token},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = run.communicate(timeout=150)
        gateway.terminate()
        turn_log = log.read_text() if log.exists() else ""
    assert run.returncode == 0, f"client failed:\n{err[-4000:]}\ngateway:\n{gateway.stderr.read().decode()[-2000:]}"
    result = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    status, link = result["options_without_token"]
    assert status == 401 and link is None, "TURN credentials went to a caller without a token"
    status, link = result["options_with_token"]
    assert status == 204 and f"<turn:{TURN}:3478?transport=udp>" in link and 'rel="ice-server"' in link
    username = re.search(r'username="([^"]+)"', link).group(1)
    assert re.fullmatch(r"\d{10}:[\w-]+", username), f"not a TURN REST API username: {username}"
    assert result["frames_back"] == 60, result
    assert result["pairs"] == [["relay", "host"]], f"media did not go through the relay: {result['pairs']}"
    assert result["direct"] != "connected", "the client reached the gateway without the relay"
    assert re.search(r"user <\d{10}:[\w-]+>: incoming packet ALLOCATE processed, success", turn_log), \
        f"coturn made no allocation for a REST API user:\n{turn_log[-3000:]}"


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_deploy_manifests_run_coturn_that_relays_to_the_gateway_only() -> None:
    """compose and k8s: coturn takes REST API credentials only, denies every peer but the gateway, and the
    gateway hands out its URLs with the same secret."""
    import yaml

    def flags(args: list[str]) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for arg in args:
            key, _, value = arg.partition("=")
            out.setdefault(key, []).append(value)
        return out

    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    coturn, gateway = compose["services"]["coturn"], compose["services"]["gateway"]
    docs = [d for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}
    k8s_coturn = named["Deployment", "coturn"]["spec"]["template"]["spec"]["containers"][0]
    k8s_gateway = named["Deployment", "ooblex-gateway"]["spec"]["template"]["spec"]["containers"][0]
    gateway_ip = gateway["networks"]["default"]["ipv4_address"]
    for args, allowed in ((coturn["command"], gateway_ip), (k8s_coturn["args"], "$(GATEWAY_PEERS)")):
        f = flags(args)
        assert "--use-auth-secret" in f and "--static-auth-secret" in f
        assert f["--denied-peer-ip"] == ["0.0.0.0-255.255.255.255", "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
        assert f["--allowed-peer-ip"] == [allowed]
        assert "--no-multicast-peers" in f and "--no-cli" in f
    assert "${OOBLEX_TURN_SECRET" in flags(coturn["command"])["--static-auth-secret"][0]
    assert gateway["environment"]["OOBLEX_TURN_SECRET"].startswith("${OOBLEX_TURN_SECRET")
    assert gateway["environment"]["OOBLEX_TURN_URLS"].startswith("turn:")
    env = {e["name"]: e for e in k8s_gateway["env"]}
    assert env["OOBLEX_TURN_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "ooblex-turn", "key": "TURN_SECRET"}
    assert {"name": "ooblex-turn", "key": "TURN_SECRET"} in [
        e["valueFrom"]["secretKeyRef"] for e in k8s_coturn["env"] if "valueFrom" in e]
    policy = named["NetworkPolicy", "coturn-relays-to-gateways-only"]["spec"]
    assert policy["egress"][0]["to"] == [{"podSelector": {"matchLabels": {"app": "ooblex-gateway"}}}]
