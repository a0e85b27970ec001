"""Prometheus metrics of a real gateway and a real ``ooblex worker``, the Grafana dashboard that reads them,
and JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from ooblex import jpeg, logs, tensor_thread
from ooblex.cluster.engine import ClusterEngine
from ooblex.cluster.servers import free_port
from ooblex.gateway import Settings
from ooblex.gateway.demo import BUILTIN_DEMO_THREADS
from ooblex.metrics import Metrics, serve
from ooblex.tokens import mint

from .cluster_fixtures import ROOT, SECRET, env, needs_redis, redis_server, stop, wait_for  # noqa: F401
from .docs import code_blocks
from .gateway_server import running_gateway

pytestmark = pytest.mark.timeout(90)
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus not installed")
ODD = 'odd\nname "quoted" \\ back'
DASHBOARD = ROOT / "deploy" / "grafana" / "ooblex.json"
IMAGE = jpeg.encode(np.full((48, 64, 3), 90, np.uint8), 90)


@tensor_thread(name=ODD)
def odd(frame: np.ndarray) -> np.ndarray:
    return frame


def families(text: str) -> dict[str, list]:
    """Samples by family name, from a Prometheus text exposition."""
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` that carry ``labels`` (0 when there are none)."""
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and labels.items() <= s.labels.items())


@pytest.fixture(scope="module")
def gw():
    with running_gateway(threads=[*BUILTIN_DEMO_THREADS, odd]) as running:
        yield running


async def ws_frames(gw, thread: str, n: int) -> str:  # noqa: ANN001
    """Send ``n`` frames through a WebSocket stream of ``thread``; its stream id."""
    async with connect(gw.url.replace("http", "ws") + f"/ws/{thread}?output=json") as ws:
        stream_id = json.loads(await ws.recv())["stream_id"]
        for _ in range(n):
            await ws.send(IMAGE)
            await ws.recv()
        return stream_id


async def scrape(url: str, **headers: str) -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        r = await http.get(url, headers=headers)
        assert r.status_code == 200, r.text
        return r.text


async def test_gateway_histograms_and_counters_move_without_stream_ids(gw) -> None:  # noqa: ANN001
    me = {"gateway": gw.state.instance, "thread": "invert"}
    before = await scrape(gw.url + "/metrics")
    stream_id = await ws_frames(gw, "invert", 4)
    after = await scrape(gw.url + "/metrics")
    for name in ("ooblex_frames_received_total", "ooblex_frames_processed_total"):
        assert value(after, name, **me) - value(before, name, **me) == 4, name
    for stage in ("queue", "compute", "return", "engine", "total"):
        name = "ooblex_frame_latency_seconds_count"
        assert value(after, name, stage=stage, **me) - value(before, name, stage=stage, **me) == 4, stage
        top = value(after, "ooblex_frame_latency_seconds_bucket", stage=stage, le="+Inf", **me)
        assert top == value(after, name, stage=stage, **me)
    worker = {"worker": gw.state.instance, "thread": "invert"}  # the embedded worker reports here too
    assert value(after, "ooblex_worker_frames_total", **worker) - value(before, "ooblex_worker_frames_total",
                                                                        **worker) == 4
    assert value(after, "ooblex_worker_latency_seconds_count", stage="compute", **worker) >= 4
    assert value(after, "ooblex_gateway_events_total", gateway=gw.state.instance, kind="ws_frames") >= 1
    assert stream_id not in after
    labels = {k for samples in families(after).values() for s in samples for k in s.labels}
    assert labels <= {"gateway", "worker", "thread", "stage", "le", "reason", "kind", "state", "measure"}, labels


async def test_gauges_follow_open_streams(gw) -> None:  # noqa: ANN001
    me = {"gateway": gw.state.instance, "thread": "edges"}
    async with connect(gw.url.replace("http", "ws") + "/ws/edges") as ws:
        json.loads(await ws.recv())
        assert value(await scrape(gw.url + "/metrics"), "ooblex_streams", **me) == 1
    await wait_for(lambda: not gw.state.engine.streams, 5, "the stream to close")
    text = await scrape(gw.url + "/metrics")
    assert value(text, "ooblex_streams", **me) == 0
    assert value(text, "ooblex_sessions", kind="whip") == 0 and value(text, "ooblex_gateway_scale") == 1


def test_label_values_are_escaped(gw) -> None:  # noqa: ANN001
    r = httpx.post(f"{gw.url}/api/v1/frames/{quote(ODD, safe='')}", content=IMAGE,
                   headers={"Content-Type": "image/jpeg"}, timeout=20)
    assert r.status_code == 200, r.text
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    assert 'thread="odd\\nname \\"quoted\\" \\\\ back"' in text  # one line per sample, the text format's escapes
    assert value(text, "ooblex_frames_processed_total", thread=ODD) == 1  # and parsed back to the name


async def test_per_stream_labels_opt_in_and_go_with_the_stream() -> None:
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=Settings(metrics_stream_labels=True)) as gw:
        async with connect(gw.url.replace("http", "ws") + "/ws/invert?output=json") as ws:
            stream_id = json.loads(await ws.recv())["stream_id"]
            for _ in range(2):
                await ws.send(IMAGE)
                await ws.recv()
            text = await scrape(gw.url + "/metrics")
            assert value(text, "ooblex_frames_processed_total", stream=stream_id, thread="invert") == 2
            assert value(text, "ooblex_frame_latency_seconds_count", stream=stream_id, stage="total") == 2
        await wait_for(lambda: not gw.state.engine.streams, 5, "the stream to close")
        assert stream_id not in await scrape(gw.url + "/metrics"), "a closed stream's series are dropped"


async def test_gateway_metrics_need_a_control_token() -> None:
    settings = Settings(secret=SECRET)
    with running_gateway(threads=BUILTIN_DEMO_THREADS, settings=settings) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(gw.url + "/metrics")).status_code == 401
            view = mint("view", stream="*", secret=SECRET)
            assert (await http.get(gw.url + "/metrics", headers={"authorization": f"Bearer {view}"})).status_code \
                == 403
        control = mint("control", secret=SECRET)
        om = await scrape(gw.url + "/metrics", authorization=f"Bearer {control}",
                          accept="application/openmetrics-text; version=1.0.0")
        assert om.rstrip().endswith("# EOF")  # Prometheus asking for OpenMetrics gets it


def json_worker(broker: str, metrics_port: int) -> subprocess.Popen[str]:
    """``ooblex worker`` with metrics on ``metrics_port`` and JSON logs on a pipe."""
    return subprocess.Popen([sys.executable, "-m", "ooblex", "worker", "--broker", broker, "--metrics-port",
                             str(metrics_port)], env=env(OOBLEX_LOG_FORMAT="json"), cwd=ROOT, stderr=subprocess.PIPE,
                            text=True)


@needs_redis
async def test_worker_serves_metrics_and_logs_json(redis_server) -> None:  # noqa: F811
    port = free_port()
    proc = json_worker(redis_server.url, port)
    url = f"http://127.0.0.1:{port}/metrics"
    control = {"authorization": f"Bearer {mint('control', secret=SECRET)}"}
    try:
        async with ClusterEngine(redis_server.url, secret=SECRET) as engine:
            async def served() -> bool:
                return await engine.broker.consumers("identity") > 0

            await wait_for(served, 30, "identity served")
            stream = engine.open("identity", mode="every", max_in_flight=2)
            for _ in range(5):
                await stream.submit(np.full((48, 64, 3), 7, np.uint8))
                await stream.get(timeout=20)
            await stream.close()
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(url)).status_code == 401  # the cluster has a secret: scrapes need control
            bad = {"authorization": f"Bearer {mint('publish', secret=SECRET)}"}
            assert (await http.get(url, headers=bad)).status_code == 403
        text = await scrape(url, **control)
        me = {"worker": f"{socket.gethostname()}-{proc.pid}", "thread": "identity"}
        assert value(text, "ooblex_worker_frames_total", **me) == 5
        assert value(text, "ooblex_worker_latency_seconds_count", stage="compute", **me) == 5
        assert value(text, "ooblex_worker_batches_total", **me) >= 1
        assert value(text, "ooblex_worker_errors_total", **me) == 0
        assert "ooblex_worker_in_flight" in families(text)
    finally:
        stop(proc)
    records = [json.loads(line) for line in proc.stderr.read().splitlines() if line.strip()]
    assert records and all({"ts", "level", "logger", "msg"} <= r.keys() for r in records)
    assert any(r["logger"] == "ooblex.cli" and f":{port}/metrics" in r["msg"] for r in records)


def test_worker_metrics_stay_on_loopback_without_a_secret() -> None:
    with pytest.raises(PermissionError, match="OOBLEX_SECRET"):
        serve(Metrics("w").registry, "0.0.0.0", free_port(), None)
    server = serve(Metrics("w").registry, "127.0.0.1", 0, None)
    try:
        assert httpx.get(f"http://127.0.0.1:{server.server_port}/metrics").status_code == 200
        with pytest.raises(ValueError, match=f"cannot serve metrics on 127.0.0.1:{server.server_port}"):
            serve(Metrics("w").registry, "127.0.0.1", server.server_port, None)  # taken
    finally:
        server.shutdown()
        server.server_close()


def test_json_logs_carry_extras_and_exceptions() -> None:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    out = io.StringIO()
    try:
        logs.configure(fmt="json")
        root.handlers[0].setStream(out)
        log = logging.getLogger("ooblex.test")
        log.info("frame %d\nlate", 3, extra={"stream": "s1"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        warnings.warn("deprecated thing", UserWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved, level
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "frame 3\nlate" and first["stream"] == "s1" and first["level"] == "INFO"
    assert first["logger"] == "ooblex.test" and time.time() - _epoch(first["ts"]) < 60
    assert second["level"] == "ERROR" and "RuntimeError: boom" in second["exc"]
    assert third["logger"] == "py.warnings" and "deprecated thing" in third["msg"]


def test_a_bad_log_format_is_refused_by_name() -> None:
    r = subprocess.run([sys.executable, "-m", "ooblex", "token", "control"], env=env(OOBLEX_LOG_FORMAT="xml"),
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "OOBLEX_LOG_FORMAT" in r.stderr and not r.stdout


def test_the_prometheus_example_scrapes_gateways_and_workers() -> None:
    (config,) = [yaml.safe_load(block) for block in code_blocks("observability.md", "yaml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"ooblex-gateways", "ooblex-workers"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics" and job["authorization"]["credentials_file"]
        assert job["static_configs"][0]["targets"]


@needs_redis
@needs_prometheus
async def test_one_prometheus_aggregates_a_gateway_and_a_worker(redis_server, tmp_path, monkeypatch) -> None:  # noqa: F811, ANN001
    """The documented scrape config, a real Prometheus, a gateway in front of an ``ooblex worker``: every
    query of the dashboard evaluates, and latency quantiles and worker throughput have data."""
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    worker_port, prom_port = free_port(), free_port()
    worker = json_worker(redis_server.url, worker_port)
    prometheus = None
    try:
        with running_gateway(settings=Settings(secret=SECRET), broker=redis_server.url) as gw:
            token = tmp_path / "token"
            token.write_text(mint("control", secret=SECRET))
            (config,) = [yaml.safe_load(block) for block in code_blocks("observability.md", "yaml")]
            config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
            targets = {"ooblex-gateways": f"127.0.0.1:{gw.port}", "ooblex-workers": f"127.0.0.1:{worker_port}"}
            for job in config["scrape_configs"]:
                job["authorization"]["credentials_file"] = str(token)
                job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
            (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
            prometheus = start_prometheus(tmp_path, prom_port)
            api = f"http://127.0.0.1:{prom_port}/api/v1"
            async with httpx.AsyncClient(timeout=10) as http:
                async def query(expr: str) -> list:
                    resp = (await http.get(f"{api}/query", params={"query": expr})).raise_for_status()
                    body = resp.json()  # (503 while Prometheus starts: an HTTPError, which all_up waits out)
                    assert body["status"] == "success", (expr, body)
                    return body["data"]["result"]

                async def all_up() -> bool:
                    try:
                        return len(await query("up == 1")) == 2
                    except httpx.HTTPError:
                        return False

                await wait_for(all_up, 30, "both targets scraped")
                async with connect(gw.url.replace("http", "ws") + f"/ws/identity?output=json&token="
                                   f"{mint('publish', secret=SECRET)}") as ws:
                    json.loads(await ws.recv())
                    for _ in range(3):
                        for _ in range(5):
                            await ws.send(IMAGE)
                            await ws.recv()
                        await asyncio.sleep(1.1)  # frames across several scrapes: rates have two points
                board = json.loads(DASHBOARD.read_text())
                exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
                p99 = next(e for e in exprs if e.startswith("histogram_quantile(0.99"))
                throughput = next(e for e in exprs if "ooblex_worker_frames_total" in e and "worker)" in e)

                async def latencies() -> dict[str, float]:
                    stages = {r["metric"]["stage"]: float(r["value"][1]) for r in await query(dashboard_expr(p99))
                              if r["metric"]["thread"] == "identity"}
                    return stages if {"queue", "compute", "engine", "total"} <= set(stages) else {}

                by_stage = await wait_for(latencies, 20, "latency quantiles from the last scrapes")
                assert 0 < by_stage["total"] < 5
                results = {e: await query(dashboard_expr(e)) for e in exprs}  # every panel's query evaluates
                assert [r["metric"]["worker"] for r in results[throughput]] == [f"{socket.gethostname()}-{worker.pid}"]
                assert float(results[throughput][0]["value"][1]) > 0
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(worker)


def start_prometheus(folder: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["prometheus", f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dashboard_expr(expr: str) -> str:
    """A panel's query as Grafana sends it with every variable at "All"."""
    for var in ("gateway", "thread", "worker"):
        expr = expr.replace(f"${var}", ".*")
    return expr.replace("$__rate_interval", "30s")


async def test_dashboard_uses_only_exported_metrics(gw) -> None:  # noqa: ANN001
    await ws_frames(gw, "identity", 1)  # every histogram and counter has samples
    exported = {s.name for samples in families(await scrape(gw.url + "/metrics")).values() for s in samples}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    exprs += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    used = {name for e in exprs for name in re.findall(r"\booblex_[a-z_]+\b", e)}
    assert used and used <= exported, used - exported
    quantiles = [e for e in exprs if "histogram_quantile" in e]
    assert quantiles and all("sum by (le" in e.replace("sum by(le", "sum by (le") for e in quantiles)


def _epoch(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp()
