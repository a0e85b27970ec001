"""``ClusterEngine``: a gateway-side ``Engine`` whose threads follow the cluster's registry.

Gateways (and ``ob.process``) open streams by name; the engine learns each deployed thread's
name and parameters (``name`` and ``name@version``) from the registry without loading its code,
and sends the frames to the workers through the broker. Like workers, it follows only verified
thread states and manifests (``OOBLEX_SECRET``), and with a ``public_url`` announces itself with a
signed gateway record (which reports its high-water mark floor, ``mark.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from ..broker import connect
from ..engine import Engine
from ..supervision import cancel, supervise
from .config import resolve
from .deploy import announce_gateway
from .gateways import Directory
from .registry import Registry, remote_thread, verified
from .signing import ENV, SignatureError, warn_once

log = logging.getLogger("ooblex.cluster")


class ClusterEngine(Engine):
    """``Engine`` on a network broker, with its thread table synced from the registry."""

    def __init__(self, cluster: str | None = None, *, store: str | None = None, poll_s: float = 0.5,
                 public_url: str | None = None, peer_url: str | None = None, secret: str | bytes | None = None,
                 **options: Any) -> None:
        self.config = resolve(cluster, store)
        super().__init__(connect(self.config.broker), embedded_worker=False, **options)
        self.registry = Registry(self.config.store, secret)
        self.poll_s = poll_s
        self._rev = -1
        self._remote: set[str] = set()
        self._follow: asyncio.Task[None] | None = None
        self.public_url = public_url
        #: Where the cluster's other gateways reach this one (default: ``public_url``): see ``gateways.py``.
        self.peer_url = peer_url or public_url
        self._announce: asyncio.Task[None] | None = None
        self.directory = Directory(self.registry, self.instance)

    @property
    def instance(self) -> str:
        """This gateway's tag: the ids of its streams and sessions start with it."""
        return self.reply_to.split(".", 1)[1]

    async def start(self) -> ClusterEngine:
        await super().start()
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - the follower keeps trying
            log.warning("registry not reachable yet: %s", exc)
        self._follow = supervise(self._follow_registry, "engine:registry", logger=log)
        if not self.registry.secret:
            log.warning("no %s: deployed threads cannot be verified, so this gateway serves none%s", ENV,
                        " and does not announce itself" if self.public_url else "")
        elif self.public_url:
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
                    current = self.threads.get(queue)
                    if current is None or getattr(current, "version", None) != v:
                        try:
                            verified(manifest, self.registry.secret, name, v, info["signatures"][v])
                        except SignatureError as exc:
                            warn_once(f"engine:{exc}", "not offering %s: %s", queue, exc)
                            continue
                        t = remote_thread(manifest["meta"], queue)
                        t.version = v  # type: ignore[attr-defined]
                        self.add_thread(t)
                    names.add(queue)
        for gone in self._remote - names:
            self.threads.pop(gone, None)
        self._remote = names
        self._rev = rev

    async def _announce_forever(self, every_s: float = 3.0) -> None:
        """Keep this gateway's signed record (``url``, id) fresh so ``Deployment.urls`` can point at it."""
        while True:
            try:
                await asyncio.to_thread(announce_gateway, self.registry, self.reply_to, str(self.public_url),
                                        ttl_s=3 * every_s, streams=len(self.streams), instance=self.instance,
                                        peer_url=self.peer_url, mark=self.registry.marks.floor)
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
