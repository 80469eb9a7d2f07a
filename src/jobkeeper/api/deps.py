"""What the routes depend on: the services the lifespan built, and the caller's tenant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from jobkeeper.api.auth import ApiKeys
from jobkeeper.domain.values import Caller
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.settings import Settings

__all__ = [
    "CallerDep",
    "Services",
    "ServicesDep",
    "TenantDep",
    "api_key_caller",
    "services",
    "tenant",
]

DEV_TENANT = "default"


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


async def tenant(
    svc: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The tenant of the caller's API key (every request with auth disabled: ``default``)."""
    if svc.settings.auth == "disabled":
        return DEV_TENANT
    return await svc.keys.tenant_of(authorization)


TenantDep = Annotated[str, Depends(tenant)]


async def api_key_caller(
    svc: ServicesDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Caller:
    """The caller of ``jobkeeper serve``: its API key's tenant, principal ``api-key:<key id>``,
    no roles (with auth disabled: tenant ``default``, principal ``anonymous``)."""
    if svc.settings.auth == "disabled":
        return Caller(DEV_TENANT, "anonymous")
    tenant, key_id = await svc.keys.owner_of(authorization)
    return Caller(tenant, f"api-key:{key_id}")


CallerDep = Annotated[Caller, Depends(api_key_caller)]
