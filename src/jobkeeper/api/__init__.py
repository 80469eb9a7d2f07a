"""jobkeeper's HTTP API (FastAPI): ``create_app`` for the service, or ``jobs_router`` with
``lifespan`` to mount it into an existing application; ``ui_router`` for the dashboard."""

from jobkeeper.api.app import create_app, lifespan
from jobkeeper.api.routes import jobs_router
from jobkeeper.api.ui import ui_router
from jobkeeper.domain.values import Caller

__all__ = ["Caller", "create_app", "jobs_router", "lifespan", "ui_router"]
