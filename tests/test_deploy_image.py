"""The container image, and the cluster run from it: deploy/Dockerfile built with podman FROM a Debian base made
here (no registry is reachable), the compose stack (Redis, coturn, 1 gateway, 2 workers) up with podman-compose,
and the k8s manifests played with ``podman kube play``; a WHIP client's frames go through each and come back.

``make test-deploy`` runs these (``make test`` leaves them out: they take minutes). The official redis and coturn
images are stood in for by Debian's packages (tests/deploy/*.Containerfile), tagged with the official names.
What ``kube play`` cannot run (the HPA, KEDA's CRDs, Services, NetworkPolicy) stays validated by test_k8s.py;
what a kubelet does before starting a pod (env from Secrets and ConfigMaps, ``$(VAR)`` in args, the pod IP,
Service names) ``kube_pods`` does here; container ports are left out (kube play would publish them on the host).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from ooblex.cluster.servers import free_port

from .media import moving_picture

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ROOT / "deploy" / "local"
PODMAN = [str(LOCAL / "podman.sh")]
IMAGE = "localhost/ooblex:latest"  # the name the compose file and the manifests use (ooblex:latest)
#: Stand-ins for the official images, under those images' names: (name, Containerfile).
STAND_INS = [("docker.io/library/redis:7", "redis.Containerfile"),
             ("docker.io/coturn/coturn:4.6", "coturn.Containerfile")]
FRAMES = 40

pytestmark = [pytest.mark.deploy, pytest.mark.timeout(1200)]


def podman(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {res.stderr[-3000:]}")
    return res


def logs(container: str) -> str:
    res = podman("logs", container, check=False)
    return (res.stdout + res.stderr)[-3000:]


@pytest.fixture(scope="module")
def image() -> str:
    missing = [t for t in ("podman", "runc", "debootstrap") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make test-deploy installs them)")
    subprocess.run(["bash", str(LOCAL / "base-image.sh")], check=True, timeout=900)
    subprocess.run(["bash", str(LOCAL / "build-image.sh"), IMAGE], check=True, timeout=1200)
    for name, containerfile in STAND_INS:
        if podman("image", "exists", name, check=False).returncode != 0:
            podman("build", "--network=host", "-f", str(ROOT / "tests" / "deploy" / containerfile), "-t", name,
                   str(ROOT / "tests" / "deploy"), timeout=900)
    return IMAGE


def test_the_image_runs_as_a_user_with_libvpx_the_extras_and_a_healthcheck(image: str) -> None:
    code = ("import json, os, asyncio, aiortc, redis, aio_pika, cv2\n"
            "from ooblex.webrtc import internals, vp8\n"
            "print(json.dumps({'uid': os.getuid(), 'libvpx': vp8.libvpx() is not None,"
            " 'missing': asyncio.run(internals.missing())}))")
    res = podman("run", "--rm", "--entrypoint", "python3", image, "-c", code)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"uid": 10001, "libvpx": True, "missing": []}
    assert podman("run", "--rm", image, "--version").stdout.startswith("ooblex ")
    health = json.loads(podman("image", "inspect", image, "--format", "{{json .Config.Healthcheck}}").stdout)
    assert "/healthz" in " ".join(health["Test"])
    size = int(podman("image", "inspect", image, "--format", "{{.Size}}").stdout)
    print(f"image size: {size / 1e6:.0f} MB")
    assert size < 800e6, "docs/deploy.md records 648 MB: what grew?"


def test_the_image_serves_ooblex_up(image: str) -> None:
    """``ooblex up`` in one container: its own redis-server, a worker and a gateway, healthy by the image's check."""
    name = f"ooblex-up-{os.getpid()}"
    podman("run", "-d", "--name", name, image, "up", "--workers", "1")
    try:
        deadline = time.monotonic() + 120
        while podman("healthcheck", "run", name, check=False).returncode != 0:
            state = podman("inspect", name, "--format", "{{.State.Status}}").stdout.strip()
            assert state == "running" and time.monotonic() < deadline, logs(name)
            time.sleep(2)
    finally:
        podman("rm", "-f", "-t", "3", name, check=False)


async def stream_through(gateway: str, redis_url: str) -> int:
    """Deploy a relay thread to the cluster's workers, stream to it over WHIP; the frame numbers that came back."""
    import ooblex as ob
    from ooblex.tokens import mint
    from ooblex.webrtc import framecode
    from ooblex.webrtc.client import ImageTrack, WhipClient

    @ob.tensor_thread(name="relay")
    def relay(frame: np.ndarray) -> np.ndarray:
        return frame.copy()

    ob.deploy(relay, cluster=redis_url, wait=60)
    track = ImageTrack(moving_picture(320, 240), fps=30)
    async with WhipClient(gateway + "/whip/relay", track, token=mint("publish", thread="relay"),
                          ice_servers=[]) as client:
        await client.wait_connected()
        numbers: list[int] = []
        deadline = time.monotonic() + 60
        while len(numbers) < FRAMES and time.monotonic() < deadline:
            frame = await asyncio.wait_for(client.remote.recv(), 30)
            n = framecode.read(frame.to_ndarray(format="rgb24"))
            if n is not None:
                numbers.append(n)
    assert len(numbers) == FRAMES and numbers == sorted(numbers)
    return len(numbers)


def processed(redis_url: str) -> dict[str, int]:
    """Frames of the relay thread each worker reports (its heartbeat record)."""
    from ooblex.cluster.registry import Registry

    return {r["id"]: r["threads"].get("relay", {}).get("processed", 0) for r in Registry(redis_url).records("worker")}


async def wait_healthy(url: str, timeout: float = 120) -> dict[str, Any]:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as http:
        while True:
            try:
                res = await http.get(url + "/healthz", timeout=3)
                if res.status_code == 200:
                    return res.json()
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"{url}/healthz did not answer in {timeout} s"
            await asyncio.sleep(1)


@pytest.fixture
def compose(image: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    compose = shutil.which("podman-compose") or str(Path(sys.executable).parent / "podman-compose")
    if not Path(compose).exists():
        pytest.skip("needs podman-compose (make test-deploy installs it)")
    project = f"ooblextest{os.getpid()}"
    env = {"OOBLEX_SECRET": secrets.token_hex(32), "OOBLEX_REDIS_PASSWORD": secrets.token_hex(24),
           "OOBLEX_TURN_SECRET": secrets.token_hex(24), "OOBLEX_PUBLIC_HOST": "127.0.0.1", "OOBLEX_IMAGE": image,
           "OOBLEX_PORT": str(free_port()), "OOBLEX_REDIS_PORT": str(free_port()),
           "OOBLEX_TURN_PORT": str(free_port())}
    monkeypatch.setenv("OOBLEX_SECRET", env["OOBLEX_SECRET"])  # the deployer signs with the cluster's secret
    cmd = [compose, "--podman-path", PODMAN[0], "-p", project, "-f", str(ROOT / "deploy" / "docker-compose.yml")]
    subprocess.run([*cmd, "up", "-d", "--scale", "worker=2"], env={**os.environ, **env}, check=True, timeout=300,
                   capture_output=True)
    try:
        yield {**env, "project": project}
    finally:  # by label: podman-compose down forgets scaled replicas
        ids = podman("ps", "-a", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        if ids:
            podman("rm", "-f", "-t", "3", *ids, check=False)
        podman("pod", "rm", "-f", f"pod_{project}", check=False)
        podman("network", "rm", "-f", f"{project}_default", check=False)
        vols = podman("volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={project}").stdout.split()
        if vols:
            podman("volume", "rm", "-f", *vols, check=False)


async def test_the_compose_stack_streams_webrtc_through_two_workers(compose: dict[str, str]) -> None:
    gateway = f"http://127.0.0.1:{compose['OOBLEX_PORT']}"
    redis_url = f"redis://:{compose['OOBLEX_REDIS_PASSWORD']}@127.0.0.1:{compose['OOBLEX_REDIS_PORT']}/0"
    health = await wait_healthy(gateway)
    assert health["broker"].startswith("redis://")
    await stream_through(gateway, redis_url)
    await asyncio.sleep(2)  # a worker heartbeat
    counts = processed(redis_url)
    assert len(counts) == 2 and sum(counts.values()) >= FRAMES, counts
    names = podman("ps", "--filter", f"label=io.podman.compose.project={compose['project']}",
                   "--format", "{{.Names}}").stdout.split()
    gw = next(n for n in names if "gateway" in n)
    assert podman("healthcheck", "run", gw, check=False).returncode == 0, "the image's HEALTHCHECK fails"


# --- k8s: deploy/k8s with podman kube play ---------------------------------------------------------------------

VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def kube_pods(docs: list[dict[str, Any]], replace: dict[str, dict[str, str]], image: str) -> list[dict[str, Any]]:
    """The manifests' workloads as Pods ``kube play`` runs as a kubelet would: env from Secrets/ConfigMaps and
    ``$(VAR)``s resolved, the pod IP as the pod's name (it resolves on the podman network), a workload a Service
    selects named after that Service (its DNS name), volume claim templates as empty dirs. ``replace``: the
    Secrets' and ConfigMaps' values the manifests say to replace before applying."""
    data = {(d["kind"], d["metadata"]["name"]): {**d.get("stringData", d.get("data", {})),
                                                 **replace.get(d["metadata"]["name"], {})}
            for d in docs if d["kind"] in ("Secret", "ConfigMap")}
    services = {d["metadata"]["name"]: d["spec"]["selector"] for d in docs if d["kind"] == "Service"}
    pods = []
    for d in docs:
        if d["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = d["spec"]["template"]["spec"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        service = next((s for s, sel in services.items() if sel.items() <= labels.items()), None)
        n = d["spec"].get("replicas", 1)
        names = [service] if n == 1 and service else [f"{d['metadata']['name']}-{i}" for i in range(n)]
        for name in names:
            containers = [_container(c, data, name, image) for c in spec["containers"]]
            volumes = list(spec.get("volumes", [])) + [{"name": t["metadata"]["name"], "emptyDir": {}}
                                                       for t in d["spec"].get("volumeClaimTemplates", [])]
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                         "spec": {"containers": containers, "volumes": volumes}})
    return pods


def _container(c: dict[str, Any], data: dict[tuple[str, str], dict[str, str]], pod: str, image: str) -> dict[str, Any]:
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        ref = src.get("secretRef") or src.get("configMapRef")
        env.update(data[("Secret" if "secretRef" in src else "ConfigMap", ref["name"])])
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = VAR.sub(lambda m: env.get(m[1], m[0]), e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = data[("Secret", ref["name"])][ref["key"]]
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", e
            env[e["name"]] = pod
    # ports: kube play would publish each on the host (two gateways: a conflict); pods reach pods by address
    out = {k: v for k, v in c.items() if k not in ("env", "envFrom", "ports", "readinessProbe", "livenessProbe")}
    out["image"] = image if c["image"] == "ooblex:latest" else c["image"]
    out["env"] = [{"name": k, "value": v} for k, v in env.items()]
    out["args"] = [VAR.sub(lambda m: env.get(m[1], m[0]), a) for a in c.get("args", [])]
    return out


@pytest.fixture
def kube(image: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    k8s = ROOT / "deploy" / "k8s"
    files = yaml.safe_load((k8s / "kustomization.yaml").read_text())["resources"]
    docs = [d for f in files for d in yaml.safe_load_all((k8s / f).read_text()) if d]
    values = {"ooblex": {"OOBLEX_SECRET": secrets.token_hex(32), "REDIS_PASSWORD": secrets.token_hex(24)},
              "ooblex-turn": {"TURN_SECRET": secrets.token_hex(24)}}
    monkeypatch.setenv("OOBLEX_SECRET", values["ooblex"]["OOBLEX_SECRET"])
    play = tmp_path / "pods.yaml"
    play.write_text(yaml.safe_dump_all(kube_pods(docs, values, image)))
    network = f"ooblexk8s{os.getpid()}"
    # inside coturn.yaml's GATEWAY_PEERS range (the pod network it may relay to)
    podman("network", "create", "--subnet", "10.244.77.0/24", network)
    try:
        podman("kube", "play", "--network", network, str(play), timeout=300)
        yield {"network": network, **values["ooblex"]}
    finally:
        podman("kube", "down", str(play), check=False)
        podman("network", "rm", "-f", network, check=False)


def pod_ip(pod: str, network: str) -> str:
    infra = podman("pod", "inspect", pod, "--format", "{{.InfraContainerID}}").stdout.strip()
    return podman("inspect", infra, "--format", f'{{{{(index .NetworkSettings.Networks "{network}").IPAddress}}}}'
                  ).stdout.strip()


async def test_the_k8s_manifests_run_with_podman_kube_play(kube: dict[str, str]) -> None:
    running = podman("pod", "ps", "--format", "{{.Name}} {{.Status}}").stdout
    for pod in ("redis", "coturn", "ooblex-gateway-0", "ooblex-gateway-1", "ooblex-worker-0", "ooblex-worker-1"):
        assert re.search(rf"^{pod} Running$", running, re.M), running
    gateways = [f"http://{pod_ip(f'ooblex-gateway-{i}', kube['network'])}:8800" for i in range(2)]
    redis_url = f"redis://:{kube['REDIS_PASSWORD']}@{pod_ip('redis', kube['network'])}:6379/0"
    for gw in gateways:
        assert (await wait_healthy(gw))["broker"].startswith("redis://")
    await stream_through(gateways[1], redis_url)
    await asyncio.sleep(2)  # a worker heartbeat
    counts = processed(redis_url)
    assert len(counts) == 2 and sum(counts.values()) >= FRAMES, counts


def test_kube_pods_resolve_env_and_args_as_a_kubelet_does() -> None:
    docs = [d for f in (ROOT / "deploy" / "k8s").glob("*.yaml") if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d]
    values = {"ooblex": {"OOBLEX_SECRET": "s1", "REDIS_PASSWORD": "p2"}, "ooblex-turn": {"TURN_SECRET": "t3"}}
    pods = {p["metadata"]["name"]: p for p in kube_pods(docs, values, IMAGE)}
    assert set(pods) == {"redis", "coturn", "ooblex-gateway-0", "ooblex-gateway-1", "ooblex-worker-0",
                         "ooblex-worker-1"}
    assert pods["redis"]["spec"]["containers"][0]["args"][-2:] == ["--requirepass", "p2"]
    gw = pods["ooblex-gateway-1"]["spec"]["containers"][0]
    assert gw["image"] == IMAGE and "http://ooblex-gateway-1:8800" in gw["args"]
    env = {e["name"]: e["value"] for e in gw["env"]}
    assert env["OOBLEX_BROKER"] == "redis://:p2@redis:6379/0" and env["OOBLEX_SECRET"] == "s1"
    assert "--static-auth-secret=t3" in pods["coturn"]["spec"]["containers"][0]["args"]
    text = yaml.safe_dump_all(list(pods.values()))
    assert "change-me" not in text and "$(" not in text
