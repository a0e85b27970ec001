"""Brokers move frames between gateways and workers: ``memory`` (embedded), ``redis``, ``rabbitmq``."""

from __future__ import annotations

from ..errors import BadRequest
from .base import Broker, BrokerError, Delivery
from .memory import MemoryBroker

__all__ = ["Broker", "BrokerError", "Delivery", "MemoryBroker", "connect"]


def connect(url: str | None = "memory://", **options: object) -> Broker:
    """Make a broker from a URL: ``memory://``, ``redis://host:port/db``, ``amqp://user:pw@host/``."""
    url = url or "memory://"
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryBroker(**options)  # type: ignore[arg-type]
    if scheme in ("redis", "rediss"):
        try:
            from .redis import RedisBroker
        except ImportError as exc:
            raise BadRequest(f"the redis broker is not available ({exc}); pip install 'ooblex[cluster]'") from None
        return RedisBroker(url, **options)  # type: ignore[arg-type]
    if scheme in ("amqp", "amqps"):
        try:
            from .rabbitmq import RabbitMQBroker
        except ImportError as exc:
            raise BadRequest(f"the rabbitmq broker is not available ({exc}); pip install 'ooblex[cluster]'") from None
        return RabbitMQBroker(url, **options)  # type: ignore[arg-type]
    raise BadRequest(f"unknown broker URL {url!r}: use memory://, redis://host:port/db or amqp://host/")
