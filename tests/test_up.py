"""``ooblex up`` starts a real local cluster that serves deploys, and Ctrl-C stops all of it."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

import ooblex as ob
from ooblex.broker.base import redact

from .cluster_fixtures import ROOT, env, needs_rabbitmq, needs_redis

pytestmark = [pytest.mark.timeout(120), needs_redis]


@ob.tensor_thread(name="brighten")
def brighten(frame: np.ndarray) -> np.ndarray:
    return np.minimum(frame.astype(np.int16) + 50, 255).astype(np.uint8)


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
                             "--port", str(port)], env=env(), cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = ""
        deadline = time.monotonic() + 90
        while "ready" not in line and time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "ooblex up exited early"
        info = json.loads(line.split("ready ", 1)[1])
        dep = ob.deploy(brighten, cluster=info["broker"], store=info["store"], secret=info["secret"])
        dep.wait_ready(30, workers=2)
        out = ob.process("brighten", [np.full((16, 16, 3), 10, np.uint8)] * 5, cluster=info["broker"],
                         store=info["store"], progress=False)
        assert out.frames_out == 5
        assert info["gateway"] == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not dep.urls["gateways"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the gateway announces itself every 3 s
        assert dep.urls["whip"] == f"http://127.0.0.1:{port}/whip/brighten"
        health = httpx.get(info["gateway"] + "/healthz", timeout=5).json()
        assert health["status"] == "ok" and health["broker"] == redact(info["broker"])
        assert "guest:guest" not in str(health), "no password on status pages"
        threads = [t["name"] for t in httpx.get(info["gateway"] + "/api/v1/threads", timeout=5).json()]
        assert "brighten" in threads
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
        assert not port_open(info["store"]) and not port_open(info["broker"])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
