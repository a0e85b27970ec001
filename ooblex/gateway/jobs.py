"""``/api/v1/jobs``: process every frame of a file, folder or URL on the gateway's workers.

Unlike live streams, jobs lose nothing and keep order (``ooblex.jobs.run_job``: a stream in
every-frame mode, redelivered if a worker dies); each runs as a task of the gateway that started it
(``start_job``), which keeps it for polling. Jobs touch the gateway's machine, so
they are confined: files only inside the media root (``media_root.py``), URLs only on the
allow-list (``url_sources.py``), video files as the only sinks; and they are control endpoints
(a ``control`` token when a secret is set).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from .. import routes
from ..engine import Engine
from ..errors import BadRequest, NotFound, TooManyRequests
from ..jobs import JobResult, run_job
from ..media import Source
from .auth import require_control
from .bodies import read_json
from .job_sources import job_error, open_file_source, url_source
from .media_root import MediaRoot
from .state import gateway
from .url_sources import URLPolicy

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_control)])

#: Finished jobs remembered for polling; the oldest finished ones are forgotten first.
MAX_KEPT = 64
EXAMPLE = '{"thread": "face_blur", "source": "clip.mp4", "sink": "out/clip-blurred.mp4"}'


JOB_BODY = {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["thread", "source"],
    "properties": {"thread": {"type": "string"}, "source": {"type": "string"}, "sink": {"type": "string"},
                   "params": {"type": "object"}, "overwrite": {"type": "boolean"}}}}}}


@dataclass
class Job:
    """A job running in the background of a gateway: poll ``describe()``, ``cancel()`` it."""

    id: str
    thread: str
    total: int | None = None
    done: int = 0
    state: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    result: JobResult | None = None
    task: asyncio.Task[Any] | None = None

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "thread": self.thread, "state": self.state, "done": self.done, "total": self.total,
                "error": self.error, "result": self.result.summary() if self.result else None}

    def cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


def start_job(engine: Engine, thread: str, source: Any, sink: Any = None,
              describe: Callable[[BaseException], str] = lambda e: f"{type(e).__name__}: {e}",
              **options: Any) -> Job:
    """Start ``run_job`` as a task on the running loop; returns at once with an unguessable job id.

    Raises ``UnknownThread``/``ValueError`` synchronously for a bad thread name or parameters.
    ``describe`` words a failure for ``Job.error``.
    """
    engine.resolve(thread)
    job = Job(secrets.token_urlsafe(12), thread)

    def progress(done: int, total: int | None) -> None:
        job.done, job.total = done, total

    async def go() -> None:
        try:
            job.result = await run_job(engine, thread, source, sink, progress=progress, **options)
            job.state = "done"
        except asyncio.CancelledError:
            job.state = "cancelled"
        except Exception as exc:  # noqa: BLE001 - reported through describe()
            job.state, job.error = "failed", describe(exc)

    job.task = asyncio.create_task(go(), name=f"job:{job.id}")
    return job



@router.post(routes.JOBS, status_code=201, openapi_extra={"requestBody": JOB_BODY})
async def create_job(request: Request, response: Response) -> dict[str, Any]:
    """Body ``{"thread", "source", "sink"?, "params"?, "overwrite"?}``.

    ``source``: a path in the media root (a video, an image or a folder of images) or an allowed
    URL; ``sink``: a new video file in the media root (``"overwrite": true`` to replace one).
    """
    gw = gateway(request)
    body = await read_json(request, gw.settings.max_json_bytes, EXAMPLE)
    thread, source, sink = body.get("thread"), body.get("source"), body.get("sink")
    params, overwrite = body.get("params") or {}, body.get("overwrite", False)
    if not isinstance(thread, str) or not isinstance(source, str):
        raise BadRequest(f'body needs "thread" and "source" strings, e.g. {EXAMPLE}')
    if sink is not None and not isinstance(sink, str) or not isinstance(params, dict) \
            or not isinstance(overwrite, bool):
        raise BadRequest('"sink" must be a path, "params" an object and "overwrite" true or false')
    jobs = gw.jobs
    if sum(j.state == "running" for j in jobs.values()) >= gw.settings.max_jobs:
        raise TooManyRequests(f"{gw.settings.max_jobs} jobs are already running on this gateway "
                              "(OOBLEX_MAX_JOBS); retry later")
    gw.engine.resolve(thread).resolve_params(params)  # 404 / 400 now, not as a failed job later
    root = MediaRoot(gw.settings.media_root)
    if URLPolicy.is_url(source):
        src: Any = url_source(source, await URLPolicy(gw.settings.source_hosts).check(source), gw.settings)
    else:
        path = await asyncio.to_thread(root.source, source)
        src = await asyncio.to_thread(open_file_source, path, root, gw.settings)
    try:
        snk = await asyncio.to_thread(root.sink, sink, overwrite) if sink is not None else None
    except BaseException:
        if isinstance(src, Source):
            src.close()
        raise
    job = start_job(gw.engine, thread, src, snk, params=params, describe=lambda e: job_error(e, root))
    jobs[job.id] = job
    _forget_old(jobs)
    response.headers["Location"] = routes.path(routes.JOB, job_id=job.id)
    return job.describe()


@router.get(routes.JOBS)
async def list_jobs(request: Request) -> list[dict[str, Any]]:
    return [j.describe() for j in gateway(request).jobs.values()]


@router.get(routes.JOB)
async def get_job(job_id: str, request: Request, results: bool = False) -> dict[str, Any]:
    """A job's state and progress; ``?results=true`` adds the per-frame JSON results once done."""
    job = _job(request, job_id)
    out = job.describe()
    if results and job.result is not None:
        out["results"] = [{"seq": seq, "result": r} for seq, r in job.result.results]
    return out


@router.delete(routes.JOB, status_code=204)
async def cancel_job(job_id: str, request: Request) -> None:
    _job(request, job_id).cancel()


def _job(request: Request, job_id: str) -> Job:
    job = gateway(request).jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r} (GET /api/v1/jobs lists them)")
    return job


def _forget_old(jobs: dict[str, Job]) -> None:
    finished = [k for k, j in jobs.items() if j.state != "running"]
    for key in finished[: max(0, len(jobs) - MAX_KEPT)]:
        del jobs[key]
