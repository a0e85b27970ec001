"""Several gateways on one Redis behind HAProxy (``ooblex up --gateways 2``), with real aiortc peers inside a
network namespace: WHIP streams land on both; a WHEP or MJPEG viewer of a stream connects through the
other gateway or the balancer (forwarded to the holder, token checked there); one listing shows the
cluster's streams; a session's ``Location`` reaches its gateway; a gateway stopped mid-stream ends its
sessions (its peers see the connection close), drops out of the listing at once, and new sessions go to
the one left while its own streams flow on; one killed outright (SIGKILL) is routed around the same way."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from .cluster_fixtures import ROOT, env, needs_redis, wait_for
from .netns import in_netns

pytestmark = [pytest.mark.timeout(240), needs_redis,
              pytest.mark.skipif(shutil.which("haproxy") is None and not os.path.exists("/usr/sbin/haproxy"),
                                 reason="haproxy not installed")]


def start_up(port: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "ooblex", "up", "--gateways", "2", "--workers", "1",
                             "--port", str(port)], env=env(OOBLEX_SECRET=""), cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    line, deadline = "", time.monotonic() + 90
    while "ready" not in line and time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "ooblex up exited early"
    return proc, json.loads(line.split("ready ", 1)[1])


async def frames_from(track: Any, count: int, timeout: float = 20.0) -> list[int]:
    """Frame numbers (``framecode``) of the next ``count`` numbered frames ``track`` delivers."""
    from ooblex.webrtc import framecode

    numbers: list[int] = []
    deadline = time.monotonic() + timeout
    while len(numbers) < count and time.monotonic() < deadline:
        frame = await asyncio.wait_for(track.recv(), timeout)
        n = framecode.read(await asyncio.to_thread(frame.to_ndarray, format="rgb24"))
        if n is not None:
            numbers.append(n)
    return numbers


async def publish_to(lb: str, clients: list[Any]) -> Any:
    """A WHIP publisher of ``identity`` through the balancer, connected (retried until a worker serves it)."""
    from ooblex.tokens import mint
    from ooblex.webrtc.client import ImageTrack, WebRTCError, WhipClient

    from .media import moving_picture

    client = WhipClient(lb + "/whip/identity", ImageTrack(moving_picture(320, 240), fps=20),
                        token=mint("publish", thread="identity"))
    for _ in range(40):  # until the worker serves identity (it registers within seconds)
        try:
            await client.start()
            break
        except WebRTCError as exc:
            if "503" not in str(exc) and "no workers" not in str(exc):
                raise
            client = WhipClient(client.url, client.track, token=mint("publish"))
            await asyncio.sleep(0.5)
    await client.wait_connected()
    clients.append(client)
    return client


async def publish_on_both(lb: str, clients: list[Any]) -> None:
    """Publishers through the balancer until both gateways hold a stream, a second apart: under load a
    gateway that has just started can miss two of HAProxy's health checks in a row, which takes it out of
    the rotation until two pass (``check inter 1s fall 2 rise 2``); back-to-back publishers then all land
    on the other one."""
    while len({c.stream_id.split(".")[0] for c in clients}) < 2:
        assert len(clients) < 6, "the balancer sent every session to one gateway"
        if clients:
            await asyncio.sleep(1.0)
        await publish_to(lb, clients)


async def close_all(clients: list[Any]) -> None:
    for c in clients:
        try:
            await asyncio.wait_for(c.close(), 10)
        except Exception:  # noqa: BLE001 - its gateway may be gone
            await c.pc.close()


def stop_up(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


@in_netns
async def test_two_gateways_behind_haproxy_one_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from ooblex.cluster.servers import free_port
    from ooblex.cluster.up import read_env
    from ooblex.tokens import mint
    from ooblex.webrtc.client import WebRTCError, WhepClient, WhipClient


    proc, info = start_up(free_port())
    clients: list[WhipClient] = []
    try:
        monkeypatch.setenv("OOBLEX_SECRET", read_env(info["env_file"])["OOBLEX_SECRET"])
        lb = info["gateway"]
        assert info["balancer"] == lb and len(info["gateways"]) == 2
        control = {"Authorization": f"Bearer {mint('control')}"}
        async with httpx.AsyncClient(timeout=10) as http:
            async def healthy() -> dict[str, str]:
                tags = {}
                for g in info["gateways"]:
                    try:
                        tags[(await http.get(g["url"] + "/healthz")).json()["instance"]] = g["url"]
                    except (httpx.HTTPError, ValueError, KeyError):
                        return {}
                return tags

            direct = await wait_for(healthy, 60, "both gateways")  # instance tag -> its own URL

            async def publish() -> WhipClient:
                return await publish_to(lb, clients)

            await publish_on_both(lb, clients)
            by_tag = {c.stream_id.split(".")[0]: c for c in clients}
            (tag1, first), (tag2, second) = sorted(by_tag.items())
            for c in (first, second):
                assert len(await frames_from(c.remote, 10)) == 10, "processed video comes back through the worker"

            # A viewer of gateway 1's stream, connected to gateway 2: forwarded, media from gateway 1.
            viewer = WhepClient(f"{direct[tag2]}/whep/{first.stream_id}", token=mint("view", stream=first.stream_id))
            await viewer.start()
            assert len(await frames_from(viewer.remote, 5)) == 5
            assert viewer.location.startswith(direct[tag2])
            await viewer.close()  # DELETE through gateway 2, to the session on gateway 1
            r = await http.get(f"{direct[tag1]}/api/v1/sessions", headers=control)
            assert [s["kind"] for s in r.json()].count("whep") == 0, "the forwarded DELETE ended the session"
            with pytest.raises(WebRTCError, match="404"):  # the holder checks the token's scope (404: as if unknown)
                await WhepClient(f"{direct[tag2]}/whep/{first.stream_id}",
                                 token=mint("view", stream=second.stream_id)).start()

            # MJPEG of gateway 2's stream through the balancer and through gateway 1.
            for base in (lb, direct[tag1]):
                token = mint("view", stream=second.stream_id)
                async with http.stream("GET", f"{base}/mjpeg/{second.stream_id}?token={token}") as r:
                    assert r.status_code == 200
                    buf = b""
                    async for chunk in r.aiter_bytes():
                        buf += chunk
                        if buf.count(b"Content-Type: image/jpeg") >= 2:
                            break
            assert (await http.get(f"{direct[tag1]}/mjpeg/{second.stream_id}")).status_code == 401

            # One listing of the cluster's streams, through either gateway (control token only).
            listed = {s["id"]: s["gateway"] for s in (await http.get(lb + "/api/v1/streams", headers=control)).json()}
            assert listed == {c.stream_id: c.stream_id.split(".")[0] for c in clients}
            assert (await http.get(lb + "/api/v1/streams")).status_code == 401

            # The operations console through the balancer shows the cluster `ooblex up` started.
            assert (await http.get(lb + "/console")).status_code == 200
            assert (await http.get(lb + "/api/v1/cluster")).status_code == 401
            overview = (await http.get(lb + "/api/v1/cluster", headers=control)).json()
            assert overview["cluster"] is True and len(overview["workers"]) == 1
            assert "identity" in overview["workers"][0]["threads"]
            assert len(overview["gateways"]) == 2

            # Extra sessions: their Location (through the balancer) reaches the gateway that holds them.
            for extra in [c for c in clients if c not in (first, second)]:
                await extra.close()
                clients.remove(extra)
            listed = {s["id"] for s in (await http.get(lb + "/api/v1/streams", headers=control)).json()}
            assert listed == {first.stream_id, second.stream_id}

            # Stop gateway 1 (as an orchestrator does: SIGTERM).
            pid = next(g["pid"] for g in info["gateways"] if g["url"] == direct[tag1])
            os.kill(pid, signal.SIGTERM)
            await wait_for(lambda: first.pc.connectionState in ("closed", "failed"), 20,
                           "gateway 1's publisher to see its session end")
            listed = {s["id"] for s in (await http.get(lb + "/api/v1/streams", headers=control)).json()}
            assert listed == {second.stream_id}, "the stopped gateway's streams left the listing"
            r = await http.get(f"{lb}/api/v1/streams/{first.stream_id}", headers=control)
            assert r.status_code == 404, r.text
            assert len(await frames_from(second.remote, 10)) == 10, "gateway 2's stream flows on"
            newcomer = await publish()
            assert newcomer.stream_id.split(".")[0] == tag2, "new sessions go to the gateway left"
            assert len(await frames_from(newcomer.remote, 5)) == 5
    finally:
        await close_all(clients)
        stop_up(proc)


@in_netns
async def test_a_gateway_killed_outright_is_routed_around(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL (a crash, the OOM killer): no goodbye from the gateway. HAProxy's health checks take it out of
    the rotation, the cluster listing leaves its streams out at once (it does not answer), its record
    expires, its publishers see the connection fail (ICE consent, RFC 7675), and the other gateway's
    streams flow on; ``ooblex up`` keeps the rest of the cluster running."""
    from ooblex.cluster.servers import free_port
    from ooblex.cluster.up import read_env
    from ooblex.tokens import mint

    proc, info = start_up(free_port())
    clients: list[Any] = []
    try:
        monkeypatch.setenv("OOBLEX_SECRET", read_env(info["env_file"])["OOBLEX_SECRET"])
        lb = info["gateway"]
        control = {"Authorization": f"Bearer {mint('control')}"}
        await publish_on_both(lb, clients)
        async with httpx.AsyncClient(timeout=10) as http:
            by_tag = {c.stream_id.split(".")[0]: c for c in clients}
            instances = {(await http.get(g["url"] + "/healthz")).json()["instance"]: g for g in info["gateways"]}
            (tag1, first), (tag2, second) = sorted(by_tag.items())
            os.kill(instances[tag1]["pid"], signal.SIGKILL)

            listed = {s["id"] for s in (await http.get(lb + "/api/v1/streams", headers=control)).json()}
            assert not any(i.startswith(tag1 + ".") for i in listed), "a dead gateway's streams are not listed"
            assert second.stream_id in listed
            assert len(await frames_from(second.remote, 10)) == 10, "the other gateway's stream flows on"

            async def lands_on_survivor() -> bool:
                newcomer = await publish_to(lb, clients)
                return newcomer.stream_id.split(".")[0] == tag2

            for _ in range(3):  # within ~2 s of health checks the balancer sends no session to the dead one
                await asyncio.sleep(2.5)
                assert await lands_on_survivor(), "a new session went to the killed gateway"
            assert len(await frames_from(clients[-1].remote, 5)) == 5

            async def record_gone() -> bool:
                r = await http.get(f"{instances[tag2]['url']}/api/v1/streams/{first.stream_id}", headers=control)
                return r.status_code == 404
            await wait_for(record_gone, 30, "the killed gateway's record to expire (404 for its streams)")
            await wait_for(lambda: first.pc.connectionState in ("closed", "failed"), 60,
                           "the killed gateway's publisher to see its connection fail")
        assert proc.poll() is None, "ooblex up keeps the rest of the cluster running"
    finally:
        await close_all(clients)
        stop_up(proc)


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy not installed (.ci/system-deps)")
def test_balancer_config_is_valid_and_rotates_offers_apart_from_ice_preflights(tmp_path) -> None:
    """A client that asks OPTIONS (ICE servers) before each offer must not have every offer sent to the
    same gateway: OPTIONS go through a rotation of their own that follows the main one's health checks."""
    from ooblex.cluster.balancer import haproxy_config

    config = haproxy_config("127.0.0.1:18080", [("10.0.0.11", 8800), ("10.0.0.12", 8800)], check_host="gw.example")
    assert "use_backend preflight if ice_servers_asked" in config
    assert "server gw2 10.0.0.12:8800 track gateways/gw2" in config
    (tmp_path / "haproxy.cfg").write_text(config)
    check = subprocess.run(["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
