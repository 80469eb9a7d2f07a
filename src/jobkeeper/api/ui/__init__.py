"""The dashboard at ``/ui``: jobs, one job, the inbox of questions, workers and health.

``ui_router(caller=...)`` mounts it in an application (its own ``Caller`` dependency decides who
uses it); ``create_app`` mounts it with an API-key sign-in unless ``JOBKEEPER_UI=false``.
Everything it loads is served by the package itself (docs/ui.md).
"""

from jobkeeper.api.ui.docs import offline_docs
from jobkeeper.api.ui.routes import ui_router

__all__ = ["offline_docs", "ui_router"]
