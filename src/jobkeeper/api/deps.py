"""What the routes depend on: the services the lifespan built, and who is asking.

``Caller`` dependencies: any FastAPI dependency (a function, sync or async, with dependencies of
its own) that returns a ``Caller``. ``api_key_caller`` is jobkeeper's own (Bearer API keys); a
host application passes its own to ``create_router(caller=...)``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from sse_starlette import ServerSentEvent

from jobkeeper.api.auth import ApiKeys
from jobkeeper.api.problems import PROBLEM_RESPONSE, ProblemRoute
from jobkeeper.api.schemas import iso, job_json
from jobkeeper.domain.values import Caller, Job, JobEvent
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.settings import Settings

__all__ = [
    "ANONYMOUS",
    "DEV_TENANT",
    "CallerDependency",
    "Encoded",
    "JobManagerDep",
    "Services",
    "ServicesDep",
    "api_key_caller",
    "bearer_token",
    "caller_of_token",
    "caller_router",
    "job_manager",
    "services",
]

DEV_TENANT = "default"
ENCODED_JOBS = 4096  # encoded jobs kept (about 0.5 KiB each for small payloads)
EVENT_FRAMES = 4096  # encoded SSE frames kept (a few hundred bytes each for small data)
FRAME_KEPT_BYTES = 8192  # larger frames (a long question, a traceback) are encoded per send
# who asks when auth is disabled (development only)
ANONYMOUS = "anonymous"

# a FastAPI dependency that says who is asking
CallerDependency = Callable[..., Caller | Awaitable[Caller]]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A job at one version as ``GET /jobs/{job_id}`` answers it: its JSON, its ``ETag`` and the
    headers of a 200 (as Starlette's ``Response`` writes them)."""

    version: int
    body: bytes
    etag: str
    headers: list[tuple[bytes, bytes]]

    @staticmethod
    def of(job: Job) -> Encoded:
        body = bytes(JSONResponse(job_json(job)).body)
        etag = f'"{job.version}"'
        headers = [
            (b"etag", etag.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        return Encoded(job.version, body, etag, headers)


@dataclass(frozen=True, slots=True)
class Services:
    """Built once by the lifespan; reaches routes through ``request.state`` (no globals)."""

    settings: Settings
    jobs: JobManager
    keys: ApiKeys
    metrics: Metrics
    # a job's answer at its last version read, by id, for GET /jobs/{id}: a version names one
    # state of a job (its ETag says so), so a polled job is encoded once per change, not once
    # per read; at most ENCODED_JOBS jobs, the first stored goes first (a plain dict: this is
    # read on every poll, and an LRU's bookkeeping costs more than a rare re-encoding)
    encoded: dict[UUID, Encoded] = field(default_factory=dict)
    # a job's events as Server-Sent Events frames, by (job id, seq): an event never changes once
    # written, and every watcher of a job sends the same frames, so each is encoded once for all
    # of them instead of once per watcher; at most EVENT_FRAMES of at most FRAME_KEPT_BYTES each
    # (32 MiB at worst), the first stored goes first
    frames: dict[tuple[UUID, int], bytes] = field(default_factory=dict)

    def encoded_job(self, job: Job) -> Encoded:
        """``job``'s answer, encoded on its version's first read."""
        found = self.encoded.get(job.id)
        if found is None or found.version != job.version:
            if found is None and len(self.encoded) >= ENCODED_JOBS:
                del self.encoded[next(iter(self.encoded))]
            found = self.encoded[job.id] = Encoded.of(job)
        return found

    def event_frame(self, job_id: UUID, event: JobEvent) -> bytes:
        """``event`` of job ``job_id`` as ``GET /jobs/{id}/events`` sends it (``id`` = seq,
        ``event`` = type, ``data`` = JSON), encoded on its first send."""
        key = (job_id, event.seq)
        found = self.frames.get(key)
        if found is None:
            data = {"seq": event.seq, "type": event.type, "at": iso(event.at), "data": event.data}
            frame = ServerSentEvent(data=json.dumps(data), event=event.type, id=str(event.seq))
            found = frame.encode()
            if len(found) <= FRAME_KEPT_BYTES:
                if len(self.frames) >= EVENT_FRAMES:
                    del self.frames[next(iter(self.frames))]
                self.frames[key] = found
        return found


async def services(request: Request) -> Services:  # async: no threadpool hop per request
    found: Services = request.state.jobkeeper
    return found


ServicesDep = Annotated[Services, Depends(services)]


async def job_manager(svc: ServicesDep) -> JobManager:
    """The lifespan's ``JobManager``."""
    return svc.jobs


# the lifespan's JobManager, for the application's own routes too
JobManagerDep = Annotated[JobManager, Depends(job_manager)]

# Declares the scheme in OpenAPI; jobkeeper answers a missing key itself (a 401 problem).
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="jobkeeperApiKey",
    description="A jobkeeper API key (`jobkeeper keys create TENANT`).",
)


async def api_key_caller(
    svc: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller of an ``Authorization: Bearer <API key>``: the key's tenant, principal
    ``api-key:<key id>``. With ``JOBKEEPER_AUTH=disabled``, everyone is tenant ``default``,
    principal ``anonymous``."""
    return await caller_of_token(svc, None if credentials is None else credentials.credentials)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as ``_bearer`` reads it
    (``None`` when the header is missing, empty or of another scheme): for a route that reads
    the header itself rather than through FastAPI's dependency resolution."""
    scheme, credentials = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and credentials) or scheme.lower() != "bearer":
        return None
    return credentials


async def caller_of_token(svc: Services, token: str | None) -> Caller:
    """What ``api_key_caller`` answers for the Bearer ``token`` (``None``: none was sent)."""
    if svc.settings.auth == "disabled":
        return Caller(tenant=DEV_TENANT, principal=ANONYMOUS)
    return await svc.keys.caller_of(token)


def caller_router(prefix: str, tag: str, caller: CallerDependency) -> APIRouter:
    """A router for jobkeeper routes that ask ``caller`` who is calling: its routes answer their
    own errors as problems (``ProblemRoute``), and OpenAPI lists what every one of them may
    answer (a 401 only for jobkeeper's own keys: a custom caller's 401 is the application's)."""
    # declaring 422 replaces FastAPI's default schema for it
    responses: dict[int | str, dict[str, Any]] = {422: PROBLEM_RESPONSE, 503: PROBLEM_RESPONSE}
    if caller is api_key_caller:
        responses[401] = PROBLEM_RESPONSE
    return APIRouter(prefix=prefix, tags=[tag], responses=responses, route_class=ProblemRoute)
