"""One asyncio loop on a daemon thread per kernel: live engines run here, never on the kernel's loop.

The kernel's own loop handles comm messages and cell execution; anything slow or awaiting there
would freeze the notebook. Widgets hand work to this loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable, Coroutine
from typing import Any

_lock = threading.Lock()
_shared: LoopThread | None = None


class LoopThread:
    """An event loop running forever on its own daemon thread."""

    def __init__(self, name: str = "ooblex-live") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> cf.Future[Any]:
        """Schedule ``coro`` on the loop; the returned future can be waited on from any other thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop's thread soon; returns at once."""
        self.loop.call_soon_threadsafe(fn, *args)

    @property
    def here(self) -> bool:
        """True when the caller runs on this loop's thread (waiting on it here would deadlock)."""
        return threading.current_thread() is self.thread


def shared_loop() -> LoopThread:
    """The kernel-wide loop thread, started on first use."""
    global _shared
    with _lock:
        if _shared is None or not _shared.thread.is_alive():
            _shared = LoopThread()
        return _shared
