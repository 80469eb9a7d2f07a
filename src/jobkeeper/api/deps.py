"""What the routes depend on: the services the lifespan built, and who is asking.

``Caller`` dependencies: any FastAPI dependency (a function, sync or async, with dependencies of
its own) that returns a ``Caller``. ``api_key_caller`` is jobkeeper's own (Bearer API keys); a
host application passes its own to ``create_router(caller=...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jobkeeper.api.auth import ApiKeys
from jobkeeper.api.problems import PROBLEM_RESPONSE, ProblemRoute
from jobkeeper.domain.values import Caller
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.settings import Settings

__all__ = [
    "ANONYMOUS",
    "DEV_TENANT",
    "CallerDependency",
    "JobManagerDep",
    "Services",
    "ServicesDep",
    "api_key_caller",
    "caller_router",
    "job_manager",
    "services",
]

DEV_TENANT = "default"
# who asks when auth is disabled (development only)
ANONYMOUS = "anonymous"

# a FastAPI dependency that says who is asking
CallerDependency = Callable[..., Caller | Awaitable[Caller]]


@dataclass(frozen=True, slots=True)
class Services:
    """Built once by the lifespan; reaches routes through ``request.state`` (no globals)."""

    settings: Settings
    jobs: JobManager
    keys: ApiKeys
    metrics: Metrics


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
    if svc.settings.auth == "disabled":
        return Caller(tenant=DEV_TENANT, principal=ANONYMOUS)
    return await svc.keys.caller_of(None if credentials is None else credentials.credentials)


def caller_router(prefix: str, tag: str, caller: CallerDependency) -> APIRouter:
    """A router for jobkeeper routes that ask ``caller`` who is calling: its routes answer their
    own errors as problems (``ProblemRoute``), and OpenAPI lists what every one of them may
    answer (a 401 only for jobkeeper's own keys: a custom caller's 401 is the application's)."""
    # declaring 422 replaces FastAPI's default schema for it
    responses: dict[int | str, dict[str, Any]] = {422: PROBLEM_RESPONSE, 503: PROBLEM_RESPONSE}
    if caller is api_key_caller:
        responses[401] = PROBLEM_RESPONSE
    return APIRouter(prefix=prefix, tags=[tag], responses=responses, route_class=ProblemRoute)
