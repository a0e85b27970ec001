"""Redis, the gateway-side engine and a worker on three "hosts": network namespaces joined by veth pairs.

Nothing in the data path may assume one machine: no 127.0.0.1, no shared files, no shared pids.
Needs root (ip netns); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from ooblex.cluster.servers import RedisServer

from .cluster_fixtures import ROOT, env, needs_redis, start_worker, stop

pytestmark = [pytest.mark.timeout(120), needs_redis,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="needs root and iproute2")]

NET = "10.199.{}.{}"

GATEWAY = r"""
import asyncio, json, sys, numpy as np, ooblex as ob
from ooblex.cluster.engine import ClusterEngine
url = sys.argv[1]

@ob.tensor_thread(name="netns_negate")
def netns_negate(frame):
    return 255 - frame

dep = ob.deploy(netns_negate, cluster=url, wait=30)

async def main():
    async with ClusterEngine(url) as engine:
        while "netns_negate" not in engine.threads:
            await asyncio.sleep(0.1)
        stream = engine.open("netns_negate", mode="every", max_in_flight=4)
        img = np.full((120, 160, 3), 30, np.uint8)
        async def feed():
            for _ in range(10):
                await stream.submit(img)  # every-frame mode: waits while 4 are in flight

        feeder = asyncio.create_task(feed())
        frames = [await stream.get(timeout=20) for _ in range(10)]
        await feeder
        return [f.seq for f in frames], float(frames[-1].image.mean())

seqs, mean = asyncio.run(main())
print(json.dumps({"seqs": seqs, "mean": mean, "workers": [w["host"] for w in dep.status()["workers"]],
                  "worker_ips": dep.status()["workers_alive"]}))
"""


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def hosts():  # noqa: ANN201
    """Three namespaces: ``store`` holds a bridge; ``gw`` and ``wk`` each hang off it with a veth pair."""
    tag = secrets.token_hex(2)
    net = int(tag, 16) % 200 + 20
    names = {role: f"ob{role}{tag}" for role in ("store", "gw", "wk")}
    try:
        for ns in names.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        store = names["store"]
        sh("ip", "-n", store, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", store, "addr", "add", NET.format(net, 1) + "/24", "dev", "br0")
        sh("ip", "-n", store, "link", "set", "br0", "up")
        for i, role in enumerate(("gw", "wk"), start=2):
            ns, a, b = names[role], f"v{role}{tag}a", f"v{role}{tag}b"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", ns)
            sh("ip", "link", "set", b, "netns", store)
            sh("ip", "-n", ns, "addr", "add", NET.format(net, i) + "/24", "dev", a)
            sh("ip", "-n", ns, "link", "set", a, "up")
            sh("ip", "-n", store, "link", "set", b, "master", "br0")
            sh("ip", "-n", store, "link", "set", b, "up")
        yield names, net
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_store_gateway_and_worker_on_separate_hosts(hosts) -> None:  # noqa: ANN001
    names, net = hosts
    redis = RedisServer(host=NET.format(net, 1), port=6379, netns=names["store"]).start()
    worker = None
    try:
        url = redis.url
        assert "127.0.0.1" not in url
        worker = start_worker(url, netns=names["wk"], OOBLEX_CACHE=str(ROOT / "test-artifacts" / "wk-cache"))
        out = subprocess.run(["ip", "netns", "exec", names["gw"], sys.executable, "-c", GATEWAY, url],
                             env=env(), cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert out.returncode == 0, out.stderr[-2000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["seqs"] == list(range(10))
        assert abs(got["mean"] - 225) <= 3
        assert len(got["workers"]) >= 1
    finally:
        if worker is not None:
            stop(worker)
        redis.cleanup()
