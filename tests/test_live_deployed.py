"""``ob.live(deployment)`` and compare mode against the deployed version, in a real kernel with a real local
cluster (the kernel's own ``ob.cluster()``: no OOBLEX_* is set in the pytest process)."""

from __future__ import annotations

import json

import pytest

from .cluster_fixtures import needs_redis
from .media import write_video

pytest.importorskip("anywidget")
from .kernel_frontend import KernelFrontend  # noqa: E402

pytestmark = [pytest.mark.timeout(300), needs_redis]

SETUP = """
import json, os, time, numpy as np, ooblex as ob
os.environ["OOBLEX_WS_IDLE_S"] = "2"  # the cluster's gateway closes idle sockets soon (a stopped widget's)
t0 = time.perf_counter()
cluster = ob.cluster()
t1 = time.perf_counter()
def inv(frame):
    return 255 - frame
dep = ob.deploy(inv, wait=90)
@ob.tensor_thread(params={"gain": {"min": 0.0, "max": 1.0}})
def scale(frame, gain: float = 0.5):
    return (frame * gain).astype(np.uint8)
scaled = ob.deploy(scale, wait=90)
t2 = time.perf_counter()
print(json.dumps({"cluster_s": t1 - t0, "deploy_s": t2 - t1, "version": dep.version}))
"""


@pytest.fixture(scope="module")
def kernel():
    k = KernelFrontend()
    out = k.execute(SETUP, timeout=200)
    k.setup = json.loads(out.strip().splitlines()[-1])
    yield k
    k.execute("ob.close_all() if hasattr(ob, 'close_all') else None; cluster.stop()", timeout=60)
    k.close()


@pytest.mark.parametrize("transport", ["webrtc", "websocket"])
def test_compare_mode_runs_the_notebook_code_and_the_deployed_version_on_the_same_frames(kernel, tmp_path, transport):
    clip = write_video(tmp_path / "clip.mp4", 30)
    out = kernel.execute(f"""
w = ob.live([inv, dep], source={str(clip)!r}, transport={transport!r})
recs = w.record(2.0)
lanes = w.stats()
print(json.dumps({{
    "labels": [lane["label"] for lane in w.lanes],
    "frames": [len(r.frames) for r in recs],
    "errors": [sum(s.error is not None for s in r.shots) if hasattr(r, "shots") else None for r in recs],
    "diff": [float(np.abs(a.astype(int) - b.astype(int)).mean())
             for a, b in zip(recs[1].frames[-3:], [255 - i for i in recs[1].inputs[-3:]])],
    "result": recs[1].results[-1],
    "latency": [lane.get("latency_ms") for lane in lanes],
    "call": type(w.threads[1].call).__name__,
}}))
w.close()
""", timeout=120)
    got = json.loads(out.strip().splitlines()[-1])
    v = kernel.setup["version"]
    assert got["labels"] == ["inv (notebook)", f"inv@{v} (cluster)"]
    assert all(n >= 10 for n in got["frames"]), got  # a 30 fps clip for 2 s, through both lanes
    assert max(got["diff"]) < 8, got  # the cluster inverted the frames (JPEG both ways)
    assert got["result"]["trip_ms"] > 0 and got["result"]["gateway_ms"] is not None
    assert all(lat for lat in got["latency"]), got
    assert got["call"] == {"webrtc": "PeerCall", "websocket": "SocketCall"}[transport]


def test_a_name_resolves_to_the_active_deployment_and_a_wrong_version_is_refused(kernel, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    v = kernel.setup["version"]
    out = kernel.execute(f"""
w1 = ob.live("inv", source={str(clip)!r})
r = w1.record(1.0)
print(w1.lanes[0]["label"], len(r.frames) > 0)
w1.close()
try:
    ob.live("inv@{v + 5}", source={str(clip)!r})
except LookupError as exc:
    print("refused:", exc)
""", timeout=120)
    lines = out.strip().splitlines()
    assert lines[0] == f"inv@{v} (cluster) True"
    assert lines[1].startswith("refused:") and f"inv@{v + 5} is not served (served: inv@{v};" in lines[1]


def test_the_deployed_versions_parameters_are_controls_that_reach_the_cluster(kernel, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    out = kernel.execute(f"""
w2 = ob.live(scaled, source={str(clip)!r}, params={{"gain": 0.2}})
def ratio():
    r = w2.record(0.5)
    return round(float(np.mean([o.mean() / max(i.mean(), 1) for o, i in zip(r.frames, r.inputs)])), 2)
first = ratio()
w2.set_params(gain=0.8)
time.sleep(0.3)
print(json.dumps({{"controls": [c["name"] for c in w2.lanes[0]["controls"]], "first": first, "then": ratio()}}))
w2.close()
""", timeout=120)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["controls"] == ["gain"]
    assert abs(got["first"] - 0.2) < 0.1 and abs(got["then"] - 0.8) < 0.1, got  # through VP8 both ways


def test_a_socket_the_gateway_closed_while_idle_is_reopened_without_an_error(kernel):
    out = kernel.execute("""
from ooblex.jupyter.deployed import as_lane_thread
lane = as_lane_thread(dep, "websocket")
img = np.full((48, 64, 3), 10, np.uint8)
first, _ = lane.call(img)
old = lane.call._ws
time.sleep(3.5)  # past OOBLEX_WS_IDLE_S: the gateway closes the socket
second, info = lane.call(img)
print(int(first.mean()), int(second.mean()), lane.call._ws is not old, old.close_code)
lane.teardown()
print(lane.call._ws is None)
""", timeout=60)
    lines = out.strip().splitlines()
    assert lines[0] == "245 245 True 4408", lines
    assert lines[1] == "True"


def test_rerunning_the_compare_cell_after_a_redeploy_swaps_the_new_version_into_the_open_widget(kernel, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    v = kernel.setup["version"]
    out = kernel.execute(f"""
w3 = ob.live([inv, dep], source={str(clip)!r})
w3.snapshot()
dep2 = ob.deploy(inv, wait=90)
w4 = ob.live([inv, dep2], source={str(clip)!r})
shots = w4.snapshot()
print(w4 is w3, [lane["label"] for lane in w4.lanes], shots[1].error)
w4.close()
""", timeout=180)
    assert out.strip().splitlines()[-1] == f"True ['inv (notebook)', 'inv@{v + 1} (cluster)'] None"


def test_a_kept_earlier_version_is_watched_beside_the_active_one(kernel, tmp_path):
    clip = write_video(tmp_path / "clip.mp4", 30)
    out = kernel.execute(f"""
@ob.tensor_thread(name="tint")
def tint1(frame):
    return np.full_like(frame, 40)
@ob.tensor_thread(name="tint")
def tint2(frame):
    return np.full_like(frame, 200)
t1 = ob.deploy(tint1, wait=90)
t2 = ob.deploy(tint2, keep_versions=True, wait=90)
w5 = ob.live([t1, "tint"], source={str(clip)!r})
shots = w5.snapshot()
print(json.dumps({{"labels": [lane["label"] for lane in w5.lanes], "v": [t1.version, t2.version],
                  "means": [round(float(s.output.mean())) for s in shots]}}))
w5.close()
try:
    ob.live("tint@{{}}".format(t2.version + 3), source={str(clip)!r})
except LookupError as exc:
    print("refused:", exc)
""", timeout=240)
    lines = out.strip().splitlines()
    got = json.loads(lines[-2])
    v1, v2 = got["v"]
    assert got["labels"] == [f"tint@{v1} (cluster)", f"tint@{v2} (cluster)"], got
    assert abs(got["means"][0] - 40) <= 3 and abs(got["means"][1] - 200) <= 3, got  # each lane its own version
    assert lines[-1].startswith(f"refused: tint@{v2 + 3} is not served (served: tint@{v1}, tint@{v2};"), lines


def test_a_webrtc_lane_whose_session_the_gateway_ended_reconnects_by_itself(kernel):
    out = kernel.execute("""
import httpx
from ooblex.jupyter.deployed import as_lane_thread
lane = as_lane_thread("inv")  # the active version (an earlier test may have redeployed)
img = np.dstack([np.tile(np.linspace(0, 255, 160), (120, 1))] * 3).astype(np.uint8)  # a gradient
first, info = lane.call(img)
client = lane.call._client
print(round(float(np.abs(first.astype(int) - (255 - img)).mean())), info["trip_ms"] > 0)
r = httpx.delete(client.location, headers=client.auth)  # the gateway ends the session (as a restart would)
outcomes = []
for _ in range(20):
    try:
        out, info = lane.call(img)
        outcomes.append("frame" if out is not None else "lost")
        if out is not None and lane.call._client is not client:
            break
    except Exception as exc:
        outcomes.append(type(exc).__name__)
print(r.status_code, outcomes[-1], lane.call._client is not client, len(outcomes) <= 12)
lane.teardown()
print(lane.call._client is None, lane.call._loop is None)
""", timeout=120)
    lines = out.strip().splitlines()
    diff, trip = lines[0].split()
    assert int(diff) < 8 and trip == "True", lines  # inverted by the cluster, through VP8 both ways
    assert lines[1] == "200 frame True True", lines
    assert lines[2] == "True True"
