"""A lean start: ``ooblex demo`` answers and lists every demo thread before any ML framework is loaded; a
thread's framework loads for its first frame, without banners, and that slow first frame is not a stall."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import ooblex_models
from ooblex import Engine, tensor_thread
from ooblex.cluster.servers import free_port
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS

ROOT = Path(__file__).resolve().parent.parent
#: Each framework's shared library, as it appears in /proc/PID/maps once the framework is imported.
LIBRARIES = {"torch": "libtorch", "tensorflow": "libtensorflow", "onnxruntime": "onnxruntime", "dlib": "dlib"}
BANNERS = ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard", "To enable the following")
JPEG = (ROOT / "tests" / "data" / "one_face.jpg").read_bytes()


def loaded(pid: int) -> set[str]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return {name for name, lib in LIBRARIES.items() if lib in maps}


@pytest.fixture
def demo(tmp_path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("OOBLEX_", "TF_"))}, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "ooblex", "demo", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60  # only catches a hang: benchmarks/startup.py measures the time
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield proc, url, log
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.mark.timeout(300)
def test_the_demo_lists_every_thread_before_loading_a_framework_then_loads_one_for_its_first_frame(demo) -> None:
    proc, url, log = demo
    threads = {t["name"]: t for t in httpx.get(url + "/api/v1/threads", timeout=10).json()}
    assert set(ooblex_models.DEMOS) | {t.name for t in BUILTIN_DEMO_THREADS} | {"identity"} <= set(threads)
    assert [p["name"] for p in threads["face_blur"]["params"]] == ["strength", "margin", "scale", "upsample"]
    assert threads["face_detect"]["licence"] and threads["sketch"]["description"]
    assert loaded(proc.pid) == set()
    for name, framework in (("cartoon_onnx", "onnxruntime"), ("sketch", "tensorflow")):
        r = httpx.post(f"{url}/api/v1/frames/{name}", content=JPEG, headers={"Content-Type": "image/jpeg"},
                       timeout=240)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text
        assert framework in loaded(proc.pid)
    assert {"torch", "dlib"}.isdisjoint(loaded(proc.pid))  # only what the streams used
    text = log.read_text()
    assert "cartoon_onnx: loaded in" in text and "sketch: loaded in" in text
    assert [b for b in BANNERS if b in text] == [], text


CALLS: list[int] = []


@tensor_thread(name="slow_to_load")
class SlowToLoad:
    """Takes 3 s to set up: longer than the staleness budget plus the grace before a frame is presumed lost."""

    def setup(self) -> None:
        time.sleep(3.0)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        CALLS.append(1)
        return frame


async def test_a_live_stream_waits_for_the_first_load_then_flows_without_losing_or_computing_stale_frames() -> None:
    CALLS.clear()
    async with Engine("memory://", threads=[SlowToLoad], lazy=True) as engine:
        assert engine.loading("slow_to_load") is False  # nothing loaded at start
        stream = engine.open("slow_to_load", max_latency_ms=200)
        frame = np.zeros((24, 32, 3), np.uint8)
        out = []
        for i in range(120):  # 6 s of 20 fps
            await stream.submit(frame)
            if i == 20:
                assert stream.status == "loading" and engine.loading("slow_to_load")
            while not stream._out.empty():
                out.append(await stream.get())
            await asyncio.sleep(0.05)
        snap = stream.stats.snapshot()
        assert stream.status == "ok" and len(out) > 20, snap
        assert snap.get("lost", 0) == 0 and snap.get("stale", 0) >= 1, snap  # waited out the load: skipped
        assert len(out) <= len(CALLS) <= len(out) + stream.window  # computed: only what came out (or is on its way)


async def test_a_timeout_does_not_run_out_while_the_first_load_lasts() -> None:
    async with Engine("memory://", threads=[SlowToLoad], lazy=True) as engine:
        stream = engine.open("slow_to_load", mode="every", max_in_flight=1)
        await stream.submit(np.zeros((24, 32, 3), np.uint8))
        frame = await stream.get(timeout=1.0)  # the load takes 3 s
        assert frame.error is None and frame.image is not None
        other = engine.open("identity", mode="every", max_in_flight=1)
        with pytest.raises(asyncio.TimeoutError):  # a real stall still times out
            await other.get(timeout=0.2)


@tensor_thread(name="cannot_load")
class CannotLoad:
    def setup(self) -> None:
        raise RuntimeError("no weights here")

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return frame


async def test_a_model_that_cannot_load_flags_its_frames_lazily_and_stops_an_eager_start() -> None:
    async with Engine("memory://", threads=[CannotLoad], lazy=True) as engine:
        stream = engine.open("cannot_load", mode="every", max_in_flight=1)
        await stream.submit(np.zeros((8, 8, 3), np.uint8))
        frame = await stream.get(timeout=30)
        assert frame.error == "RuntimeError: no weights here" and not engine.loading("cannot_load")
    with pytest.raises(RuntimeError, match="no weights here"):
        async with Engine("memory://", threads=[CannotLoad]):
            pass
