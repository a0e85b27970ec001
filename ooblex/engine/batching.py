"""How a worker forms a batch: from what is waiting, waiting for more only when load says more is coming.

A batch is taken when the model is free (a call slot opens): everything queued by then, up to
``batch_size``. While every slot is busy, frames pile up at no cost in latency, so under load
batches grow by themselves. The batcher waits for more (at most ``max_wait_ms`` after the first
frame of the batch arrived) only while other streams are active and the recent arrival rate says
the batch will be as full as they can make it by then. Streams send in windows (a live stream
has at most ``max_in_flight`` frames out), so a stream whose frame is already in the batch is not
counted on: one camera at 30 fps through a thread with ``batch_size=8`` gets batches of one and no
added wait, whatever ``max_wait_ms`` says; 64 cameras fill batches.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict

from ..broker.base import Delivery

#: Weight of the newest gap in the mean arrival gap: about the last 8 arrivals count.
GAP_WEIGHT = 1 / 8
#: A stream counts as active while its last frame arrived at most this long ago.
ACTIVE_S = 1.0


class Arrivals:
    """The mean gap between recent arrivals (exponentially weighted; infinite until two arrived) and the
    streams that sent recently."""

    def __init__(self) -> None:
        self.gap = math.inf
        self._last: float | None = None
        self._streams: OrderedDict[str, float] = OrderedDict()

    def note(self, now: float, stream: str = "") -> None:
        if self._last is not None:
            gap = now - self._last
            self.gap = gap if math.isinf(self.gap) else self.gap + GAP_WEIGHT * (gap - self.gap)
        self._last = now
        self._streams[stream] = now
        self._streams.move_to_end(stream)
        while next(iter(self._streams.values())) < now - ACTIVE_S:
            self._streams.popitem(last=False)

    def others(self, streams: set[str], now: float) -> int:
        """How many streams active in the last ``ACTIVE_S`` are not among ``streams``."""
        return sum(1 for s, t in self._streams.items() if t >= now - ACTIVE_S and s not in streams)


class Batcher:
    """A bounded inbox of deliveries, each with its arrival time, and the rule that takes batches from it."""

    def __init__(self, size: int, max_wait_s: float) -> None:
        self.size = size
        self.max_wait_s = max_wait_s
        self.inbox: asyncio.Queue[tuple[float, Delivery]] = asyncio.Queue(size)
        self.arrivals = Arrivals()

    async def put(self, delivery: Delivery) -> None:
        """Queue a delivery (waits while the inbox is full: the broker keeps the rest)."""
        now = time.monotonic()
        self.arrivals.note(now, _stream(delivery))
        await self.inbox.put((now, delivery))

    async def first(self) -> tuple[float, Delivery]:
        """The oldest delivery and when it arrived: a batch starts with it."""
        return await self.inbox.get()

    async def fill(self, first: tuple[float, Delivery]) -> list[Delivery]:
        """The batch that starts with ``first``: what is queued now, plus what other streams send in time.

        Cancelled while waiting, it hands back (nacks) every delivery it took, ``first`` included.
        """
        arrived, delivery = first
        batch = [delivery]
        streams = {_stream(delivery)}
        deadline = arrived + self.max_wait_s
        try:
            while len(batch) < self.size:
                if not self.inbox.empty():
                    batch.append(self.inbox.get_nowait()[1])
                    streams.add(_stream(batch[-1]))
                    continue
                now = time.monotonic()
                remaining = deadline - now
                coming = min(self.size - len(batch), self.arrivals.others(streams, now))
                if remaining <= 0 or coming == 0 or self.arrivals.gap * coming > remaining:
                    break  # nothing else is coming in time: go now
                try:
                    batch.append((await asyncio.wait_for(self.inbox.get(), remaining))[1])
                except asyncio.TimeoutError:
                    break
                streams.add(_stream(batch[-1]))
        except asyncio.CancelledError:
            for d in batch:  # taken from the inbox, so nobody else would give them back
                d.nack()
            raise
        return batch

    def drain(self) -> list[Delivery]:
        """Everything still queued (for a worker that stops: it hands them back)."""
        out = []
        while not self.inbox.empty():
            out.append(self.inbox.get_nowait()[1])
        return out


def _stream(d: Delivery) -> str:
    return str(getattr(d.frame, "stream_id", ""))  # a poisoned task may not even be a frame
