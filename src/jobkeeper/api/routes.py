"""The HTTP routes: thin (parse, call the manager, serialise). Errors become problems elsewhere."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse, ServerSentEvent

from jobkeeper.api.deps import CallerDep, ServicesDep, TenantDep
from jobkeeper.api.inbox import IfMatch, if_match_version
from jobkeeper.api.schemas import (
    CURSOR_PATTERN,
    AnswerIn,
    JobId,
    JobOut,
    JobPageOut,
    ResumeAfter,
    SubmitIn,
    iso,
    job_json,
)
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import KIND_PATTERN
from jobkeeper.errors import DatabaseUnavailable

__all__ = ["health_router", "jobs_router"]

_PROBLEM: dict[str, Any] = {
    "content": {"application/problem+json": {}},
    "description": "A problem (RFC 9457).",
}
# every jobs route may answer these; declaring 422 here replaces FastAPI's default schema for it
jobs_router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    responses={401: _PROBLEM, 422: _PROBLEM, 503: _PROBLEM},
)
health_router = APIRouter(tags=["health"])
_JOB = {"model": JobOut}
# OpenAPI links: the id of a job in a response is the {job_id} of every job operation
_JOB_OPERATIONS = {
    "GetJob": ("", "get"),
    "CancelJob": ("/cancel", "post"),
    "AnswerJob": ("/input", "post"),
    "GetQuestion": ("/input", "get"),
    "ClaimQuestion": ("/input/claim", "post"),
    "ReleaseQuestion": ("/input/release", "post"),
    "PinJob": ("/pin", "post"),
    "UnpinJob": ("/unpin", "post"),
    "JobEvents": ("/events", "get"),
}
_SUBMITTED = {
    **_JOB,
    "links": {
        name: {
            "operationRef": f"#/paths/~1jobs~1{{job_id}}{suffix.replace('/', '~1')}/{method}",
            "parameters": {"job_id": "$response.body#/id"},
        }
        for name, (suffix, method) in _JOB_OPERATIONS.items()
    },
}
SSE_PING_SECONDS = 15


def _job_response(job: Any, status_code: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(
        job_json(job), status_code=status_code, headers={"ETag": f'"{job.version}"', **headers}
    )


@jobs_router.post(
    "",
    status_code=201,
    responses={201: _SUBMITTED, 200: _SUBMITTED, 413: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM},
)
async def submit_job(
    body: SubmitIn,
    svc: ServicesDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JSONResponse:
    """Submit a job: 201 with ``Location``; a replay of the same ``Idempotency-Key`` and body
    returns the same job with 200."""
    job, created = await svc.jobs.submit_or_replay(
        tenant,
        body.kind,
        body.payload,
        idempotency_key=idempotency_key,
        concurrency_key=body.concurrency_key,
        priority=body.priority,
        max_attempts=body.max_attempts,
        run_after=body.run_after,
        pinned=body.pinned,
    )
    return _job_response(job, 201 if created else 200, Location=f"/jobs/{job.id}")


@jobs_router.get("", response_model=JobPageOut, responses={422: _PROBLEM})
async def list_jobs(
    svc: ServicesDep,
    tenant: TenantDep,
    status: JobStatus | None = None,
    kind: Annotated[
        str | None, Query(max_length=128, json_schema_extra={"pattern": KIND_PATTERN})
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
) -> JSONResponse:
    """The tenant's jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next page."""
    page = await svc.jobs.list(tenant=tenant, status=status, kind=kind, limit=limit, cursor=cursor)
    return JSONResponse(
        {"items": [job_json(j) for j in page.items], "next_cursor": page.next_cursor}
    )


@jobs_router.get(
    "/{job_id}",
    responses={200: _JOB, 304: {"description": "Not modified."}, 400: _PROBLEM, 404: _PROBLEM},
)
async def get_job(
    job_id: JobId,
    svc: ServicesDep,
    tenant: TenantDep,
    if_none_match: Annotated[str | None, Header()] = None,
    cache_control: Annotated[str | None, Header()] = None,
) -> Response:
    """The job. ``ETag`` is its version (``If-None-Match`` gives 304);
    ``Cache-Control: no-cache`` reads Postgres instead of this replica's cache."""
    strong = cache_control is not None and "no-cache" in cache_control.lower()
    job = await svc.jobs.get(job_id, tenant=tenant, consistency="strong" if strong else "cached")
    etag = f'"{job.version}"'
    if if_none_match is not None and (
        if_none_match.strip() == "*"
        or etag in (t.strip().removeprefix("W/") for t in if_none_match.split(","))
    ):
        return Response(status_code=304, headers={"ETag": etag})
    return _job_response(job)


@jobs_router.post(
    "/{job_id}/cancel",
    status_code=202,
    responses={202: _JOB, 400: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM},
)
async def cancel_job(job_id: JobId, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """Cancel: a queued or waiting job is cancelled at once, a running one gets
    ``cancel_requested`` and its worker stops it. 409 ``job_finished`` if already finished."""
    return _job_response(await svc.jobs.cancel(job_id, tenant=tenant), 202)


@jobs_router.post("/{job_id}/pin", responses={200: _JOB, 400: _PROBLEM, 404: _PROBLEM})
async def pin_job(job_id: JobId, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """Exempt the job from retention (input, job and history are kept)."""
    return _job_response(await svc.jobs.pin(job_id, tenant=tenant))


@jobs_router.post("/{job_id}/unpin", responses={200: _JOB, 400: _PROBLEM, 404: _PROBLEM})
async def unpin_job(job_id: JobId, svc: ServicesDep, tenant: TenantDep) -> JSONResponse:
    """Subject the job to retention again."""
    return _job_response(await svc.jobs.unpin(job_id, tenant=tenant))


@jobs_router.post(
    "/{job_id}/input",
    responses={
        200: _JOB,
        400: _PROBLEM,
        404: _PROBLEM,
        409: _PROBLEM,
        412: _PROBLEM,
        422: _PROBLEM,
    },
)
async def answer_job(
    job_id: JobId,
    body: AnswerIn,
    svc: ServicesDep,
    caller: CallerDep,
    if_match: IfMatch = None,
) -> JSONResponse:
    """Answer the job's open question; it is queued again to resume. 409 ``question_claimed``
    while someone else holds it; with ``If-Match``, 412 ``precondition_failed`` if the question
    changed since it was read."""
    job = await svc.jobs.answer(
        job_id,
        tenant=caller.tenant,
        answer=body.answer,
        answered_by=caller.principal,
        question_key=body.question_key,
        expected_version=if_match_version(if_match),
    )
    return _job_response(job)


@jobs_router.get(
    "/{job_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        204: {"description": "The job finished at or before the resume point: nothing follows."},
        400: _PROBLEM,
        404: _PROBLEM,
    },
)
async def job_events(
    job_id: JobId,
    svc: ServicesDep,
    tenant: TenantDep,
    start: ResumeAfter,
) -> Response:
    """The job's events as Server-Sent Events (``id`` = sequence, ``event`` = type, ``data`` =
    JSON), from after ``Last-Event-ID`` (or ``after``), live until the terminal event."""
    job = await svc.jobs.get(job_id, tenant=tenant)  # 400/404 before the stream starts
    if job.terminal and start >= job.version:
        # nothing will ever follow: 204 tells EventSource clients to stop reconnecting
        return Response(status_code=204)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in svc.jobs.watch(job.id, tenant=tenant, after=start):
            data = {
                "seq": event.seq,
                "type": event.type,
                "at": iso(event.at),
                "data": event.data,
            }
            yield ServerSentEvent(data=json.dumps(data), event=event.type, id=str(event.seq))

    return EventSourceResponse(stream(), ping=SSE_PING_SECONDS)


@health_router.get("/metrics", response_class=Response)
async def metrics(svc: ServicesDep) -> Response:
    """Prometheus metrics of this replica (counters) and of the shared queue (gauges)."""
    await svc.metrics.refresh()
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@health_router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@health_router.get("/readyz", responses={503: {"description": "Not ready."}})
async def readyz(svc: ServicesDep) -> JSONResponse:
    """Ready when Postgres answers and the change feed vouches for the cache."""
    feed = svc.jobs.feed_status()
    try:
        await svc.jobs.ping()
        database = True
    except DatabaseUnavailable:
        database = False
    ready = database and feed.connected and feed.vouching
    body = {
        "status": "ready" if ready else "not_ready",
        "database": database,
        "listener_connected": feed.connected,
        "cache_vouched": feed.vouching,
        "feed_lag_seconds": feed.seconds_since_sync,
        "feed_mode": feed.mode,
    }
    return JSONResponse(body, status_code=200 if ready else 503)
