"""``ob.deploy`` / ``ob.undeploy``: publish a tensor thread to a cluster in one call.

The code travels by value (cloudpickle), so a function defined in a notebook cell works on a
worker that has never seen the notebook. Weight files travel as content-addressed blobs.
Workers watching the registry load the new version within about a second, no restart.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import cloudpickle

from .. import routes
from ..broker.base import redact
from ..errors import GatewayTimeout
from ..thread import TensorThread, as_thread
from . import bundle
from .config import ClusterConfig, resolve
from .registry import Registry, RegistryError, check_name, describe
from .signing import SignatureError, sha256

#: Where a gateway's endpoints for a thread are (``ooblex.routes``), unless the gateway's record says otherwise.
#: WHEP and MJPEG are per stream: ``{stream_id}`` is left for the caller (the id a WHIP answer gives).
DEFAULT_ROUTES = {name: ("{ws}" if name == "ws" else "{base}") + template.replace("{stream_id}", "{{stream_id}}")
                  for name, template in routes.CLIENT.items()}


def pickle_thread(thread: TensorThread) -> bytes:
    """The thread's code by value: its own module travels too unless it is an installed package."""
    module = sys.modules.get(getattr(thread.target, "__module__", ""), None)
    by_value = module is not None and _is_user_module(module)
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(thread)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


def _is_user_module(module: Any) -> bool:
    name = module.__name__
    if name == "__main__" or name.split(".")[0] in ("ooblex",):
        return False
    path = getattr(module, "__file__", None) or ""
    return bool(path) and "site-packages" not in path and "dist-packages" not in path \
        and not path.startswith(sys.base_prefix)


@dataclass
class Deployment:
    """A deployed version: where to reach it, how it is doing, how to take it back."""

    name: str
    version: int
    config: ClusterConfig
    manifest: dict[str, Any]
    #: The cluster secret (default ``$OOBLEX_SECRET``): rollback and undeploy are signed with it,
    #: status records verified with it.
    secret: str | bytes | None = field(default=None, repr=False)

    def _registry(self) -> Registry:
        return Registry(self.config.store, self.secret)

    @property
    def urls(self) -> dict[str, Any]:
        """Endpoints on the cluster's gateway(s): ``{"whip": ..., "whep": ..., ...}`` (first gateway)
        plus ``"gateways"``: the same for every live gateway whose signed record verifies. Empty when
        no gateway is up."""
        return self._urls(self.name)

    @property
    def version_urls(self) -> dict[str, Any]:
        """Like ``urls``, for exactly this version (``name@version``), whether it is the active one or kept:
        what ``ob.live(deployment)`` publishes to."""
        return self._urls(self.queue)

    @property
    def queue(self) -> str:
        """``name@version``: the name gateways and workers give exactly this version."""
        return f"{self.name}@{self.version}"

    def _urls(self, thread: str) -> dict[str, Any]:
        reg = self._registry()
        try:
            records = reg.records("gateway")
        finally:
            reg.close()
        per = list({json.dumps(u, sort_keys=True): u for u in (gateway_urls(g, thread) for g in records)}.values())
        return {**(per[0] if per else {}), "gateways": per}  # gateways behind one balancer: listed once

    def share(self, ttl: str | float = "1h", *, view: str | None = None) -> str:
        """A link to the cluster gateway's page for this thread, good for ``ttl`` (``"30m"``, ``"1h"``, seconds):
        whoever opens it publishes their camera through the thread and sees what comes back, with no login or
        CLI step. With ``view=STREAM_ID`` (a live stream of this thread: the demo page's "watch link" or
        ``GET /api/v1/streams`` names it) the link only watches that stream (WHEP, receive-only) and cannot
        publish. The token (``publish`` for this thread, or ``view`` for that one stream, its own subject) rides
        in the URL fragment, which browsers never send to a server, so it stays out of server logs and Referer
        headers; the page moves it out of the address bar at once. Needs the cluster's secret, as ``ob.deploy``
        does."""
        from urllib.parse import quote

        if view is not None and (not isinstance(view, str) or not view or view == "*"):
            raise ValueError(f"view= names one live stream of {self.name!r} (its id), got {view!r}")
        base = self.urls.get("whip", "").split("/whip/")[0]
        if not base:
            raise GatewayTimeout(f"no gateway of this cluster is up to serve {self.name!r}: start one "
                                 "(ooblex gateway --broker ..., or ob.cluster())")
        if view is not None:
            return f"{base}/?watch={quote(view, safe='')}#token={self._token('view', ttl, stream=view)}"
        token = self.publish_token(ttl)
        return f"{base}/?thread={quote(self.name)}#token={token}"

    def publish_token(self, ttl: str | float = "1h", *, this_version: bool = False) -> str:
        """A ``publish`` token for this thread only (its own subject), good for ``ttl``: what ``share`` puts in
        its link. With ``this_version``, for ``name@version`` only: what ``ob.live(deployment)`` presents to the
        gateway. Needs the cluster's secret."""
        return self._token("publish", ttl, thread=self.queue if this_version else self.name)

    def _token(self, scope: str, ttl: str | float, **target: str) -> str:
        from ..secret import require_secret
        from ..tokens import Rules, mint, parse_ttl

        key = require_secret(self.secret)
        return mint(scope, ttl_s=parse_ttl(ttl), secret=key, rules=Rules.from_env(key, store=self.config.store),
                    **target)

    def status(self) -> dict[str, Any]:
        """Workers serving this thread (this version or the active one), fps, latency, refusals."""
        reg = self._registry()
        try:
            return thread_status(reg, self.name, self.version)
        finally:
            reg.close()

    def wait_ready(self, timeout: float = 10.0, workers: int = 1) -> Deployment:
        """Block until ``workers`` workers serve this version; raise naming refusals if not."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if st["serving"] >= workers:
                return self
            if time.monotonic() > deadline:
                why = "; ".join(f"{w}: {r}" for w, r in st["refused"].items()) or \
                    f"{len(st['workers_alive'])} worker(s) alive, none serving it"
                raise GatewayTimeout(f"{self.name}@{self.version} not served by {workers} worker(s) after "
                                   f"{timeout:.0f} s ({why})")
            time.sleep(0.2)

    def rollback(self) -> Deployment:
        """Serve the version before this one under the plain name again (a signed state change)."""
        reg = self._registry()
        try:
            older = sorted(v for v in reg.versions(self.name) if v < self.version)
            if not older:
                raise RegistryError(f"{self.name}@{self.version} has no earlier version to roll back to")
            reg.activate(self.name, older[-1])
            return Deployment(self.name, older[-1], self.config, reg.manifest(self.name, older[-1]), self.secret)
        finally:
            reg.close()

    def undeploy(self) -> None:
        undeploy(self.name, cluster=self.config.broker, store=self.config.store, secret=self.secret)

    def __repr__(self) -> str:
        return f"<Deployment {self.name}@{self.version} on {redact(self.config.broker)}>"


@overload
def deploy(thread: Any, cluster: str | None = None, *, store: str | None = None,
           requirements: list[str] | tuple[str, ...] = (), weights: list[Any] | tuple[Any, ...] = (),
           secret: str | None = None, keep_versions: bool = False, wait: float = 0.0, license: str = "",
           export: None = None) -> Deployment: ...
@overload
def deploy(thread: Any, cluster: str | None = None, *, store: str | None = None,
           requirements: list[str] | tuple[str, ...] = (), weights: list[Any] | tuple[Any, ...] = (),
           secret: str | None = None, keep_versions: bool = False, wait: float = 0.0, license: str = "",
           export: str | Path) -> Path: ...


def deploy(thread: Any, cluster: str | None = None, *, store: str | None = None,
           requirements: list[str] | tuple[str, ...] = (), weights: list[Any] | tuple[Any, ...] = (),
           secret: str | None = None, keep_versions: bool = False, wait: float = 0.0, license: str = "",
           export: str | Path | None = None) -> Deployment | Path:
    """Publish ``thread`` as a new version on ``cluster`` and make it the active one.

    ``requirements``: pip requirement strings workers install (in a private target) if missing.
    ``weights``: file paths; on workers ``ob.weight("file.name")`` gives the local copy.
    ``keep_versions``: keep earlier versions loaded (reachable as ``name@version``).
    ``wait``: seconds to wait for a worker to serve it (0: return at once).
    ``license``: what the code and weights are licensed under (an SPDX id), recorded in the manifest.
    ``export``: write a signed artifact file there instead (no cluster needed), to upload in a
    gateway's console (``/console``) or ``POST /api/v1/cluster/deployments``; returns its path.
    Needs ``OOBLEX_SECRET`` (or ``secret=``): workers only run signed code.
    """
    t = as_thread(thread)
    check_name(t.name)
    reqs = sorted(set(requirements) | set(t.requirements))
    if export is not None:
        return bundle.write(export, t.name, describe(t), pickle_thread(t), requirements=reqs, weights=list(weights),
                            license=license, secret=secret)
    config = resolve(cluster, store)
    reg = Registry(config.store, secret)
    try:
        manifest = reg.publish(t, pickle_thread(t), requirements=reqs, weights=list(weights),
                               keep_versions=keep_versions,
                               about={"license": license, "deployed_by": bundle.deployer("ob.deploy")})
    finally:
        reg.close()
    dep = Deployment(t.name, manifest["version"], config, manifest, secret)
    return dep.wait_ready(wait) if wait else dep

def undeploy(name: Any, cluster: str | None = None, *, store: str | None = None,
             secret: str | bytes | None = None) -> None:
    """Remove ``name`` (a name or a thread) from the cluster: workers stop serving it within a poll.
    Needs ``OOBLEX_SECRET`` (or ``secret=``): the removal is a signed state change."""
    config = resolve(cluster, store)
    reg = Registry(config.store, secret)
    try:
        reg.remove(name if isinstance(name, str) else as_thread(name).name)
    finally:
        reg.close()


def deployment(name: str, cluster: str | None = None, *, version: int | None = None, store: str | None = None,
               secret: str | bytes | None = None) -> Deployment:
    """The active ``Deployment`` of ``name``, or its ``version`` while workers serve it (the active one, or
    one kept with ``keep_versions``), from its verified state: needs ``OOBLEX_SECRET``."""
    config = resolve(cluster, store)
    reg = Registry(config.store, secret)
    try:
        reg.need_secret(f"verify the deployment of {name!r}")
        state = reg.state(name)
        if state is None and reg.marks.refused:
            raise SignatureError(f"cannot tell which version of {name!r} is deployed: {reg.marks.refused}")
        if state is None or state.removed:
            raise RegistryError(f"{name!r} is not deployed on {redact(config.broker)}")
        v = state.active if version is None else version
        if v not in state.serving:
            served = ", ".join(f"{name}@{s}" for s in sorted(state.serving))
            raise RegistryError(f"{name}@{v} is not served (served: {served}; deploy with keep_versions=True "
                                "to keep earlier versions reachable)")
        return Deployment(name, v, config, reg.manifest(name, v), secret)
    finally:
        reg.close()


def code_digest(thread: TensorThread) -> str:
    return sha256(pickle_thread(thread))


def gateway_urls(record: dict[str, Any], thread: str) -> dict[str, str]:
    """A gateway record's endpoint templates filled in for ``thread``."""
    base = str(record.get("url", "")).rstrip("/")
    ws = "ws" + base[4:] if base.startswith("http") else base
    routes = {**DEFAULT_ROUTES, **record.get("routes", {})}
    return {k: v.format(base=base, ws=ws, thread=thread) for k, v in routes.items()}


def thread_status(reg: Registry, name: str, version: int | None = None) -> dict[str, Any]:
    """Aggregate worker records for ``name``: who serves which version, fps, compute latency, refusals."""
    active = reg.active(name)
    target = f"{name}@{version}" if version is not None else name
    workers, refused, retry_at, fps, serving = [], {}, {}, 0.0, 0
    records = reg.records("worker")
    for w in records:
        for key, why in w.get("refused", {}).items():
            if key.split("@")[0] == name:
                refused[f"{w['id']} ({key})"] = why["reason"]
                retry_at[f"{w['id']} ({key})"] = why["retry_at"]
        queues = w.get("threads", {})
        serving += target in queues
        for queue, t in queues.items():
            if queue.split("@")[0] != name:
                continue
            fps += t.get("fps", 0.0) if queue == name else 0.0
            workers.append({"id": w["id"], "host": w["host"], "queue": queue, "version": t.get("version"),
                            "fps": t.get("fps", 0.0), "latency_ms": t.get("latency_ms", {}),
                            "load": w.get("load"), "busy": w.get("busy")})
    return {"name": name, "version": version, "active": active, "serving": serving, "fps": round(fps, 2),
            "workers": workers, "refused": refused, "retry_at": retry_at,
            "workers_alive": [w["id"] for w in records]}


def announce_gateway(store: str | Registry, ident: str, url: str, routes: dict[str, str] | None = None,
                     ttl_s: float = 10.0, **extra: Any) -> None:
    """For gateways: publish (refresh every few seconds) a signed record of where this instance
    serves, so ``Deployment.urls`` can point at it. ``store``: a Redis URL or an open ``Registry``;
    ``routes``: templates with ``{base}`` and ``{thread}``. Needs ``OOBLEX_SECRET``."""
    reg = store if isinstance(store, Registry) else Registry(store)
    try:
        reg.put_record("gateway", ident, {"id": ident, "url": url, "routes": routes or {}, "heartbeat": time.time(),
                                          **extra}, ttl_s)
    finally:
        if reg is not store:
            reg.close()
