"""Keeping long-lived work alive and observed.

An engine, a worker or a broker starts loops that must run as long as it does: routing results,
feeding batches, following a registry. An exception that escapes such a loop ends it silently
(asyncio reports it only when the task is garbage-collected, often never), and the component looks
alive while doing nothing. So:

- ``supervise`` runs a loop in a task that restarts it, after a back-off, whenever it fails;
- ``Background`` keeps short fire-and-forget tasks (acks, clean-ups) referenced until they end
  (asyncio holds tasks only weakly) and logs their failures;
- ``Incidents`` counts a recurring problem (a poisoned message) and logs it rate-limited, so a
  flood of bad input cannot flood the log;
- ``cancel`` stops tasks and waits for them without ever raising their errors into a ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("ooblex.supervision")

#: A loop that ran this long before failing was healthy: its next restart waits the shortest back-off again.
HEALTHY_S = 30.0


def supervise(loop: Callable[[], Awaitable[None]], name: str, *, logger: logging.Logger = log,
              backoff_s: float = 0.1, max_backoff_s: float = 5.0) -> asyncio.Task[None]:
    """Run ``loop()`` in a task named ``name`` until the task is cancelled.

    Whenever ``loop()`` raises (or returns: a long-lived loop that ends has stopped working), the
    failure is logged with its traceback and the loop is started again after ``backoff_s``, doubling
    while failures repeat up to ``max_backoff_s``. Cancelling the task stops the loop; the task never
    ends with another exception, so awaiting it in ``close()`` is safe.
    """
    return asyncio.create_task(_forever(loop, name, logger, backoff_s, max_backoff_s), name=name)


async def _forever(loop: Callable[[], Awaitable[None]], name: str, logger: logging.Logger,
                   backoff_s: float, max_backoff_s: float) -> None:
    delay = backoff_s
    while True:
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            await loop()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - that is the point: log it and restart
            failure = exc
        if _cancel_swallowed():
            raise asyncio.CancelledError(f"{name} was cancelled (its loop swallowed the cancellation)")
        if time.monotonic() - started > HEALTHY_S:
            delay = backoff_s
        how = "failed" if failure is not None else "stopped unexpectedly"
        logger.error("%s %s; restarting it in %.1f s", name, how, delay, exc_info=failure)
        await asyncio.sleep(delay)
        delay = min(delay * 2, max_backoff_s)


def _cancel_swallowed() -> bool:
    """Was this task cancelled while its loop caught the ``CancelledError`` (a library closing a
    connection may turn it into a return or another error)? Restarting then would outlive the cancel:
    ``asyncio.run`` waits forever for such a task at shutdown. Python 3.11+ counts pending cancels."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling and cancelling())


class Background:
    """Short tasks nobody awaits (acks, clean-ups): kept until done; a failure is logged, not lost."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(aw)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Future[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.error("background task failed: %s: %s", type(exc).__name__, exc, exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, grace_s: float = 0.0) -> None:
        """Give what is still running ``grace_s`` to finish (an ack in flight), then cancel it."""
        if self._tasks and grace_s > 0:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        await cancel(*self._tasks)


class Incidents:
    """Counts one kind of recurring problem and logs it at most once per ``every_s`` (with how many were quiet)."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 10.0) -> None:
        self.what = what
        self.count = 0
        self._log = logger
        self._every = every_s
        self._next = 0.0
        self._quiet = 0

    def report(self, detail: object, exc: BaseException | None = None) -> None:
        """Count one incident; log it unless one was logged less than ``every_s`` ago.

        ``exc``: an unexpected exception whose traceback the log should carry (a bug, not bad input).
        """
        self.count += 1
        now = time.monotonic()
        if now < self._next:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last report)" if self._quiet else ""
        self._next, self._quiet = now + self._every, 0
        self._log.warning("%s: %s; %d so far%s", self.what, detail, self.count, more, exc_info=exc)


async def cancel(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` and wait until they end. Never raises what they raised: an error that ended a
    task is logged here (it would otherwise surface from whoever closes the component, or nowhere)."""
    live = [t for t in tasks if t is not None]
    for t in live:
        t.cancel()
    for t, outcome in zip(live, await asyncio.gather(*live, return_exceptions=True), strict=True):
        if isinstance(outcome, Exception):
            log.error("task %s had failed: %s: %s", _name(t), type(outcome).__name__, outcome, exc_info=outcome)


def _name(task: asyncio.Future[Any]) -> str:
    return task.get_name() if isinstance(task, asyncio.Task) else repr(task)
