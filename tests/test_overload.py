"""Past capacity the gateway refuses new work with 503 (measured load), degrades every stream the same
way (lower fps, then lower resolution) and never stalls: unit tests of the policy, then real aiortc
publishers through a gateway whose thresholds are moved below the load they cause."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from ooblex.gateway.admission import (
    PROBE_MAX_S,
    PROBE_S,
    PROBE_WINDOW_S,
    RECOVER_S,
    Governor,
    Load,
    LoadMeter,
    starts_work,
)

from .cluster_fixtures import wait_for
from .netns import in_netns

HOT = Load(loop=0.95, cpu=0.5, lag_ms=10)
COOL = Load(loop=0.1, cpu=0.1, lag_ms=1)


def test_overload_lowers_fps_first_then_resolution_and_recovers_slowly() -> None:
    g = Governor(max_loop_busy=0.9, max_cpu=0.9, max_lag_ms=200, min_fps=10, min_scale=0.5)
    assert (g.fps_cap, g.scale, g.overloaded) == (0.0, 1.0, False)
    seen = []
    for i in range(20):
        g.update(HOT, now=i)
        seen.append((g.fps_cap, g.scale))
    assert g.overloaded
    caps = [c for c, s in seen[2:] if s == 1.0]
    assert seen[:2] == [(0.0, 1.0)] * 2, "sustained: the first samples over change nothing"
    assert caps == sorted(caps, reverse=True) and min(caps) == 10, f"fps first, down to min_fps: {seen}"
    assert seen[-1] == (10, 0.5), "then the resolution, down to min_scale"
    assert [s for _, s in seen] == sorted((s for _, s in seen), reverse=True)
    level = g.level
    g.update(COOL, now=100)
    g.update(COOL, now=100 + RECOVER_S / 2)
    assert g.level == level, "no step back before the load stayed low for RECOVER_S"
    g.update(COOL, now=100 + RECOVER_S)
    assert g.level == level - 1 and not g.overloaded


def test_between_recover_and_the_threshold_a_step_is_undone_only_as_a_probe_that_backs_off() -> None:
    """The cap saves less than its share of frames (each is still decoded): a gateway pushed down by a
    burst can sit between RECOVER and the threshold at a capped rate with room for more. It probes one
    step up after PROBE_S there; a probe that overloads again doubles the wait, one that holds resets it."""
    band, hot = Load(cpu=0.8), Load(cpu=0.95)
    g = Governor(max_cpu=0.9, sustain=2)
    t = 0.0

    def feed(load: Load, seconds: float) -> None:
        nonlocal t
        for _ in range(int(seconds / 0.5)):
            t += 0.5
            g.update(load, now=t)

    feed(hot, 1.5)
    assert g.level == 2, g.describe()
    feed(band, PROBE_S - 1)
    assert g.level == 2, "held in the band for less than PROBE_S"
    feed(band, 1.5)
    assert g.level == 1, "then one step up, a probe"
    feed(hot, 1.0)  # the probe overloads: back down, and twice the wait
    assert g.level == 2 and g.probe_wait_s == 2 * PROBE_S, g.describe()
    feed(band, 2 * PROBE_S - 1)
    assert g.level == 2
    feed(band, 1.5)
    assert g.level == 1
    feed(band, PROBE_WINDOW_S + 1)  # this probe holds: the wait is PROBE_S again
    assert g.probe_wait_s == PROBE_S
    feed(band, PROBE_S)
    assert g.level == 0, "and the next probe comes after PROBE_S"
    feed(hot, 1.0)
    waits = []
    for _ in range(6):  # probes that keep failing: the wait doubles up to PROBE_MAX_S
        feed(band, g.probe_wait_s + 0.5)
        assert g.level == 0
        feed(hot, 1.0)
        waits.append(g.probe_wait_s)
    assert waits == [min(PROBE_S * 2 ** n, PROBE_MAX_S) for n in range(1, 7)], waits


def test_a_short_burst_is_no_overload() -> None:
    g = Governor(max_loop_busy=0.9, sustain=3)
    for i in range(2):
        g.update(HOT, now=i)
    assert not g.overloaded and g.level == 0
    g.update(COOL, now=2)
    g.update(HOT, now=3)
    g.update(HOT, now=4)
    assert not g.overloaded, "the count starts again after a sample below"
    g.update(HOT, now=5)
    assert g.overloaded and g.level == 1


def test_each_measure_counts_and_zero_turns_one_off() -> None:
    for load in (Load(cpu=0.95), Load(lag_ms=300)):
        g = Governor(max_loop_busy=0.9, max_cpu=0.9, max_lag_ms=200, sustain=1)
        g.update(load, now=0)
        assert g.overloaded, load
    g = Governor(max_loop_busy=0, max_cpu=0, max_lag_ms=0, sustain=1)
    g.update(Load(loop=5, cpu=5, lag_ms=5000), now=0)
    assert not g.overloaded and g.level == 0


def test_the_cap_is_the_same_for_every_stream() -> None:
    g = Governor(min_fps=10)
    g.level = g.steps.index((15.0, 1.0))
    taken = {"a": 0, "b": 0, "c": 0}
    for i in range(300):  # 10 s of three 30 fps sources
        for sid in taken:
            taken[sid] += g.allow(sid, now=i / 30)
    assert all(140 <= n <= 160 for n in taken.values()), taken  # 15 fps each
    g.level = 0
    assert all(g.allow("a", now=20 + i / 1000) for i in range(5)), "no cap: every frame"


def test_a_cap_gives_its_own_rate_from_a_faster_jittered_source() -> None:
    """30 fps under a 24 or 20 fps cap must give 24 or 20, not every other frame (15), also when the
    frames come jittered (decoded in a busy thread) or in pairs."""
    rng = random.Random(7)
    for cap in (24.0, 20.0, 15.0, 12.0, 10.0, 8.0, 5.0):
        g = Governor(min_fps=5)
        g.level = g.steps.index((cap, 1.0))
        arrivals = sorted(i / 30 + rng.uniform(-0.008, 0.008) for i in range(300))  # 10 s at 30 fps
        arrivals += [10 + i // 2 * 2 / 30 + i % 2 * 0.001 for i in range(300)]  # 10 s more, in pairs
        taken = [now for now in arrivals if g.allow("a", now=now)]
        for first, last in ((0, 10), (10, 20)):
            n = sum(first <= t < last for t in taken)
            assert abs(n - cap * 10) <= 2, (cap, first, n)
        assert g.skipped == len(arrivals) - len(taken)


def test_only_requests_that_start_work_are_refused() -> None:
    def scope(method: str, path: str, kind: str = "http") -> dict:
        return {"type": kind, "method": method, "path": path}

    for method, path in [("POST", "/whip/identity"), ("POST", "/whep/abc"), ("POST", "/api/v1/frames/x"),
                         ("GET", "/mjpeg/abc"), ("POST", "/api/v1/jobs")]:
        assert starts_work(scope(method, path)), (method, path)
    assert starts_work(scope("GET", "/ws/identity", "websocket"))
    for method, path in [("DELETE", "/whip/identity/s1"), ("DELETE", "/whep/abc/s1"), ("GET", "/api/v1/streams"),
                         ("PATCH", "/api/v1/streams/abc"), ("GET", "/healthz"), ("GET", "/metrics"),
                         ("DELETE", "/api/v1/jobs/j1"), ("GET", "/api/v1/jobs/j1")]:
        assert not starts_work(scope(method, path)), (method, path)


def test_a_container_cpu_limit_caps_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from ooblex.gateway import admission

    real = Path.read_text

    def fake(self: Path, *args: object, **kwargs: object) -> str:
        if str(self) == "/sys/fs/cgroup/cpu.max":
            return "50000 100000\n"  # limits: {cpu: 500m}
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", fake)
    assert admission.usable_cores() == 0.5


async def test_the_meter_measures_the_event_loop() -> None:
    meter = LoadMeter(every_s=0.1)
    task = asyncio.create_task(meter.run())

    async def spin() -> None:
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            sum(range(10_000))
            await asyncio.sleep(0)

    await asyncio.sleep(0.6)
    idle = meter.load.loop
    await spin()
    busy = meter.load.loop
    task.cancel()
    # Relative, not absolute: on a shared machine a spinning thread may get a small share of a core.
    assert busy > 0.05 and busy > 3 * idle, f"a spinning loop reads busy {busy}, an idle one {idle}"
    assert meter.samples >= 6


@in_netns
@pytest.mark.timeout(150)
async def test_past_capacity_streams_degrade_evenly_and_new_sessions_get_503() -> None:
    import httpx

    from ooblex.gateway import Settings
    from ooblex.webrtc.client import ImageTrack, RoundTrips, WebRTCError, WhepClient, WhipClient

    from .gateway_server import running_gateway
    from .media import moving_picture

    with running_gateway(settings=Settings(loopback_candidates=True)) as gw:
        governor = gw.state.governor
        tracks = [ImageTrack(moving_picture(320, 240), fps=30) for _ in range(2)]
        clients = [WhipClient(gw.url + "/whip/identity", t) for t in tracks]
        for c in clients:
            await c.start()
            await c.wait_connected()
        trips = [RoundTrips(t) for t in tracks]
        readers = [asyncio.create_task(r.consume(c.remote)) for r, c in zip(trips, clients, strict=True)]
        await asyncio.sleep(2)
        assert not governor.overloaded, governor.describe()

        governor.limits = (0.01, 0.0, 0.0)  # capacity now below the load these two streams cause
        await wait_for(lambda: governor.level == len(governor.steps) - 1, 20, "the lowest step")
        state = governor.describe()
        assert state["overloaded"] and (state["fps_cap"], state["scale"]) == (10.0, 0.5), state

        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(gw.url + "/whip/identity", content=b"v=0", headers={"Content-Type": "application/sdp"})
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
            assert "capacity" in r.json()["detail"]
            assert (await http.get(gw.url + "/api/v1/streams")).status_code == 200
            health = (await http.get(gw.url + "/healthz")).json()
            assert health["capacity"]["overloaded"] and health["capacity"]["refused"] >= 1
        with pytest.raises(WebRTCError, match="503"):
            await WhepClient(f"{gw.url}/whep/{clients[0].stream_id}").start()

        # Nothing stalls: both streams keep coming back, at the same (capped) rate and a lower resolution.
        before = [r.received for r in trips]
        streams = [gw.state.engine.streams[c.stream_id] for c in clients]
        await asyncio.sleep(4)
        got = [r.received - b for r, b in zip(trips, before, strict=True)]
        assert min(got) > 8, f"a stream stalled under overload: {got} frames in 4 s"
        assert min(got) / max(got) > 0.6, f"streams degraded unevenly: {got}"
        assert max(got) <= 4 * 10 * 1.3, f"the 10 fps cap was not applied: {got}"
        for s in streams:
            assert s.latest is not None and s.latest.image.shape[:2] == (int(240 * governor.scale) & ~1,
                                                                          int(320 * governor.scale) & ~1)

        for reader in readers:
            reader.cancel()
        for c in clients:
            await c.close()  # DELETE is never refused
        await asyncio.sleep(0.5)
        assert not gw.state.sessions.items
