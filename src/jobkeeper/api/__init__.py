"""jobkeeper's HTTP API (FastAPI): ``create_app`` for the service, or ``lifespan`` with
``create_router(caller=...)`` (the application's own auth) or ``jobs_router`` (jobkeeper's API
keys) to mount it into an existing application, beside ``create_inbox_router`` (``GET /inbox``)
and ``create_schedules_router`` (``/schedules``), which take the same ``caller``;
docs/embedding.md walks through it.
``ui_router(caller=...)`` is the dashboard (docs/ui.md)."""

from jobkeeper.api.app import create_app, lifespan
from jobkeeper.api.deps import CallerDependency, JobManagerDep, api_key_caller
from jobkeeper.api.health import health_router
from jobkeeper.api.inbox import create_inbox_router, inbox_router
from jobkeeper.api.routes import create_router, jobs_router
from jobkeeper.api.schedules import create_schedules_router, schedules_router
from jobkeeper.api.ui import ui_router
from jobkeeper.domain.values import Caller

__all__ = [
    "Caller",
    "CallerDependency",
    "JobManagerDep",
    "api_key_caller",
    "create_app",
    "create_inbox_router",
    "create_router",
    "create_schedules_router",
    "health_router",
    "inbox_router",
    "jobs_router",
    "lifespan",
    "schedules_router",
    "ui_router",
]
