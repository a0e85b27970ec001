"""``ob.process``: every frame of a source through a thread deployed on the cluster, blocking until done.

Deploys the thread first unless the cluster already serves that exact code, then runs it as a job
(``ooblex.jobs.run_job``) on a ``ClusterEngine`` in a helper thread, so it is safe in notebooks.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from ..broker.base import redact
from ..errors import NotFound
from ..jobs import JobResult, Progress, run_job
from ..secret import ENV


def process(thread: str | Any, source: Any, cluster: str | None = None, *, store: str | None = None,
            sink: Any = None, params: dict[str, Any] | None = None, max_in_flight: int = 8,
            progress: bool | Progress = True, no_workers_s: float = 10.0, secret: str | None = None) -> JobResult:
    """Process every frame of ``source`` (video file, image, folder, list of arrays) on the cluster.

    ``thread``: a deployed name (``"blur"`` or ``"blur@3"``) or a tensor thread, which is deployed
    first unless the cluster already serves that exact code. Blocks until done (safe in notebooks).
    ``secret``: the cluster secret (default ``$OOBLEX_SECRET``), to verify what the registry says.
    """
    from ..thread import as_thread
    from .deploy import code_digest, deploy, deployment
    from .engine import ClusterEngine

    if not isinstance(thread, str):
        t = as_thread(thread)
        try:
            current = deployment(t.name, cluster, store=store, secret=secret)
            same = current.manifest.get("code") == code_digest(t)
        except LookupError:
            same = False
        if not same:
            deploy(t, cluster, store=store, secret=secret)
        thread = t.name
    box: dict[str, Any] = {}

    async def main() -> None:
        bar = _bar() if progress is True else None
        cb = (lambda d, total: bar(d, total)) if bar else (progress if callable(progress) else None)
        async with ClusterEngine(cluster, store=store, secret=secret) as engine:
            await _wait_thread(engine, thread, no_workers_s)
            box["r"] = await run_job(engine, thread, source, sink, params=params, max_in_flight=max_in_flight,
                                     progress=cb, no_workers_s=no_workers_s)
        if bar:
            bar(None, None)

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["e"] = exc

    t_ = threading.Thread(target=target, name="ooblex-process")
    t_.start()
    t_.join()
    if "e" in box:
        raise box["e"]
    return box["r"]


async def _wait_thread(engine: Any, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while name not in engine.threads:
        if time.monotonic() > deadline:
            unverifiable = "" if engine.registry.secret else f" (or cannot be verified: {ENV} is not set)"
            raise NotFound(f"{name!r} is not deployed on {redact(engine.config.broker)}{unverifiable}")
        await asyncio.sleep(0.1)
        await engine.sync()


def _bar() -> Callable[[int | None, int | None], None]:
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def update(done: int | None, total: int | None) -> None:
        if done is None:
            if "bar" in state:
                state["bar"].close()
            return
        if "bar" not in state:
            state["bar"] = tqdm(total=total, unit="frame")
        state["bar"].n = done
        state["bar"].refresh()

    return update
