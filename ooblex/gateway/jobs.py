"""``/api/v1/jobs``: process every frame of a file, folder or URL on the gateway's workers.

Unlike live streams, jobs lose nothing and keep order (``ooblex.cluster.jobs.run_job``: a
stream in every-frame mode, redelivered if a worker dies). Sources and sinks are paths on the
gateway's machine, so the endpoints are control endpoints (bearer token when a secret is set).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from ..cluster.jobs import Job, start_job
from .control import require_control
from .state import gateway

router = APIRouter(tags=["jobs"], dependencies=[Depends(require_control)])

#: Jobs running at once per gateway; more are refused (429) rather than queued without bound.
MAX_RUNNING = 4
#: Finished jobs remembered for polling; the oldest finished ones are forgotten first.
MAX_KEPT = 64
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


@router.post("/api/v1/jobs", status_code=201)
async def create_job(request: Request, response: Response) -> dict[str, Any]:
    """Body ``{"thread": name, "source": path or URL, "sink": optional output path, "params": {...}}``."""
    body = await _json_object(request)
    thread, source, sink = body.get("thread"), body.get("source"), body.get("sink")
    params = body.get("params") or {}
    if not isinstance(thread, str) or not isinstance(source, str):
        raise ValueError('body needs "thread" and "source" strings, e.g. {"thread": "face_blur", '
                         '"source": "/data/clip.mp4"}')
    if not source.startswith(URL_SCHEMES) and not await asyncio.to_thread(Path(source).exists):
        raise ValueError(f"source {source!r} does not exist on the gateway's machine")
    if sink is not None and not isinstance(sink, str) or not isinstance(params, dict):
        raise ValueError('"sink" must be a path and "params" an object')
    jobs = _jobs(request)
    if sum(j.state == "running" for j in jobs.values()) >= MAX_RUNNING:
        raise HTTPException(429, f"{MAX_RUNNING} jobs are already running on this gateway; retry later")
    gw = gateway(request)
    gw.engine.resolve(thread).resolve_params(params)  # 404 / 400 now, not as a failed job later
    job = start_job(gw.engine, thread, source, sink, params=params)
    jobs[job.id] = job
    _forget_old(jobs)
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    return job.describe()


@router.get("/api/v1/jobs")
async def list_jobs(request: Request) -> list[dict[str, Any]]:
    return [j.describe() for j in _jobs(request).values()]


@router.get("/api/v1/jobs/{job_id}")
async def get_job(job_id: str, request: Request, results: bool = False) -> dict[str, Any]:
    """A job's state and progress; ``?results=true`` adds the per-frame JSON results once done."""
    job = _job(request, job_id)
    out = job.describe()
    if results and job.result is not None:
        out["results"] = [{"seq": seq, "result": r} for seq, r in job.result.results]
    return out


@router.delete("/api/v1/jobs/{job_id}", status_code=204)
async def cancel_job(job_id: str, request: Request) -> None:
    _job(request, job_id).cancel()


def _jobs(request: Request) -> dict[str, Job]:
    return gateway(request).jobs


def _job(request: Request, job_id: str) -> Job:
    job = _jobs(request).get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r} (GET /api/v1/jobs lists them)")
    return job


def _forget_old(jobs: dict[str, Job]) -> None:
    finished = [k for k, j in jobs.items() if j.state != "running"]
    for key in finished[: max(0, len(jobs) - MAX_KEPT)]:
        del jobs[key]


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ValueError("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body
