"""The FastAPI application: ``create_app()`` for the whole service, or ``lifespan()`` and
``create_router(caller=...)`` (or ``jobs_router``) to mount jobkeeper into an existing app.

The lifespan opens the ``JobManager`` (and with it the change-feed listener), starts the cache
cleanup task and the sweeper, and closes all of them on shutdown. Logging is the application's to
configure; ``jobkeeper serve`` configures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp

from jobkeeper.api.auth import ApiKeys
from jobkeeper.api.deps import Services
from jobkeeper.api.health import health_router
from jobkeeper.api.inbox import inbox_router
from jobkeeper.api.middleware import BodyLimit, RequestContext
from jobkeeper.api.polled import PolledReads
from jobkeeper.api.problems import install
from jobkeeper.api.routes import jobs_router
from jobkeeper.api.schedules import schedules_router
from jobkeeper.api.ui import offline_docs, ui_router
from jobkeeper.maintenance import ExpiryHooks, Sweeper
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.settings import Settings

__all__ = ["create_app", "lifespan"]

log = logging.getLogger("jobkeeper.api")
CACHE_CLEANUP_SECONDS = 10.0

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]


async def _every(seconds: float, action: Callable[[], object]) -> None:
    while True:
        await asyncio.sleep(seconds)
        action()


def lifespan(settings: Settings | None = None, *, hooks: ExpiryHooks | None = None) -> Lifespan:
    """A lifespan that yields ``{"jobkeeper": Services}`` as request state for the routes.

    Its sweeper applies retention too; pass the same ``on_expire`` ``hooks`` your workers have
    (whichever process holds the sweeper lock runs them).
    """

    @asynccontextmanager
    async def run(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        config = settings or Settings()
        if config.auth == "disabled":
            log.warning(
                "JOBKEEPER_AUTH=disabled: every request is tenant 'default'. Never in production."
            )
        jobs = await JobManager.from_settings(config)
        metrics = Metrics(jobs)
        sweeper = Sweeper.from_settings(jobs, config, hooks=hooks, on_report=metrics.record_sweep)
        background = [
            asyncio.create_task(sweeper.run(), name="jobkeeper-sweeper"),
            asyncio.create_task(
                _every(CACHE_CLEANUP_SECONDS, jobs.cleanup_expired), name="jobkeeper-cache-cleanup"
            ),
        ]
        keys = ApiKeys(jobs, cache_ttl=config.key_cache_ttl)
        try:
            yield {"jobkeeper": Services(settings=config, jobs=jobs, keys=keys, metrics=metrics)}
        finally:
            for task in background:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*background, return_exceptions=True)
            await jobs.close()

    return run


class _Service(FastAPI):
    """``create_app``'s application: its middleware stack has ``PolledReads`` in front, unless
    the application added middleware of its own (which must see every request: the route
    answers the polled read then)."""

    own_middleware = 0  # how many of ``user_middleware`` create_app added

    def build_middleware_stack(self) -> ASGIApp:
        stack = super().build_middleware_stack()
        if len(self.user_middleware) > self.own_middleware:
            return stack
        return PolledReads(stack, self)


def create_app(settings: Settings | None = None, *, hooks: ExpiryHooks | None = None) -> FastAPI:
    """The complete jobkeeper HTTP service: the API, ``/docs`` (served offline) and, unless
    ``JOBKEEPER_UI=false``, the dashboard at ``/ui`` with an API-key sign-in."""
    config = settings or Settings()
    app = _Service(
        title="jobkeeper",
        summary="Durable state for long-running jobs: submit, watch, cancel, answer.",
        version="0.1.0",
        lifespan=lifespan(config, hooks=hooks),
        docs_url=None,  # FastAPI's loads Swagger UI from a CDN: offline_docs serves it itself
        redoc_url=None,
    )
    install(app)
    offline_docs(app)
    app.include_router(jobs_router)
    app.include_router(schedules_router)
    app.include_router(inbox_router)
    app.include_router(health_router)
    if config.ui:
        app.include_router(ui_router())
    app.add_middleware(BodyLimit, max_bytes=config.max_payload_bytes)
    app.add_middleware(RequestContext)  # outermost: every response, even a 413, has an id
    app.own_middleware = len(app.user_middleware)
    return app
