"""The cluster's gateways as each one sees the others: who holds a stream or session, and where it is.

Every gateway of a cluster announces a signed record (``ClusterEngine``): its ``instance`` tag, the
URL clients use (``url``: often a load balancer's, the same for all) and the URL its peers use
(``peer_url``: this one process). The ids of its streams and WebRTC sessions start with its tag
(``<instance>.<random>``), so any gateway can tell which one holds an id without asking anyone, and
find it in the records (``Directory.owner``). Records that do not verify are ignored, so nobody who
can only write to Redis can redirect a gateway's requests (with their tokens) to a server of theirs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .registry import Registry

#: How long a list of peers is used before it is read again (a new gateway is looked up at once on a miss).
REFRESH_S = 2.0


def instance_of(ident: str) -> str | None:
    """The instance tag an id starts with (``"a1b2.xyz"`` -> ``"a1b2"``), None for an id without one."""
    tag, dot, rest = ident.partition(".")
    return tag if dot and tag and rest else None


class Directory:
    """Live gateway records of the cluster other than this one (``instance``), read from ``registry``."""

    def __init__(self, registry: Registry, instance: str, refresh_s: float = REFRESH_S) -> None:
        self.registry = registry
        self.instance = instance
        self.refresh_s = refresh_s
        self._peers: list[dict[str, Any]] = []
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def peers(self, max_age_s: float | None = None) -> list[dict[str, Any]]:
        """Other live gateways' records (with a ``peer_url``), at most ``max_age_s`` old."""
        max_age = self.refresh_s if max_age_s is None else max_age_s
        async with self._lock:
            if time.monotonic() - self._read_at > max_age:
                records = await asyncio.to_thread(self.registry.records, "gateway")
                self._peers = [r for r in records if r.get("instance") != self.instance and r.get("peer_url")]
                self._read_at = time.monotonic()
            return list(self._peers)

    async def owner(self, ident: str, max_age_s: float | None = None) -> dict[str, Any] | None:
        """The record of the other gateway holding ``ident``; None if it is ours, has no tag, or its gateway
        is not (or no longer) alive. ``max_age_s=0`` reads the records afresh."""
        tag = instance_of(ident)
        if tag is None or tag == self.instance:
            return None
        for fresh in (max_age_s, 0.5):  # on a miss, read again: a gateway that started a moment ago
            found = next((p for p in await self.peers(fresh) if p.get("instance") == tag), None)
            if found is not None:
                return found
        return None
