"""``deploy/k8s`` against the Kubernetes schemas (offline: ``kubernetes-validate`` ships them), and what
schemas cannot see: every file is in a kustomization, every reference resolves, the KEDA triggers name
the queues and consumer group the brokers really use, and the gateway has what WebRTC needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ooblex.broker import rabbitmq, redis

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (dev extra)")
#: Custom resources (no schema in kubernetes-validate) and the trigger metadata KEDA documents for each type.
KEDA = {"redis-streams": {"address", "host", "port", "stream", "consumerGroup", "pendingEntriesCount",
                          "streamLength", "lagCount", "activationLagCount", "databaseIndex", "enableTLS"},
        "rabbitmq": {"protocol", "queueName", "mode", "value", "activationValue", "vhostName", "host"},
        "cpu": {"value", "type", "containerName"}}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def manifests() -> list[Path]:
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in manifests() for d in documents(p)}


@pytest.mark.parametrize("path", manifests(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for doc in documents(path):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # custom resources: checked below
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_every_manifest_is_in_a_kustomization_and_every_entry_exists() -> None:
    listed = set()
    for k in K8S.rglob("kustomization.yaml"):
        for entry in documents(k)[0]["resources"]:
            target = (k.parent / entry).resolve()
            assert target.exists(), f"{k} lists {entry}, which does not exist"
            listed.add(target)
    optional = {K8S / "keda" / "scaledobject-rabbitmq.yaml"}  # for a RabbitMQ broker (documented in the file)
    assert {p.resolve() for p in manifests()} - listed == {p.resolve() for p in optional}


def test_keda_triggers_name_the_real_queues() -> None:
    objs = objects()
    for path in (K8S / "keda").glob("*.yaml"):
        for doc in documents(path):
            if doc["kind"] != "ScaledObject":
                continue
            spec = doc["spec"]
            assert ("Deployment", spec["scaleTargetRef"]["name"]) in objs
            assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
            for trigger in spec["triggers"]:
                meta = trigger["metadata"]
                assert set(meta) <= KEDA[trigger["type"]], f"unknown {trigger['type']} metadata: {set(meta)}"
                if "authenticationRef" in trigger:
                    auth = objs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
                    for ref in auth["spec"]["secretTargetRef"]:
                        secret = objs.get(("Secret", ref["name"]))
                        assert secret is not None
                        if path.name == "scaledobject.yaml":
                            assert ref["key"] in secret["stringData"], ref
                if trigger["type"] == "redis-streams":
                    assert meta["consumerGroup"] == redis.GROUP
                    assert meta["stream"] in (redis.task_key("identity", True), redis.task_key("identity", False))
                    assert meta["address"].split(":")[0] == "redis" and objs[("Service", "redis")]
                if trigger["type"] == "rabbitmq":
                    assert meta["queueName"] in (rabbitmq.live_queue("identity"), rabbitmq.job_queue("identity"))
                if trigger["type"] == "cpu":
                    worker = objs[("Deployment", spec["scaleTargetRef"]["name"])]
                    assert worker["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


def test_gateways_have_what_a_cluster_of_webrtc_gateways_needs() -> None:
    objs = objects()
    pod = objs[("Deployment", "ooblex-gateway")]["spec"]["template"]["spec"]
    gw = pod["containers"][0]
    args = " ".join(gw["args"])
    assert "--peer-url http://$(POD_IP):8800" in args and "--public-url" in args
    env = {e["name"]: e for e in gw["env"]}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "turn:" in env["OOBLEX_TURN_URLS"]["value"], "media reaches gateways through TURN"
    assert env["OOBLEX_TURN_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "ooblex-turn"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/healthz"
    targs = " ".join(objs[("Deployment", "coturn")]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "--min-port=" in targs and "--max-port=" in targs and "--use-auth-secret" in targs
    config = objs[("ConfigMap", "ooblex-config")]["data"]
    for name in ("OOBLEX_PUBLIC_URL", "OOBLEX_ALLOWED_HOSTS", "OOBLEX_TRUSTED_PROXIES"):
        assert name in config
    secret = objs[("Secret", "ooblex")]["stringData"]
    for name in ("OOBLEX_SECRET", "REDIS_PASSWORD"):
        assert name in secret
    assert "TURN_SECRET" in objs[("Secret", "ooblex-turn")]["stringData"]
    assert objs[("HorizontalPodAutoscaler", "ooblex-gateway")]["spec"]["scaleTargetRef"]["name"] == "ooblex-gateway"
