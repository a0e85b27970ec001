"""``ooblex up`` starts a real local cluster that serves deploys, and Ctrl-C stops all of it.
Its Redis refuses clients without the password, its RabbitMQ refuses guest, and no password is
printed or shown on a command line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import ooblex as ob
from ooblex.broker.base import redact
from ooblex.cluster.up import read_env
from ooblex.tokens import mint

from .cluster_fixtures import ROOT, env, needs_rabbitmq, needs_redis

pytestmark = [pytest.mark.timeout(120), needs_redis]


@ob.tensor_thread(name="brighten")
def brighten(frame: np.ndarray) -> np.ndarray:
    return np.minimum(frame.astype(np.int16) + 50, 255).astype(np.uint8)


def unauthenticated_ping(url: str) -> bytes:
    """What Redis answers a client that does not AUTH (a raw socket: no client library magic)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), 5) as s:
        s.sendall(b"PING\r\n")
        return s.recv(200)


async def guest_login(url: str) -> None:
    import aio_pika

    parts = urlsplit(url)
    connection = await aio_pika.connect(f"amqp://guest:guest@{parts.hostname}:{parts.port}/", timeout=10)
    await connection.close()


def command_lines() -> str:
    """Every process's command line, as ``ps`` shows them to any user of the machine."""
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            out.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return "\n".join(out)


def sample(text: str, name: str, **labels: str) -> float:
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


def port_open(url: str) -> bool:
    host, port = url.split("//")[1].split("@")[-1].split("/")[0].split(":")
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, int(port))) == 0


@pytest.mark.parametrize("broker", ["redis", pytest.param("rabbitmq", marks=needs_rabbitmq)])
def test_up_serves_a_deploy_and_stops_everything(broker: str) -> None:
    from ooblex.cluster.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ooblex", "up", "--workers", "2", "--broker", broker,
                             "--port", str(port)], env=env(OOBLEX_SECRET=""), cwd=ROOT, stdout=subprocess.PIPE,
                            text=True)
    try:
        line, printed = "", ""
        deadline = time.monotonic() + 90
        while "ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            printed += line
            assert line or proc.poll() is None, "ooblex up exited early"
        printed += proc.stdout.readline()  # the hint below the ready line
        info = json.loads(line.split("ready ", 1)[1])
        assert os.stat(info["env_file"]).st_mode & 0o777 == 0o600
        creds = read_env(info["env_file"])
        store, broker_url, secret = creds["OOBLEX_STORE"], creds["OOBLEX_BROKER"], creds["OOBLEX_SECRET"]
        passwords = {urlsplit(store).password, urlsplit(broker_url).password}
        assert None not in passwords and len(secret) >= 32
        for hidden in (*passwords, secret):
            assert hidden not in printed, "no credentials on the terminal"
            assert hidden not in command_lines(), "no credentials where ps shows them"
        assert info["store"] == redact(store) and info["broker"] == redact(broker_url)
        assert unauthenticated_ping(store).startswith(b"-NOAUTH"), "Redis refuses clients without the password"
        if broker == "rabbitmq":
            with pytest.raises(Exception, match="ACCESS_REFUSED"):
                asyncio.run(guest_login(broker_url))
        dep = ob.deploy(brighten, cluster=broker_url, store=store, secret=secret)
        dep.wait_ready(30, workers=2)
        out = ob.process("brighten", [np.full((16, 16, 3), 10, np.uint8)] * 5, cluster=broker_url,
                         store=store, progress=False, secret=secret)
        assert out.frames_out == 5
        control = {"authorization": f"Bearer {mint('control', secret=secret)}"}
        scrapes = [httpx.get(url, headers=control, timeout=5).text for url in info["worker_metrics"]]
        assert len(scrapes) == 2 and sum(sample(t, "ooblex_worker_frames_total", thread="brighten")
                                         for t in scrapes) == 5, "each worker serves its metrics"
        assert info["gateway"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not dep.urls["gateways"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the gateway announces itself every 3 s
        assert dep.urls["whip"] == f"http://127.0.0.1:{port}/whip/brighten"
        health = httpx.get(info["gateway"] + "/healthz", timeout=5).json()
        assert health["status"] == "ok" and health["broker"] == info["broker"]
        assert not any(p in str(health) for p in passwords), "no password on status pages"
        threads = [t["name"] for t in httpx.get(info["gateway"] + "/api/v1/threads", timeout=5).json()]
        assert "brighten" in threads
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not port_open(info["store"]) and not port_open(info["broker"])
        assert not os.path.exists(info["env_file"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
