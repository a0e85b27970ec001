"""``ob.cluster()``: the cluster this process deploys to, started or joined in one line.

    cluster = ob.cluster()                      # a local one (Redis, a gateway, a worker), started once
    cluster = ob.cluster("redis://host:6379")   # or an existing one
    ob.deploy(my_thread)                        # goes to it
    cluster.stop()

Inside Jupyter, a local cluster belongs to the Jupyter server (its extension starts it when a kernel
asks over a private Unix socket, ``OOBLEX_JUPYTER_SOCKET``): it outlives kernel restarts, and the
JupyterLab panel shows it. Elsewhere it belongs to this process and stops when the process ends.
Either way the cluster's settings (``OOBLEX_BROKER``, ``OOBLEX_STORE``, ``OOBLEX_SECRET``) go into
this process's environment, which is where ``ob.deploy`` and ``ob.process`` look by default.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from ..broker.base import redact
from ..errors import BadRequest, Unavailable
from .local import LocalCluster

#: The variables a cluster sets for this process (and ``stop`` takes back).
KEYS = ("OOBLEX_BROKER", "OOBLEX_STORE", "OOBLEX_SECRET", "OOBLEX_GATEWAY")
#: Set by the Jupyter server extension for its kernels: where to ask it for its cluster.
SOCKET_ENV = "OOBLEX_JUPYTER_SOCKET"

_lock = threading.Lock()
_own: LocalCluster | None = None


@dataclass
class Cluster:
    """A handle on the cluster in use: where it is, who owns it, and ``stop()``."""

    env: dict[str, str] = field(repr=False)
    #: "jupyter" (the Jupyter server's), "process" (this process's) or "external" (joined).
    owner: str = "external"

    @property
    def broker(self) -> str:
        return self.env.get("OOBLEX_BROKER", "")

    @property
    def gateway(self) -> str | None:
        """The gateway's base URL (demo page, WHIP/WHEP, console), when the cluster has one we know of."""
        return self.env.get("OOBLEX_GATEWAY") or None

    @property
    def console(self) -> str | None:
        return f"{self.gateway}/console" if self.gateway else None

    def stop(self) -> None:
        """Stop a local cluster (the Jupyter server's or this process's); for a joined one, only forget it."""
        global _own
        if self.owner == "jupyter":
            _ask_jupyter("DELETE")
        elif self.owner == "process":
            with _lock:
                if _own is not None:
                    _own.stop()
                    _own = None
        for key in KEYS:
            if os.environ.get(key) == self.env.get(key):
                os.environ.pop(key, None)

    def __repr__(self) -> str:
        return f"<Cluster {redact(self.broker)} gateway={self.gateway} owner={self.owner}>"

    def _repr_html_(self) -> str:
        gw = f'<a href="{self.gateway}/" target="_blank">{self.gateway}</a>' if self.gateway else "none known"
        console = f' · <a href="{self.console}" target="_blank">console</a>' if self.console else ""
        return (f"<b>Ooblex cluster</b> ({self.owner}) · broker <code>{redact(self.broker)}</code> · "
                f"gateway {gw}{console}")


def cluster(url: str | None = None, *, store: str | None = None, secret: str | None = None,
            workers: int = 1) -> Cluster:
    """Start a local cluster, or join the one at ``url``; either way ``ob.deploy`` now uses it.

    Idempotent: calling it again returns the same local cluster (restarted if it died).
    ``url``: a broker (``redis://...``, or ``amqp://...`` with ``store``); ``secret``: the cluster's
    ``OOBLEX_SECRET`` (default: this process's). ``workers``: how many a new local cluster starts.
    """
    if url is not None:
        env = {"OOBLEX_BROKER": url, **({"OOBLEX_STORE": store} if store else {}),
               **({"OOBLEX_SECRET": secret} if secret else {})}
        if not (secret or os.environ.get("OOBLEX_SECRET")):
            raise BadRequest("joining a cluster needs its secret: ob.cluster(url, secret=...) or OOBLEX_SECRET")
        return _use(env, "external")
    if os.environ.get(SOCKET_ENV):
        return _use(_ask_jupyter("POST", workers=workers), "jupyter")
    return _use(_own_cluster(workers), "process")


def _use(env: dict[str, str], owner: str) -> Cluster:
    os.environ.update(env)
    return Cluster(dict(env), owner)


def _own_cluster(workers: int) -> dict[str, str]:
    global _own
    with _lock:
        if _own is None or not _own.alive:
            _own = LocalCluster(workers=workers).start()
            atexit.register(_own.stop)
        return {**_own.env, "OOBLEX_GATEWAY": _own.gateway or ""}


def _ask_jupyter(method: str, **body: Any) -> dict[str, str]:
    """The Jupyter server's local cluster, over its private Unix socket (only this user can open it)."""
    import httpx

    path = os.environ[SOCKET_ENV]
    try:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=120) as http:
            r = http.request(method, "http://jupyter/cluster", json=body if method == "POST" else None)
    except httpx.HTTPError as exc:
        raise Unavailable(f"the Jupyter server's ooblex extension did not answer on {path}: {exc}") from None
    if r.status_code >= 400:
        raise Unavailable(f"the Jupyter server could not start a cluster: {r.json().get('detail', r.text)}")
    return r.json().get("env", {})
