"""WebRTC through the gateway with a Redis broker: a WHIP publisher's frames go to a worker process
(deployed thread) and come back, inside a private network namespace (see netns.py)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from .cluster_fixtures import SECRET, needs_redis, start_worker, stop
from .media import moving_picture
from .netns import in_netns

pytestmark = [pytest.mark.timeout(150), needs_redis]


@in_netns
async def test_whip_round_trip_through_a_redis_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    import ooblex as ob
    from ooblex.cluster.registry import Registry
    from ooblex.cluster.servers import RedisServer
    from ooblex.tokens import mint
    from ooblex.webrtc import framecode
    from ooblex.webrtc.client import ImageTrack, WhipClient

    from .gateway_server import running_gateway

    @ob.tensor_thread(name="relay")
    def relay(frame: np.ndarray) -> np.ndarray:
        return frame.copy()

    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    redis = RedisServer().start()
    worker = start_worker(redis.url)
    try:
        ob.deploy(relay, cluster=redis.url, wait=30)
        with running_gateway(broker=redis.url, public_url="http://gw.test:8800") as gw:
            assert type(gw.state.engine).__name__ == "ClusterEngine"
            async with httpx.AsyncClient() as http:
                names = [t["name"] for t in (await http.get(gw.url + "/api/v1/threads")).json()]
            assert "relay" in names
            track = ImageTrack(moving_picture(320, 240), fps=30)
            async with WhipClient(gw.url + "/whip/relay", track, token=mint("publish", thread="relay")) as client:
                await client.wait_connected()
                numbers: list[int] = []
                deadline = time.monotonic() + 30
                while len(numbers) < 40 and time.monotonic() < deadline:
                    frame = await asyncio.wait_for(client.remote.recv(), 20)
                    n = framecode.read(frame.to_ndarray(format="rgb24"))
                    if n is not None:
                        numbers.append(n)
                assert len(numbers) == 40 and numbers == sorted(numbers)
            await asyncio.sleep(1.5)  # one worker heartbeat
            rec = Registry(redis.url).records("worker")[0]
            assert rec["threads"]["relay"]["processed"] >= 40, "frames went through the worker process"
            urls = ob.deployment("relay", redis.url).urls
            assert urls["whip"] == "http://gw.test:8800/whip/relay"
            assert urls["ws"] == "ws://gw.test:8800/ws/relay"
    finally:
        stop(worker)
        redis.cleanup()
