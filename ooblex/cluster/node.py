"""``ooblex worker``: a process that serves deployed tensor threads from a cluster.

It watches the registry (a cheap revision poll every ``poll_s``), loads new versions without
a restart, competes with other workers for tasks through the broker, and publishes a signed status
record (host, threads, load, fps, errors, refusals) with a heartbeat. It acts only on verified
thread states and manifests. A refused version is tried again when its manifest changes, or
after a back-off (``retry_s`` doubling up to ``retry_max_s``: a missing blob may be uploaded, a
package index may come back). On SIGTERM it stops taking tasks, lets calls in flight finish and
reply (up to ``drain_s``) and gives the rest back. It keeps the highest high-water mark counter
it has accepted in ``<cache>/floors/`` (``mark.py``), so after a restart it still refuses an old mark
written back to the store, and reports it in its record, so that fresh workers refuse it too.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..broker import connect
from ..broker.base import redact
from ..engine.worker import Worker
from ..supervision import cancel, supervise
from ..thread import TensorThread
from . import artifacts
from .machine import Machine
from .registry import Registry
from .signing import ENV, SignatureError, get_secret

if TYPE_CHECKING:
    from ..metrics import Metrics

log = logging.getLogger("ooblex.node")
DEFAULT_CACHE = Path(os.environ.get("OOBLEX_CACHE", Path.home() / ".cache" / "ooblex"))


@dataclass(frozen=True)
class Refusal:
    """Why a version is not served, and when it is tried again (``time.monotonic()``)."""

    doc: str  # the manifest as refused, with the signature the state names: any change is tried at once
    reason: str
    attempts: int
    retry_at: float


class WorkerNode:
    """Hosts a ``Worker`` whose threads follow the registry."""

    def __init__(self, broker: str, store: str, *, threads: list[TensorThread] = (),  # type: ignore[assignment]
                 secret: str | None = None, cache: Path | str | None = None, poll_s: float = 0.5,
                 heartbeat_s: float = 1.0, drain_s: float = 10.0, retry_s: float = 5.0,
                 retry_max_s: float = 300.0) -> None:
        self.broker_url, self.store_url = broker, store
        self.local = list(threads)
        self.secret = get_secret(secret)
        self.cache = Path(cache) if cache else DEFAULT_CACHE
        self.poll_s, self.heartbeat_s, self.drain_s = poll_s, heartbeat_s, drain_s
        #: A refused version is tried again after ``retry_s``, doubling per failure up to ``retry_max_s``.
        self.retry_s, self.retry_max_s = retry_s, retry_max_s
        self.id = f"{socket.gethostname()}-{os.getpid()}"
        self.started = time.time()
        #: (name, version) -> loaded thread, or why it is not (until the manifest changes or a retry).
        self.loaded: dict[tuple[str, int], TensorThread] = {}
        self.refused: dict[tuple[str, int], Refusal] = {}
        self.queues: dict[str, tuple[str, int]] = {}  # queue -> (name, version)
        self._docs: dict[tuple[str, int], str] = {}
        self._rev = -1
        self._last = (time.monotonic(), 0)
        self._fps = 0.0
        self.machine = Machine()
        #: Where the worker reports frames and latencies (``ooblex worker --metrics-port`` serves them).
        self.metrics: Metrics | None = None

    async def run(self, stop: asyncio.Event) -> None:
        broker = connect(self.broker_url)
        await broker.start()
        self.worker = Worker(broker, self.local, metrics=self.metrics)
        await self.worker.start()
        self.registry = Registry(self.store_url, self.secret, floor_file=self.floor_file)
        log.info("worker %s serving from %s (store %s)", self.id, redact(self.broker_url), redact(self.store_url))
        if not self.secret:
            log.warning("no %s: this worker serves only its local threads (deployed ones cannot be verified) "
                        "and publishes no status record", ENV)
        beat = supervise(self._beat, "worker:record", logger=log) if self.secret else None
        try:
            while not stop.is_set():
                try:
                    await self.sync()
                except (OSError, ConnectionError, TimeoutError) as exc:
                    log.warning("store unreachable (%s); serving what is loaded", exc)
                    self._rev = -1
                except Exception as exc:  # noqa: BLE001 - redis-py wraps outages in its own classes
                    log.warning("registry sync failed (%s: %s); will retry", type(exc).__name__, exc)
                    self._rev = -1
                try:
                    await asyncio.wait_for(stop.wait(), self.poll_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            log.info("worker %s stopping: finishing in-flight work (up to %.0f s)", self.id, self.drain_s)
            await self.worker.stop(self.drain_s)
            await cancel(beat)
            try:
                await asyncio.to_thread(self.registry.drop_record, "worker", self.id)
            except Exception:  # noqa: BLE001 - the record expires by itself anyway
                pass
            self.registry.close()
            await broker.close()

    @property
    def floor_file(self) -> Path:
        """Where this worker keeps its high-water mark floor for this store (one file per store URL)."""
        return self.cache / "floors" / f"{hashlib.sha256(self.store_url.encode()).hexdigest()[:16]}.json"

    async def _beat(self) -> None:
        """Publish the status record every ``heartbeat_s``, whatever else the worker is doing (loading a new
        version with its requirements can take minutes): a busy worker is not a dead one."""
        while True:
            try:
                await asyncio.to_thread(self.registry.put_record, "worker", self.id, self.status(),
                                        3 * self.heartbeat_s)
            except Exception as exc:  # noqa: BLE001 - store outages: the record lapses, then comes back
                log.debug("worker record not published: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    async def sync(self) -> None:
        """Make the served queues match the registry (when its revision moved or a retry is due)."""
        rev = await asyncio.to_thread(self.registry.rev)
        if rev == self._rev and not any(r.retry_at <= time.monotonic() for r in self.refused.values()):
            return
        snapshot = await asyncio.to_thread(self.registry.serving)
        wanted: dict[str, tuple[str, int]] = {}
        for name, info in snapshot.items():
            for v, manifest in info["versions"].items():
                if await self._ensure(name, v, manifest, info["signatures"][v]):
                    wanted[f"{name}@{v}"] = (name, v)
                    if v == info["active"]:
                        wanted[name] = (name, v)
        for queue, key in list(self.queues.items()):
            if wanted.get(queue) != key:
                await self.worker.remove(queue, self.drain_s)
                del self.queues[queue]
        for queue, key in wanted.items():
            if queue not in self.queues:
                if queue in self.worker.runners:  # a deploy replaces a local thread of the same name
                    await self.worker.remove(queue, self.drain_s)
                self.worker.add(self.loaded[key], queue)
                self.queues[queue] = key
                log.info("serving %s (%s@%d)", queue, *key)
        for key in [k for k in self.loaded if k not in self.queues.values()]:
            del self.loaded[key]
        for key in [k for k in self.refused if k[0] not in snapshot or k[1] not in snapshot[k[0]]["versions"]]:
            del self.refused[key]
        self._rev = rev

    async def _ensure(self, name: str, version: int, manifest: dict[str, Any] | None, signature: str) -> bool:
        key = (name, version)
        doc = json.dumps([manifest, signature], sort_keys=True)  # any change to either is re-verified
        if key in self.loaded and (self._docs.get(key) == doc or manifest is None):
            return True  # a deleted manifest is no undeploy: only a signed state says what to serve
        self.loaded.pop(key, None)
        before = self.refused.get(key)
        if before is not None and before.doc == doc and time.monotonic() < before.retry_at:
            return False
        try:
            thread = await asyncio.to_thread(artifacts.load, self.registry, name, version, manifest, self.secret,
                                             self.cache, signature=signature)
        except (SignatureError, artifacts.ArtifactError) as exc:
            reason = artifacts.public(str(exc))
        except Exception as exc:  # noqa: BLE001 - any failure to load is reported, never fatal
            reason = artifacts.public(f"{type(exc).__name__}: {exc}")
        else:
            if thread.name != name:
                reason = f"refusing artifact: manifest names {name!r} but the code is {thread.name!r}"
            else:
                self.loaded[key] = thread
                self._docs[key] = doc
                self.refused.pop(key, None)
                return True
        attempts = before.attempts + 1 if before is not None and before.doc == doc else 1
        delay = self.backoff(attempts)
        self.refused[key] = Refusal(doc, reason, attempts, time.monotonic() + delay)
        log.error("%s@%d not served: %s (try %d; next in %.0f s or when it changes)", name, version, reason,
                  attempts, delay)
        return False

    def backoff(self, attempts: int) -> float:
        """Seconds until a version refused ``attempts`` times in a row is tried again."""
        return min(self.retry_max_s, self.retry_s * 2 ** (attempts - 1))

    def status(self) -> dict[str, Any]:
        """The record other machines read: who this worker is, what it serves, how it is doing."""
        now = time.monotonic()
        t0, n0 = self._last
        if now - t0 >= 1.0:
            self._fps = round((self.worker.processed - n0) / (now - t0), 2)
            self._last = (now, self.worker.processed)
        per_queue = self.worker.stats()
        threads = {}
        for queue in self.worker.runners:
            name, version = self.queues.get(queue, (queue, 0))
            s = per_queue.get(queue, {})
            threads[queue] = {"name": name, "version": version, "status": "serving", "fps": s.get("fps", 0.0),
                              "latency_ms": s.get("latency_ms", {}), "processed": s.get("processed", 0),
                              "errors": s.get("errors", 0)}
        return {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "started": self.started,
                "heartbeat": time.time(), "broker": redact(self.broker_url), "threads": threads,
                "refused": {f"{n}@{v}": {"reason": r.reason, "attempts": r.attempts,
                                         "retry_at": round(time.time() + r.retry_at - now, 3)}
                            for (n, v), r in self.refused.items()},
                "load": os.getloadavg()[0], "busy": self.worker.busy, "fps": self._fps,
                "processed": self.worker.processed, "errors": self.worker.errors, "skipped": self.worker.skipped,
                "ooblex": __version__, "mark": self.registry.marks.floor, "mark_refused": self.registry.marks.refused,
                **self.machine.sample()}

