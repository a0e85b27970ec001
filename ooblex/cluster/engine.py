"""``ClusterEngine``: a gateway-side ``Engine`` whose threads follow the cluster's registry.

Gateways (and ``ob.process``) open streams by name; the engine learns each deployed thread's
name and parameters (``name`` and ``name@version``) from the registry without loading its code,
and sends the frames to the workers through the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from ..broker import connect
from ..engine import Engine
from ..supervision import cancel, supervise
from .config import resolve
from .registry import Registry, remote_thread

log = logging.getLogger("ooblex.cluster")


class ClusterEngine(Engine):
    """``Engine`` on a network broker, with its thread table synced from the registry."""

    def __init__(self, cluster: str | None = None, *, store: str | None = None, poll_s: float = 0.5,
                 public_url: str | None = None, **options: Any) -> None:
        self.config = resolve(cluster, store)
        super().__init__(connect(self.config.broker), embedded_worker=False, **options)
        self.registry = Registry(self.config.store)
        self.poll_s = poll_s
        self._rev = -1
        self._remote: set[str] = set()
        self._follow: asyncio.Task[None] | None = None
        self.public_url = public_url
        self._announce: asyncio.Task[None] | None = None

    async def start(self) -> ClusterEngine:
        await super().start()
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - the follower keeps trying
            log.warning("registry not reachable yet: %s", exc)
        self._follow = supervise(self._follow_registry, "engine:registry", logger=log)
        if self.public_url:
            self._announce = supervise(self._announce_forever, "engine:announce", logger=log)
        return self

    async def close(self) -> None:
        await cancel(self._follow, self._announce)
        if self._announce is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.registry.drop_record, "gateway", self.reply_to)
        await super().close()
        self.registry.close()

    async def sync(self) -> None:
        """Add threads deployed since the last look; forget undeployed ones."""
        rev = await asyncio.to_thread(self.registry.rev)
        if rev == self._rev:
            return
        snapshot = await asyncio.to_thread(self.registry.serving)
        names: set[str] = set()
        for name, info in snapshot.items():
            for v, manifest in info["versions"].items():
                for queue in ([name] if v == info["active"] else []) + [f"{name}@{v}"]:
                    names.add(queue)
                    current = self.threads.get(queue)
                    if current is None or getattr(current, "version", None) != v:
                        t = remote_thread(manifest["meta"], queue)
                        t.version = v  # type: ignore[attr-defined]
                        self.add_thread(t)
        for gone in self._remote - names:
            self.threads.pop(gone, None)
        self._remote = names
        self._rev = rev

    async def _announce_forever(self, every_s: float = 3.0) -> None:
        """Keep this gateway's record (``url``, id) fresh so ``Deployment.urls`` can point at it."""
        doc = {"id": self.reply_to, "url": self.public_url, "routes": {}}
        while True:
            try:
                doc["heartbeat"], doc["streams"] = time.time(), len(self.streams)
                await asyncio.to_thread(self.registry.put_record, "gateway", self.reply_to, doc, 3 * every_s)
            except Exception as exc:  # noqa: BLE001 - keep announcing through store outages
                log.debug("gateway announce failed: %s", exc)
            await asyncio.sleep(every_s)

    async def _follow_registry(self) -> None:
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                await self.sync()
            except Exception as exc:  # noqa: BLE001 - keep following through store outages
                log.debug("registry sync failed: %s", exc)
                self._rev = -1
