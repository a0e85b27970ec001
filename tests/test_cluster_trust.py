"""Cluster trust: each attack by someone who can write to the store is a test, against a real
redis-server and real workers. (The Jupyter extension's side is in test_server_ext.py, ``ooblex
up``'s passwords in test_up.py.)"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time

import numpy as np
import pytest

import ooblex as ob
from ooblex.cluster.config import resolve
from ooblex.cluster.deploy import announce_gateway, thread_status
from ooblex.cluster.engine import ClusterEngine
from ooblex.cluster.node import WorkerNode
from ooblex.cluster.registry import Registry, seal_record, verified
from ooblex.cluster.signing import ARTIFACT, RECORD, STATE, SignatureError, canonical, sign, verify
from ooblex.cluster.state import ThreadState
from ooblex.cluster.up import store_server

from .cluster_fixtures import SECRET, needs_redis, redis_server, start_worker, stop, wait_for  # noqa: F401

pytestmark = [pytest.mark.timeout(120), needs_redis]
OTHER = b"another-secret-" + b"y" * 20
REV = "ooblex:reg:rev"


@ob.tensor_thread(name="trusty")
def trusty(frame: np.ndarray) -> np.ndarray:
    return frame


@ob.tensor_thread(name="trusty")
def trusty2(frame: np.ndarray) -> tuple[np.ndarray, dict]:
    return frame, {"v": 2}


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OOBLEX_SECRET", SECRET)


def test_each_purpose_signs_with_its_own_derived_key() -> None:
    """An artifact signature never passes as a state or a record, nor one made with the raw secret."""
    secret, doc = SECRET.encode(), {"name": "x", "version": 1}
    purposes = {ARTIFACT, STATE, RECORD}
    for purpose in purposes:
        signed = sign(doc, secret, purpose)
        verify(signed, secret, purpose)
        for other in purposes - {purpose}:
            with pytest.raises(SignatureError, match="bad signature"):
                verify(signed, secret, other)
    raw = {**doc, "signature": hmac.new(secret, canonical(doc), hashlib.sha256).hexdigest()}
    with pytest.raises(SignatureError, match="bad signature"):
        verify(raw, secret, ARTIFACT)


def unsigned(state: ThreadState) -> dict:
    """A well-formed state document without a signature (what anyone can write)."""
    return {k: v for k, v in state.signed(b"x").items() if k != "signature"}


def plant(reg: Registry, kind: str, ident: str, doc: object) -> None:
    """What an attacker with write access does: store a record and list it as live for a minute."""
    reg.r.set(f"ooblex:{kind}:{ident}", json.dumps(doc))
    reg.r.zadd(f"ooblex:{kind}s", {ident: time.time() + 60})


def test_only_signed_live_records_under_their_own_key_are_read(redis_server, caplog, monkeypatch) -> None:  # noqa: F811, ANN001
    url = redis_server.url
    reg = Registry(url)
    try:
        announce_gateway(reg, "gw-real", "http://real.test:8800")
        real = json.loads(reg.r.get("ooblex:gateway:gw-real"))
        evil = "http://evil.test:8800"
        plant(reg, "gateway", "gw-unsigned", {"id": "gw-unsigned", "url": evil, "routes": {}})
        plant(reg, "gateway", "gw-forged", seal_record({"url": evil}, "gateway", "gw-forged", 60, OTHER))
        plant(reg, "gateway", "gw-moved", real)  # a genuine record under another id
        plant(reg, "gateway", "gw-worker", seal_record({"url": evil}, "worker", "gw-worker", 60, SECRET.encode()))
        plant(reg, "gateway", "gw-old", seal_record({"url": evil}, "gateway", "gw-old", -1, SECRET.encode()))
        with caplog.at_level(logging.WARNING, "ooblex.cluster"):
            for _ in range(2):
                assert [g["url"] for g in reg.records("gateway")] == ["http://real.test:8800"]
        logged = [r.getMessage() for r in caplog.records if "ignoring a gateway record" in r.getMessage()]
        assert len(logged) == 5, logged  # each refusal once, though read twice
        text = " | ".join(logged)
        for reason in ("unsigned", "bad signature", "signed as gateway 'gw-real'", "signed as worker",
                       "expired (an old record replayed)"):
            assert reason in text, reason
        dep = ob.deploy(trusty, cluster=url)
        assert [g["whip"] for g in dep.urls["gateways"]] == ["http://real.test:8800/whip/trusty"]
        monkeypatch.delenv("OOBLEX_SECRET")
        assert Registry(url).records("gateway") == [], "without the secret no record can be trusted"
    finally:
        reg.close()


def test_undeploy_and_rollback_need_the_secret(redis_server, monkeypatch) -> None:  # noqa: F811, ANN001
    url = redis_server.url
    ob.deploy(trusty, cluster=url)
    v2 = ob.deploy(trusty2, cluster=url)
    monkeypatch.delenv("OOBLEX_SECRET")
    with pytest.raises(PermissionError, match="cannot activate trusty@1: .*OOBLEX_SECRET"):
        v2.rollback()
    with pytest.raises(PermissionError, match="cannot undeploy 'trusty': .*OOBLEX_SECRET"):
        ob.undeploy("trusty", cluster=url)
    assert ob.deployment("trusty", url, secret=SECRET).version == v2.version, "nothing changed"


def test_a_reader_ignores_forged_moved_replayed_and_deleted_states(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    reader = Registry(url)  # long-lived, like a worker's or a gateway's
    key = "ooblex:reg:trusty:state"
    try:
        ob.deploy(trusty, cluster=url)
        v2 = ob.deploy(trusty2, cluster=url, keep_versions=True)
        assert reader.serving()["trusty"]["active"] == 2
        before_rollback = reader.r.get(key)
        v2.rollback()
        assert reader.serving()["trusty"]["active"] == 1
        ob.deploy(trusty, cluster=url)
        ob.undeploy("trusty", cluster=url)  # leaves a genuine tombstone for "trusty"
        assert "trusty" not in reader.serving()
        ob.deploy(trusty, cluster=url)
        ob.deploy(trusty2, cluster=url, keep_versions=True)
        ob.deployment("trusty", url).rollback()
        assert reader.serving()["trusty"]["active"] == 4
        decoy = ThreadState("decoy", 2**60, active=5, serving={5: "x"}).signed(SECRET.encode())
        attacks = {
            "unsigned rollback": unsigned(ThreadState("trusty", 2**60, active=5, serving={5: "x"})),
            "forged rollback": ThreadState("trusty", 2**60, active=5, serving={5: "x"}).signed(OTHER),
            "forged undeploy": ThreadState("trusty", 2**60, removed=True).signed(OTHER),
            "another thread's state": decoy,
            "replayed older state": json.loads(before_rollback),
        }
        for what, doc in attacks.items():
            reader.r.set(key, json.dumps(doc))
            reader.r.incr(REV)
            assert reader.serving()["trusty"]["active"] == 4, what
            assert reader.serving()["trusty"]["active"] == 4, what
        reader.r.delete(key, "ooblex:reg:trusty")
        reader.r.srem("ooblex:reg:names", "trusty")
        left = reader.serving()["trusty"]
        assert (left["active"], left["versions"]) == (4, {4: None, 5: None}), \
            "deleting keys is no undeploy: the last verified state stands (manifests gone: loaders keep what they hold)"
        assert "trusty" not in Registry(url).serving(), "a new reader trusts only what it can verify"
    finally:
        reader.close()


def test_a_signed_manifest_of_an_earlier_deploy_cannot_replace_the_one_the_state_names(redis_server) -> None:  # noqa: F811
    """Reset the version counter, let the deployer reuse version 1, then swap in the old (validly
    signed) manifest of the first deploy: the state pins each manifest by its signature."""
    url = redis_server.url
    reg = Registry(url)
    try:
        first = ob.deploy(trusty, cluster=url)
        ob.undeploy("trusty", cluster=url)
        reg.r.set("ooblex:reg:trusty:seq", 0)
        second = ob.deploy(trusty2, cluster=url)
        assert second.version == first.version == 1
        reg.r.hset("ooblex:reg:trusty", "1", json.dumps(first.manifest))
        entry = Registry(url).serving()["trusty"]
        with pytest.raises(SignatureError, match="not the manifest the thread's state names"):
            verified(entry["versions"][1], SECRET.encode(), "trusty", 1, entry["signatures"][1])
        assert verified(second.manifest, SECRET.encode(), "trusty", 1, entry["signatures"][1])
    finally:
        reg.close()


async def test_without_the_secret_nothing_deployed_is_offered_or_written(redis_server, monkeypatch) -> None:  # noqa: F811, ANN001
    url = redis_server.url
    ob.deploy(trusty, cluster=url)
    assert "***" in repr(resolve("redis://:pw@h:1/0")) and "pw" not in repr(resolve("redis://:pw@h:1/0"))
    monkeypatch.delenv("OOBLEX_SECRET")
    async with ClusterEngine(url) as engine:
        await engine.sync()
        assert "trusty" not in engine.threads and "trusty@1" not in engine.threads
    with pytest.raises(PermissionError, match="cannot publish the worker record 'w1': .*OOBLEX_SECRET"):
        Registry(url).put_record("worker", "w1", {"id": "w1"}, 3)
    with pytest.raises(PermissionError, match="OOBLEX_SECRET"):
        ob.deployment("trusty", url)


def settled(reg: Registry, after: float, timeout: float = 20.0) -> dict:
    """The worker's record once it has certainly synced after time ``after``: the second record
    written after ``after`` (each loop syncs, then may write a record)."""
    deadline = time.monotonic() + timeout
    seen = after
    for _ in range(2):
        while True:
            recs = reg.records("worker")
            if recs and recs[0]["heartbeat"] > seen:
                seen = recs[0]["heartbeat"]
                break
            assert time.monotonic() < deadline, "no fresh worker record"
            time.sleep(0.1)
    return recs[0]


def plain(reg: Registry) -> int | None:
    """The version the worker serves under the plain name ``trusty`` (None: not served)."""
    t = settled(reg, time.time())["threads"].get("trusty")
    return t and t["version"]


def test_a_worker_acts_only_on_signed_newer_states(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    key = "ooblex:reg:trusty:state"
    worker = start_worker(url)
    reg = Registry(url)
    try:
        ob.deploy(trusty, cluster=url, wait=20)
        v2 = ob.deploy(trusty2, cluster=url, keep_versions=True, wait=20)
        assert plain(reg) == 2
        before_rollback = reg.r.get(key)
        for doc in (unsigned(ThreadState("trusty", 2**60, active=1, serving={1: "x", 2: "y"})),
                    ThreadState("trusty", 2**60, active=1, serving={1: "x", 2: "y"}).signed(OTHER),
                    ThreadState("trusty", 2**60, removed=True).signed(OTHER)):
            reg.r.set(key, json.dumps(doc))
            reg.r.incr(REV)
            assert plain(reg) == 2, doc
        v2.rollback()  # signed: acted on
        assert plain(reg) == 1
        reg.r.set(key, before_rollback)  # replayed: ignored
        reg.r.incr(REV)
        assert plain(reg) == 1
        current, manifests = reg.r.get(key), reg.r.hgetall("ooblex:reg:trusty")
        reg.r.delete(key, "ooblex:reg:trusty")  # how an undeploy looked before states were signed
        reg.r.srem("ooblex:reg:names", "trusty")
        reg.r.incr(REV)
        assert plain(reg) == 1
        reg.r.set(key, current)
        reg.r.hset("ooblex:reg:trusty", mapping=manifests)
        before_undeploy = reg.r.get(key)
        ob.undeploy("trusty", cluster=url)
        assert plain(reg) is None
        reg.r.set(key, before_undeploy)
        reg.r.incr(REV)
        rec = settled(reg, time.time())
        assert not [q for q in rec["threads"] if q.startswith("trusty")], "a replayed state does not undo an undeploy"
    finally:
        reg.close()
        stop(worker)


async def test_a_manifest_stored_under_another_version_or_name_is_refused(redis_server) -> None:  # noqa: F811
    url = redis_server.url
    worker = start_worker(url)
    reg = Registry(url)
    try:
        v1 = ob.deploy(trusty, cluster=url, wait=20)
        v2 = ob.deploy(trusty2, cluster=url, keep_versions=True, wait=20)

        @ob.tensor_thread(name="decoy")
        def decoy(frame: np.ndarray) -> np.ndarray:
            return frame

        ob.deploy(decoy, cluster=url, wait=20)
        reg.r.hset("ooblex:reg:trusty", str(v2.version), json.dumps(v1.manifest))  # old code as the new version
        reg.r.hset("ooblex:reg:decoy", "1", json.dumps(v1.manifest))
        reg.r.incr(REV)
        refused = await wait_for(lambda: len(v2.status()["refused"]) == 1 and v2.status()["refused"],
                                 what="refusal of trusty@2")
        assert "refusing artifact trusty@2: it is signed as trusty@1 (copied under another name or version)" in \
            next(iter(refused.values()))
        assert v2.status()["serving"] == 0
        assert "signed as trusty@1" in next(iter(thread_status(reg, "decoy")["refused"].values()))
        async with ClusterEngine(url) as engine:
            await wait_for(lambda: "trusty@1" in engine.threads, what="trusty@1 offered")
            assert "trusty@2" not in engine.threads and "decoy" not in engine.threads
    finally:
        reg.close()
        stop(worker)


def test_the_back_off_doubles_up_to_its_limit() -> None:
    node = WorkerNode("redis://unused", "redis://unused", retry_s=0.5, retry_max_s=3.0)
    assert [node.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


async def test_a_refused_version_is_retried_after_a_back_off_and_when_it_changes(redis_server, tmp_path) -> None:  # noqa: F811, ANN001
    url = redis_server.url
    reg = Registry(url)
    dep = ob.deploy(trusty, cluster=url)
    blob = f"ooblex:blob:{dep.manifest['code']}"
    code = reg.get_blob(dep.manifest["code"])
    reg.r.delete(blob)  # the code is missing: refused until it is back
    node = WorkerNode(url, url, cache=tmp_path, heartbeat_s=0.2, retry_s=0.2, retry_max_s=0.8)
    stop_node = asyncio.Event()
    task = asyncio.create_task(node.run(stop_node))

    def refusal(min_attempts: int) -> dict | None:
        recs = reg.records("worker")
        entry = recs[0]["refused"].get("trusty@1") if recs else None
        return entry and entry["attempts"] >= min_attempts and {**entry, "heartbeat": recs[0]["heartbeat"]}

    try:
        entry = await wait_for(lambda: refusal(3), what="three attempts")
        assert "missing from the store" in entry["reason"]
        assert entry["heartbeat"] < entry["retry_at"] < entry["heartbeat"] + 0.85, "when it is tried next"
        rev = reg.rev()
        reg.put_blob(code)  # fixed without any change to the manifest or the registry
        await wait_for(lambda: "trusty" in node.queues, what="served after the back-off")
        assert reg.rev() == rev and node.refused == {}
        node.retry_s = node.retry_max_s = 600.0  # from now on only a change brings a retry
        signed = reg.r.hget("ooblex:reg:trusty", "1")
        reg.r.hset("ooblex:reg:trusty", "1", json.dumps({**dep.manifest, "requirements": ["evil"]}))
        reg.r.incr(REV)
        await wait_for(lambda: "trusty" not in node.queues and refusal(1), what="tampered manifest refused")
        reg.r.hset("ooblex:reg:trusty", "1", signed)
        reg.r.incr(REV)
        await wait_for(lambda: "trusty" in node.queues, what="served again once the manifest is restored")
    finally:
        stop_node.set()
        await task
        reg.close()


def test_the_registry_survives_a_store_restart() -> None:
    """``ooblex up``'s Redis: a password and an append-only file."""
    store = store_server().start()
    try:
        ob.deploy(trusty, cluster=store.url)
        ob.deploy(trusty2, cluster=store.url).rollback()
        store.restart()
        dep = ob.deployment("trusty", store.url)
        assert dep.version == 1 and dep.manifest["version"] == 1
        assert Registry(store.url).serving()["trusty"]["active"] == 1
    finally:
        store.cleanup()
