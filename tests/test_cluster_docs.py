"""docs/cluster.md examples run as written against a real Redis and a worker process;
the deploy manifests are valid YAML naming the commands this package has."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ooblex.cli import build_parser

from .cluster_fixtures import SECRET, needs_redis, redis_server, start_worker, stop  # noqa: F401
from .docs import code_blocks

ROOT = Path(__file__).resolve().parents[1]


@needs_redis
@pytest.mark.timeout(120)
def test_cluster_doc_examples_run(redis_server, monkeypatch, capsys) -> None:  # noqa: F811, ANN001
    monkeypatch.setenv("OOBLEX_BROKER", redis_server.url)
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)
    worker = start_worker(redis_server.url)
    try:
        blocks = code_blocks("cluster.md")
        assert len(blocks) == 4
        namespace: dict = {}
        for block in blocks:
            exec(compile(block, "docs/cluster.md", "exec"), namespace)  # noqa: S102 - our own documentation
    finally:
        stop(worker)
    out = capsys.readouterr().out
    assert "<Deployment blur_faces@1" in out and " 1\n" in out
    assert "12 0" in out
    assert "0 (120, 160, 3) ok" in out
    assert "2 -> 1" in out


def test_deploy_manifests_parse_and_use_real_commands() -> None:
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    assert compose["services"]["worker"]["command"][0] in commands
    docs = [d for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "StatefulSet", "Service", "Secret", "Kustomization"} <= kinds
    worker = next(d for d in docs if d.get("metadata", {}).get("name") == "ooblex-worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"][0] in commands


def test_deploy_manifests_guard_the_store_with_a_password() -> None:
    """Redis requires a password (from the environment or the Secret) and every store URL carries it."""
    compose = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())
    redis = compose["services"]["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1].startswith("${OOBLEX_REDIS_PASSWORD:?")
    assert redis[redis.index("--appendonly") + 1] == "yes"
    for key in ("OOBLEX_BROKER", "OOBLEX_STORE"):
        assert "redis://:${OOBLEX_REDIS_PASSWORD" in compose["x-ooblex-env"][key], key
    assert compose["services"]["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_USER"] != "guest"
    docs = [d for f in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs if "metadata" in d}
    assert "REDIS_PASSWORD" in named["Secret", "ooblex"]["stringData"]
    redis_args = named["StatefulSet", "redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert redis_args[redis_args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    for name in ("ooblex-gateway", "ooblex-worker"):
        container = named["Deployment", name]["spec"]["template"]["spec"]["containers"][0]
        assert {"secretRef": {"name": "ooblex"}} in container["envFrom"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["OOBLEX_STORE"] == env["OOBLEX_BROKER"] == "redis://:$(REDIS_PASSWORD)@redis:6379/0", name
