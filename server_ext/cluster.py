"""How the extension reaches the cluster: settings plus a narrow adapter over ``ooblex.cluster``.

The cluster package (``ooblex[cluster]``: registry, workers, ``ob.deploy``) owns deploying and
listing. This module only adapts it to the extension's handlers, and turns "not installed" or
"not configured" into a clear ``ClusterUnavailable`` (HTTP 503) instead of pretending.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Any

import httpx

from ooblex import routes
from ooblex.cluster.config import env_broker
from ooblex.errors import BadRequest, OoblexError, Unavailable

NOT_AVAILABLE = "cluster support not installed/configured"
#: What the panel shows while the server knows no cluster.
NO_CLUSTER = ("No cluster yet: run ob.cluster() in a notebook to start one here (it stays up across kernel "
              "restarts), or start the Jupyter server with OOBLEX_BROKER and OOBLEX_SECRET set to use an existing one.")


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:
        return (OSError,)
    return (OSError, RedisConnectionError, RedisTimeoutError)


class ClusterUnavailable(Unavailable, RuntimeError):
    """The cluster cannot be reached from this server (missing package or settings): HTTP 503."""


@dataclass
class Settings:
    """Where the extension finds the cluster: the server's ``OOBLEX_*`` environment, or the cluster it owns
    (``owned.py`` points this one object, shared by every handler, at it and back)."""

    cluster: str = ""
    store: str = ""
    secret: str = ""
    gateway: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(env_broker(),
                   os.environ.get("OOBLEX_STORE", ""), os.environ.get("OOBLEX_SECRET", ""),
                   os.environ.get("OOBLEX_GATEWAY", "").rstrip("/"))

    def describe(self) -> dict[str, Any]:
        """What a client may see: never the secret, never credentials inside the broker URL."""
        return {"cluster_configured": bool(self.cluster), "secret_set": bool(self.secret),
                "gateway": self.gateway or None, "cluster_installed": _module("deploy") is not None}

    def control_token(self) -> str | None:
        """A short-lived control token for the gateway, signed with a key derived from the secret
        (which never travels)."""
        if not self.secret:
            return None
        from ooblex.tokens import mint

        return mint("control", ttl_s=300, secret=self.secret)


def _module(name: str) -> Any:
    try:
        return importlib.import_module(f"ooblex.cluster.{name}")
    except ImportError:
        return None


class Cluster:
    """The cluster operations the handlers offer, run off the server's event loop (they block on Redis)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self, f"_{what}")
        modules = self._modules()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(modules, *args, **kwargs))
        except OoblexError:  # says what it is (GatewayTimeout is an OSError too, yet no unreachable store)
            raise
        except _unreachable_errors() as exc:
            raise ClusterUnavailable(f"cannot reach the cluster's store: {exc}") from None

    def _modules(self) -> tuple[Any, Any]:
        if not self.settings.cluster:
            raise ClusterUnavailable(f"{NOT_AVAILABLE}: {NO_CLUSTER}")
        deploy, registry = _module("deploy"), _module("registry")
        if deploy is None or registry is None:
            raise ClusterUnavailable(f"{NOT_AVAILABLE}: install ooblex[cluster] on the Jupyter server")
        return deploy, registry

    def _registry(self, modules: tuple[Any, Any]) -> Any:
        config = importlib.import_module("ooblex.cluster.config").resolve(self.settings.cluster,
                                                                          self.settings.store or None)
        return modules[1].Registry(config.store, self.settings.secret or None)

    def _threads(self, modules: tuple[Any, Any]) -> list[dict[str, Any]]:
        reg = self._registry(modules)
        try:
            out = []
            for name, entry in sorted(reg.serving().items()):
                v = entry["active"]
                try:  # what a listing shows comes from a verified manifest too
                    about = modules[1].verified(entry["versions"].get(v), reg.secret, name, v,
                                                entry["signatures"].get(v)).get("meta", {})
                except PermissionError as exc:
                    about = {"refused": str(exc)}
                out.append({"name": name, "active": v, "versions": sorted(entry["versions"]), **about})
            return out
        finally:
            reg.close()

    def _deployments(self, modules: tuple[Any, Any]) -> list[dict[str, Any]]:
        """Each thread's versions (who, when, licence, requirements, signature) and the workers serving
        or refusing each (``ooblex.cluster.overview``, what the gateway's console shows too)."""
        reg = self._registry(modules)
        try:
            return _module("overview").deployments(reg)
        finally:
            reg.close()

    def _cluster(self, modules: tuple[Any, Any]) -> dict[str, Any]:
        """Deployments, workers and gateways in one answer (the JupyterLab panel's poll)."""
        reg = self._registry(modules)
        try:
            return {"cluster": True, **_module("overview").cluster(reg)}
        finally:
            reg.close()

    def _activate(self, modules: tuple[Any, Any], name: str, version: int) -> dict[str, Any]:
        """Serve a stored version of ``name`` again (rollback, roll forward): a signed state change."""
        reg = self._registry(modules)
        try:
            reg.activate(name, version)
            return {"name": name, "active": version}
        finally:
            reg.close()

    def _workers(self, modules: tuple[Any, Any]) -> list[dict[str, Any]]:
        reg = self._registry(modules)
        try:
            return reg.records("worker")
        finally:
            reg.close()

    def _streams(self, modules: tuple[Any, Any]) -> list[dict[str, Any]]:
        """Every live gateway's open streams (asked from each gateway's ``/api/v1/streams``); ``proxied``:
        the gateway this server's proxy (``OOBLEX_GATEWAY``) reaches."""
        return self._ask_gateways(modules, routes.STREAMS, "streams")

    def _history(self, modules: tuple[Any, Any], since: float = 0.0) -> list[dict[str, Any]]:
        """Every live gateway's per-second stream history newer than ``since`` (``/api/v1/history``)."""
        return self._ask_gateways(modules, f"{routes.HISTORY}?since={float(since)!r}", "streams",
                                  lambda body: body.get("streams", {}))

    def _ask_gateways(self, modules: tuple[Any, Any], path: str, key: str,
                      pick: Any = lambda body: body) -> list[dict[str, Any]]:
        """``GET path`` on each gateway whose signed record verifies: the control token goes nowhere else
        (anyone who can write to the store could otherwise list a URL of their own)."""
        reg = self._registry(modules)
        try:
            gateways = reg.records("gateway")
        finally:
            reg.close()
        token = self.settings.control_token()
        # each gateway answers for itself (in a cluster, any one would list every gateway's streams)
        headers = {"X-Ooblex-Forwarded": "jupyter", **({"Authorization": f"Bearer {token}"} if token else {})}
        out = []
        for g in gateways:
            url = str(g.get("url", "")).rstrip("/")
            entry: dict[str, Any] = {"gateway": g.get("id"), "url": g.get("url")}
            if self.settings.gateway and url == self.settings.gateway:
                entry["proxied"] = True
            try:
                r = httpx.get(f"{url}{path}", headers=headers, timeout=5)
                r.raise_for_status()
                entry[key] = pick(r.json())
            except (httpx.HTTPError, ValueError, AttributeError) as exc:
                entry["error"] = f"gateway unreachable: {exc}"
            out.append(entry)
        return out

    def _deploy(self, modules: tuple[Any, Any], spec: str, wait: float = 0.0, **options: Any) -> dict[str, Any]:
        from ooblex.loader import load_thread

        thread = load_thread(spec)
        try:
            wait_s = float(wait)
        except (TypeError, ValueError):
            raise BadRequest(f'"wait" must be seconds, not {wait!r}') from None
        ours = {"cluster": self.settings.cluster, "store": self.settings.store or None,
                "secret": self.settings.secret or None, "wait": wait_s}
        try:  # options the body may not set (ours) or deploy does not take: 400, not a 500 from the call
            inspect.signature(modules[0].deploy).bind(thread, **ours, **options)
        except TypeError as exc:
            raise BadRequest(f"bad deployment options: {exc}") from None
        dep = modules[0].deploy(thread, **ours, **options)
        return {"name": dep.name, "version": dep.version, "urls": dep.urls, "status": dep.status()}

    def _undeploy(self, modules: tuple[Any, Any], name: str) -> dict[str, Any]:
        modules[0].undeploy(name, cluster=self.settings.cluster, store=self.settings.store or None,
                            secret=self.settings.secret or None)
        return {"name": name, "undeployed": True}
