"""Where a cluster is: the broker URL and the Redis store URL, from arguments or ``OOBLEX_*`` env."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..broker import kind
from ..broker.base import redact
from ..errors import BadRequest


@dataclass(frozen=True)
class ClusterConfig:
    broker: str
    store: str

    def __repr__(self) -> str:  # URLs may carry passwords
        return f"ClusterConfig(broker={redact(self.broker)!r}, store={redact(self.store)!r})"


def env_broker() -> str:
    """The cluster's broker URL from the environment: ``$OOBLEX_BROKER``, else its older alias
    ``$OOBLEX_CLUSTER``, else "" (the one place that reads them, in this order)."""
    return os.environ.get("OOBLEX_BROKER") or os.environ.get("OOBLEX_CLUSTER") or ""


def resolve(cluster: str | None = None, store: str | None = None) -> ClusterConfig:
    """``cluster``: ``redis://...`` (broker and store in one) or ``amqp://...`` (plus a Redis ``store``).

    Defaults: ``env_broker()`` and ``$OOBLEX_STORE``.
    """
    broker = cluster or env_broker()
    if not broker:
        raise BadRequest("no cluster given: pass cluster='redis://host:6379/0' (or amqp://...) "
                         "or set OOBLEX_BROKER")
    which = kind(broker)
    if which == "redis":
        return ClusterConfig(broker, store or os.environ.get("OOBLEX_STORE") or broker)
    if which == "rabbitmq":
        store = store or os.environ.get("OOBLEX_STORE")
        if not store:
            raise BadRequest("a RabbitMQ cluster keeps its registry and state in Redis: "
                             "pass store='redis://host:6379/0' or set OOBLEX_STORE")
        return ClusterConfig(broker, store)
    raise BadRequest(f"a cluster needs a network broker, not {redact(broker)!r}: use redis://host:port/db or "
                     "amqp://user:pw@host/")
