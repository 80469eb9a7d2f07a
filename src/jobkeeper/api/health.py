"""Health probes and metrics: ``/healthz``, ``/readyz``, ``/metrics``.

None of them asks who is calling (probes and Prometheus scrapers carry no credentials). A host
application that wants ``/metrics`` behind its own auth includes the router with its dependency:
``app.include_router(health_router, dependencies=[Depends(my_auth)])``.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from jobkeeper.api.deps import ServicesDep
from jobkeeper.errors import DatabaseUnavailable

__all__ = ["health_router"]

health_router = APIRouter(tags=["health"])


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
