"""How the extension reaches the cluster: settings plus a narrow interface over ``ooblex.cluster``.

The cluster package (``ooblex[cluster]``) owns deploying and listing. This module only adapts
its functions to the extension's handlers and turns "not installed" or "not configured" into a
clear ``ClusterUnavailable`` (HTTP 503) instead of pretending.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Any

#: What the handlers call -> the function of ``ooblex.cluster`` that answers it.
FUNCTIONS = {
    "threads": "list_threads",
    "deployments": "list_deployments",
    "workers": "list_workers",
    "streams": "list_streams",
    "deploy": "deploy",
    "undeploy": "undeploy",
}
NOT_AVAILABLE = "cluster support not installed/configured"


class ClusterUnavailable(RuntimeError):
    """The cluster cannot be reached from this server (missing package or settings): HTTP 503."""


@dataclass(frozen=True)
class Settings:
    cluster: str = ""
    secret: str = ""
    gateway: str = ""

    @classmethod
    def from_env(cls) -> Settings:
        return cls(os.environ.get("OOBLEX_CLUSTER", ""), os.environ.get("OOBLEX_SECRET", ""),
                   os.environ.get("OOBLEX_GATEWAY", "").rstrip("/"))

    def describe(self) -> dict[str, Any]:
        """What a client may see: never the secret, never credentials inside the broker URL."""
        return {"cluster_configured": bool(self.cluster), "secret_set": bool(self.secret),
                "gateway": self.gateway or None, "cluster_installed": cluster_module() is not None}


def cluster_module() -> Any:
    try:
        return importlib.import_module("ooblex.cluster")
    except ImportError:
        return None


class Cluster:
    """Calls into ``ooblex.cluster`` with this server's cluster URL and secret."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def call(self, what: str, *args: Any, **kwargs: Any) -> Any:
        fn = self._function(what)
        kwargs = {"cluster": self.settings.cluster, "secret": self.settings.secret or None, **kwargs}
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))

    def _function(self, what: str) -> Any:
        if not self.settings.cluster:
            raise ClusterUnavailable(f"{NOT_AVAILABLE}: set OOBLEX_CLUSTER (and OOBLEX_SECRET) for the Jupyter server")
        module = cluster_module()
        if module is None:
            raise ClusterUnavailable(f"{NOT_AVAILABLE}: install ooblex[cluster] on the Jupyter server")
        fn = getattr(module, FUNCTIONS[what], None)
        if fn is None:
            raise ClusterUnavailable(f"{NOT_AVAILABLE}: ooblex.cluster has no {FUNCTIONS[what]}()")
        return fn
