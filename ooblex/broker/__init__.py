"""Brokers move frames between gateways and workers: ``memory`` (embedded), ``redis``, ``rabbitmq``."""

from __future__ import annotations

from typing import Literal

from ..errors import BadRequest
from .base import Broker, BrokerError, Delivery, redact
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Delivery", "MemoryBroker", "connect", "kind"]

Kind = Literal["memory", "redis", "rabbitmq"]
#: URL schemes of each broker (the one place that knows them).
SCHEMES: dict[str, Kind] = {"memory": "memory", "redis": "redis", "rediss": "redis", "amqp": "rabbitmq",
                            "amqps": "rabbitmq"}


def kind(url: str) -> Kind:
    """Which broker a URL names; ``BadRequest`` for any other scheme."""
    found = SCHEMES.get(url.split(":", 1)[0].lower())
    if found is None:
        raise BadRequest(f"unknown broker URL {redact(url)!r}: use memory://, redis://host:port/db or "
                         "amqp://user:pw@host/")
    return found


def connect(url: str | None = "memory://", **options: object) -> Broker:
    """Make a broker from a URL: ``memory://``, ``redis://host:port/db``, ``amqp://user:pw@host/``."""
    url = url or "memory://"
    which = kind(url)
    if which == "memory":
        return MemoryBroker(**options)  # type: ignore[arg-type]
    if which == "redis":
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise BadRequest(f"the redis broker is not available ({exc}); pip install 'ooblex[cluster]'") from None
        return RedisBroker(url, **options)  # type: ignore[arg-type]
    try:
        from .rabbitmq import RabbitMQBroker
    except ImportError as exc:
        raise BadRequest(f"the rabbitmq broker is not available ({exc}); pip install 'ooblex[cluster]'") from None
    return RabbitMQBroker(url, **options)  # type: ignore[arg-type]
