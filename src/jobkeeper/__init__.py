"""jobkeeper: durable, cache-fast, replica-correct state for long-running jobs behind FastAPI.

Postgres is the source of truth; ``JobManager`` puts a bounded, version-aware hot cache in front.
"""

from jobkeeper.cache import CacheStats
from jobkeeper.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobId,
    InvalidRequest,
    InvalidTransition,
    JobFinished,
    JobkeeperError,
    JobNotFound,
    TenantRequired,
)
from jobkeeper.manager import JobManager
from jobkeeper.models import Job, JobEvent, JobPage, JobStatus, Progress
from jobkeeper.settings import Settings

__all__ = [
    "CacheStats",
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidJobId",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "JobEvent",
    "JobFinished",
    "JobManager",
    "JobNotFound",
    "JobPage",
    "JobStatus",
    "JobkeeperError",
    "Progress",
    "Settings",
    "TenantRequired",
]
