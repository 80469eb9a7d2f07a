"""The jobs routes: thin (parse, call the manager, serialise), for whoever the ``caller``
dependency says is asking.

``create_router(caller=...)`` builds them on the application's own auth; ``jobs_router`` is the
router on jobkeeper's API keys. Their errors are problems wherever they are mounted
(``ProblemRoute``); ``Location`` and the OpenAPI links follow the prefix they are mounted under.
"""

# No ``from __future__ import annotations``: the routes are defined inside ``create_router`` and
# their parameters name its ``caller`` dependency, which FastAPI cannot resolve from a string.

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from jobkeeper.api.deps import (
    CallerDependency,
    Services,
    ServicesDep,
    api_key_caller,
    bearer_token,
    caller_of_token,
    caller_router,
)
from jobkeeper.api.inbox import (
    ClaimIn,
    IfMatch,
    QuestionOut,
    if_match_version,
    question_response,
)
from jobkeeper.api.problems import (
    PROBLEM_RESPONSE,
    ApiProblem,
    Handler,
    ProblemRoute,
    answering_problems,
)
from jobkeeper.api.schemas import (
    CURSOR_PATTERN,
    AnswerIn,
    BatchIn,
    BatchOut,
    JobId,
    JobOut,
    JobPageOut,
    ResumeAfter,
    SubmitIn,
    job_json,
)
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import KIND_PATTERN
from jobkeeper.domain.values import Caller, Job
from jobkeeper.manager import Consistency

__all__ = ["consistency_of", "create_router", "jobs_router", "not_modified"]

_PROBLEM = PROBLEM_RESPONSE
_JOB = {"model": JobOut}
_QUESTION: dict[int | str, dict[str, Any]] = {
    200: {"model": QuestionOut},
    400: _PROBLEM,
    404: _PROBLEM,
    409: _PROBLEM,
}
# OpenAPI links: the id of a job in a response is the {job_id} of every job operation (by
# operationId, so they hold under any prefix the router is mounted at)
_JOB_OPERATIONS = (
    "getJob",
    "cancelJob",
    "answerJob",
    "getQuestion",
    "claimQuestion",
    "releaseQuestion",
    "pinJob",
    "unpinJob",
    "jobEvents",
)
_SUBMITTED = {
    **_JOB,
    "links": {
        operation[0].upper() + operation[1:]: {
            "operationId": operation,
            "parameters": {"job_id": "$response.body#/id"},
        }
        for operation in _JOB_OPERATIONS
    },
}
# the route a new job's ``Location`` points at; named for jobkeeper, not to clash with the app's
_GET_JOB = "jobkeeper.get_job"
SSE_PING_SECONDS = 15


def _job_response(job: Job, status_code: int = 200, **headers: str) -> JSONResponse:
    return JSONResponse(
        job_json(job), status_code=status_code, headers={"ETag": f'"{job.version}"', **headers}
    )


def _location(request: Request, job: Job) -> str:
    """The path of the job's own route, as the client reaches it: with the prefix the router is
    mounted under and the ``root_path`` a proxy or a mount sets."""
    return request.url_for(_GET_JOB, job_id=str(job.id)).path


def not_modified(etag: str, if_none_match: str | None) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (or is ``*``): the read answers 304."""
    if if_none_match is None:
        return False
    if if_none_match == etag:  # what a polling client sends: the ETag it was given
        return True
    return if_none_match.strip() == "*" or etag in (
        t.strip().removeprefix("W/") for t in if_none_match.split(",")
    )


def consistency_of(cache_control: str | None) -> Consistency:
    """``strong`` (read Postgres, not this replica's cache) when ``Cache-Control`` asks for
    ``no-cache``."""
    strong = cache_control is not None and "no-cache" in cache_control.lower()
    return "strong" if strong else "cached"


async def _read_job(
    svc: Services, who: Caller, job_id: str, if_none_match: str | None, cache_control: str | None
) -> Response:
    """``GET /jobs/{job_id}``: the job with its ``ETag``, or 304 when ``If-None-Match`` names
    it; ``Cache-Control: no-cache`` reads Postgres instead of this replica's cache."""
    job = await svc.jobs.get(job_id, tenant=who.tenant, consistency=consistency_of(cache_control))
    encoded = svc.encoded_job(job)
    if not_modified(encoded.etag, if_none_match):
        return Response(status_code=304, headers={"ETag": encoded.etag})
    return Response(encoded.body, media_type="application/json", headers={"ETag": encoded.etag})


class _KeyedReadRoute(ProblemRoute):
    """``GET /jobs/{job_id}`` on jobkeeper's own API keys (``api_key_caller``), answered without
    FastAPI's dependency resolution, which the profile in docs/benchmarks.md showed to be the
    largest cost of a cached read: the handler reads the ``Authorization``, ``If-None-Match`` and
    ``Cache-Control`` headers as the declared parameters do, so the answers (and the OpenAPI,
    made from the declared endpoint) are the same. With ``app.dependency_overrides`` set, the
    declared endpoint answers, so overrides keep working."""

    def get_route_handler(self) -> Handler:
        declared = super().get_route_handler()

        async def read(request: Request) -> Response:
            if getattr(request.app, "dependency_overrides", None):
                return await declared(request)
            headers = request.headers
            svc: Services = request.state.jobkeeper
            who = await caller_of_token(svc, bearer_token(headers.get("authorization")))
            return await _read_job(
                svc,
                who,
                request.path_params["job_id"],
                headers.get("if-none-match"),
                headers.get("cache-control"),
            )

        return answering_problems(read)


def create_router(*, caller: CallerDependency = api_key_caller) -> APIRouter:
    """The jobs routes (``/jobs``...), each asking ``caller`` who is calling.

    ``caller`` is any FastAPI dependency returning a ``Caller``: its ``tenant`` scopes every
    job the routes read or write, its ``principal`` is recorded as ``answered_by`` and
    ``cancelled_by``. Its own errors (the application's 401, say) reach the client as the
    application answers them; the routes' own errors are problems (``application/problem+json``)
    with or without ``jobkeeper.api.problems.install``. Mount it with ``app.include_router``
    (any prefix) under an app whose lifespan runs ``jobkeeper.api.lifespan``.
    """
    CallerDep = Annotated[Caller, Depends(caller)]
    router = caller_router("/jobs", "jobs", caller)

    @router.post(
        "",
        status_code=201,
        operation_id="submitJob",
        responses={201: _SUBMITTED, 200: _SUBMITTED, 413: _PROBLEM, 422: _PROBLEM, 429: _PROBLEM},
    )
    async def submit_job(
        body: SubmitIn,
        request: Request,
        svc: ServicesDep,
        who: CallerDep,
        idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
    ) -> JSONResponse:
        """Submit a job: 201 with ``Location``; a replay of the same ``Idempotency-Key`` and
        body returns the same job with 200."""
        job, created = await svc.jobs.submit_or_replay(
            who.tenant,
            body.kind,
            body.payload,
            idempotency_key=idempotency_key,
            concurrency_key=body.concurrency_key,
            priority=body.priority,
            max_attempts=body.max_attempts,
            run_after=body.run_after,
            pinned=body.pinned,
        )
        status = 201 if created else 200
        return _job_response(job, status, Location=_location(request, job))

    @router.post(
        ":batch",
        status_code=201,
        operation_id="submitJobs",
        responses={
            201: {"model": BatchOut, "description": "At least one job was created."},
            200: {"model": BatchOut, "description": "Every item was an idempotent replay."},
            404: _PROBLEM,
            413: _PROBLEM,
            422: _PROBLEM,
            429: _PROBLEM,
        },
    )
    async def submit_jobs(body: BatchIn, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """Submit many jobs at once, all or nothing: one ``{created, job}`` per item, in order.
        A refused item (its index in the problem's ``index``, or in ``errors[].loc``), a key
        reused for another job (422), an expired job's key (404 ``job_expired``) or a full
        queue (429) writes nothing."""
        if len(body.jobs) > svc.settings.max_batch:
            raise ApiProblem(
                "batch_too_large",
                f"{len(body.jobs)} jobs; at most {svc.settings.max_batch} per batch",
                max_batch=svc.settings.max_batch,
            )
        # an item's fields are JobSpec's
        submitted = await svc.jobs.submit_many(who.tenant, [dict(item) for item in body.jobs])
        return JSONResponse(
            {"jobs": [{"created": s.created, "job": job_json(s.job)} for s in submitted]},
            status_code=201 if any(s.created for s in submitted) else 200,
        )

    @router.get("", response_model=JobPageOut, operation_id="listJobs")
    async def list_jobs(
        svc: ServicesDep,
        who: CallerDep,
        status: JobStatus | None = None,
        kind: Annotated[
            str | None, Query(max_length=128, json_schema_extra={"pattern": KIND_PATTERN})
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN)] = None,
    ) -> JSONResponse:
        """The tenant's jobs, newest first; pass ``next_cursor`` as ``cursor`` for the next
        page."""
        page = await svc.jobs.list(
            tenant=who.tenant, status=status, kind=kind, limit=limit, cursor=cursor
        )
        return JSONResponse(
            {"items": [job_json(j) for j in page.items], "next_cursor": page.next_cursor}
        )

    async def get_job(
        job_id: JobId,
        svc: ServicesDep,
        who: CallerDep,
        if_none_match: Annotated[str | None, Header()] = None,
        cache_control: Annotated[str | None, Header()] = None,
    ) -> Response:
        """The job. ``ETag`` is its version (``If-None-Match`` gives 304);
        ``Cache-Control: no-cache`` reads Postgres instead of this replica's cache."""
        return await _read_job(svc, who, job_id, if_none_match, cache_control)

    # the route clients poll: on jobkeeper's own keys it reads its headers itself (same answers)
    router.add_api_route(
        "/{job_id}",
        get_job,
        methods=["GET"],
        name=_GET_JOB,
        operation_id="getJob",
        responses={
            200: _JOB,
            304: {"description": "Not modified."},
            400: _PROBLEM,
            404: _PROBLEM,
        },
        route_class_override=_KeyedReadRoute if caller is api_key_caller else None,
    )

    @router.post(
        "/{job_id}/cancel",
        status_code=202,
        operation_id="cancelJob",
        responses={202: _JOB, 400: _PROBLEM, 404: _PROBLEM, 409: _PROBLEM},
    )
    async def cancel_job(job_id: JobId, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """Cancel: a queued or waiting job is cancelled at once, a running one gets
        ``cancel_requested`` and its worker stops it. 409 ``job_finished`` if already finished.
        The event records the caller as ``cancelled_by``."""
        job = await svc.jobs.cancel(job_id, tenant=who.tenant, cancelled_by=who.principal)
        return _job_response(job, 202)

    @router.post(
        "/{job_id}/pin",
        operation_id="pinJob",
        responses={200: _JOB, 400: _PROBLEM, 404: _PROBLEM},
    )
    async def pin_job(job_id: JobId, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """Exempt the job from retention (input, job and history are kept)."""
        return _job_response(await svc.jobs.pin(job_id, tenant=who.tenant))

    @router.post(
        "/{job_id}/unpin",
        operation_id="unpinJob",
        responses={200: _JOB, 400: _PROBLEM, 404: _PROBLEM},
    )
    async def unpin_job(job_id: JobId, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """Subject the job to retention again."""
        return _job_response(await svc.jobs.unpin(job_id, tenant=who.tenant))

    @router.post(
        "/{job_id}/input",
        operation_id="answerJob",
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
        job_id: JobId, body: AnswerIn, svc: ServicesDep, who: CallerDep, if_match: IfMatch = None
    ) -> JSONResponse:
        """Answer the job's open question; it is queued again to resume. The answer records
        the caller as ``answered_by``. 409 ``question_claimed`` while someone else holds it;
        with ``If-Match``, 412 ``precondition_failed`` if the question changed since it was
        read."""
        job = await svc.jobs.answer(
            job_id,
            tenant=who.tenant,
            answer=body.answer,
            answered_by=who.principal,
            question_key=body.question_key,
            expected_version=if_match_version(if_match),
        )
        return _job_response(job)

    @router.get("/{job_id}/input", operation_id="getQuestion", responses=_QUESTION)
    async def get_question(job_id: JobId, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """The job's open question and who holds it (``ETag``: its version). 409
        ``not_waiting_for_input`` if it waits for nothing."""
        return question_response(await svc.jobs.question(job_id, tenant=who.tenant))

    @router.post("/{job_id}/input/claim", operation_id="claimQuestion", responses=_QUESTION)
    async def claim_question(
        job_id: JobId,
        svc: ServicesDep,
        who: CallerDep,
        body: Annotated[ClaimIn | None, Body()] = None,
    ) -> JSONResponse:
        """Hold the question for a few minutes (again: renew) so that only the caller may
        answer it. 409 ``question_claimed`` while someone else holds it, unless ``takeover``
        (recorded in the job's events)."""
        takeover = body is not None and body.takeover
        held = await svc.jobs.claim_question(job_id, who.tenant, who.principal, takeover=takeover)
        return question_response(held)

    @router.post("/{job_id}/input/release", operation_id="releaseQuestion", responses=_QUESTION)
    async def release_question(job_id: JobId, svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """Give the question back (nothing to do if the caller holds none); 409
        ``question_claimed`` if someone else holds it."""
        return question_response(await svc.jobs.release_question(job_id, who.tenant, who.principal))

    @router.get(
        "/{job_id}/events",
        operation_id="jobEvents",
        response_class=EventSourceResponse,
        responses={
            200: {"content": {"text/event-stream": {}}},
            204: {
                "description": "The job finished at or before the resume point: nothing follows."
            },
            400: _PROBLEM,
            404: _PROBLEM,
        },
    )
    async def job_events(
        job_id: JobId, svc: ServicesDep, who: CallerDep, start: ResumeAfter
    ) -> Response:
        """The job's events as Server-Sent Events (``id`` = sequence, ``event`` = type,
        ``data`` = JSON), from after ``Last-Event-ID`` (or ``after``), live until the terminal
        event."""
        job = await svc.jobs.get(job_id, tenant=who.tenant)  # 400/404 before the stream starts
        if job.terminal and start >= job.version:
            # nothing will ever follow: 204 tells EventSource clients to stop reconnecting
            return Response(status_code=204)
        return EventSourceResponse(_stream(svc, job, who.tenant, start), ping=SSE_PING_SECONDS)

    return router


async def _stream(svc: Services, job: Job, tenant: str, after: int) -> AsyncIterator[bytes]:
    async for event in svc.jobs.watch(job.id, tenant=tenant, after=after):
        yield svc.event_frame(job.id, event)


# the jobs routes on jobkeeper's own API keys (``Authorization: Bearer <key>``)
jobs_router = create_router()
