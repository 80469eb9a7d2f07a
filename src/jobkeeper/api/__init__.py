"""jobkeeper's HTTP API (FastAPI): ``create_app`` for the service, or ``lifespan`` with
``create_router(caller=...)`` (the application's own auth) or ``jobs_router`` (jobkeeper's API
keys) to mount it into an existing application; docs/embedding.md walks through it.
``ui_router(caller=...)`` is the dashboard (docs/ui.md)."""

from jobkeeper.api.app import create_app, lifespan
from jobkeeper.api.deps import CallerDependency, JobManagerDep, api_key_caller
from jobkeeper.api.health import health_router
from jobkeeper.api.routes import create_router, jobs_router
from jobkeeper.api.ui import ui_router
from jobkeeper.domain.values import Caller

__all__ = [
    "Caller",
    "CallerDependency",
    "JobManagerDep",
    "api_key_caller",
    "create_app",
    "create_router",
    "health_router",
    "jobs_router",
    "lifespan",
    "ui_router",
]
