"""The ``Broker`` interface: the only thing the engine knows about how frames travel.

Two directions, both addressed by name:
- tasks: gateway -> a queue per tensor thread -> whichever worker takes it first;
- results: worker -> the reply queue of the gateway instance that owns the stream.

A backend implements five coroutines. The in-process ``memory`` broker passes Frame objects
by reference; network backends (``redis``, ``rabbitmq``) serialize with ``ooblex.wire``.
"""

from __future__ import annotations

import abc
import functools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import Unavailable
from ..frame import Frame
from ..supervision import Incidents

log = logging.getLogger("ooblex.broker")


@dataclass(slots=True)
class Delivery:
    """One task handed to a worker. ``ack`` once the result is published, ``nack`` to give it back."""

    frame: Frame
    ack: Callable[[], Any] = field(default=lambda: None)
    nack: Callable[[], Any] = field(default=lambda: None)


def redact(url: str) -> str:
    """``url`` without its password: what status pages and logs may show."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class BrokerError(Unavailable, RuntimeError):
    """The broker cannot be reached or refused an operation."""


class Broker(abc.ABC):
    """Moves frames between gateways and workers. Every queue it owns is bounded."""

    #: Where the broker is, password redacted (safe to show); backends keep the real URL to themselves.
    url: str = ""
    #: Network brokers: hand tasks over with JPEG pixels still coded (``frame.jpeg``) instead of decoding
    #: them on the event loop as they arrive. A ``Worker`` turns this on: it decodes them in its compute
    #: threads, on every core, or on the GPU where its model is (see ``ooblex.jpeg.cuda_decoder``).
    defer_jpeg: bool = False

    @functools.cached_property
    def poisoned(self) -> Incidents:
        """Messages dropped because they could not be decoded or handled (``poisoned.count``). Each is
        acknowledged, never redelivered: one bad message must not stop or loop the frames behind it."""
        return Incidents(log, "dropped a poisoned message")

    async def start(self) -> None:
        """Connect. Called once before use."""

    async def close(self) -> None:
        """Disconnect and release resources."""

    @abc.abstractmethod
    async def submit(self, frame: Frame, *, live: bool = True) -> None:
        """Queue ``frame`` for the thread ``frame.thread``.

        ``live`` tasks may be discarded by the broker when their queue is full (oldest first) or
        when they expire; job tasks (``live=False``) are kept until a worker acknowledges them.
        """

    @abc.abstractmethod
    def tasks(self, threads: list[str], prefetch: int = 1) -> AsyncIterator[Delivery]:
        """Yield tasks for any of ``threads``, competing with other consumers of the same names.

        ``prefetch``: how many tasks a network broker may hand this consumer ahead of its acks
        (a worker asks for what it can batch; more would starve competing workers).
        """

    @abc.abstractmethod
    async def reply(self, frame: Frame) -> None:
        """Send a processed frame to ``frame.reply_to``."""

    @abc.abstractmethod
    def results(self, reply_to: str) -> AsyncIterator[Frame]:
        """Yield processed frames addressed to ``reply_to``."""

    async def consumers(self, thread: str) -> int:
        """How many workers currently serve ``thread`` (-1 if the broker cannot tell)."""
        return -1
