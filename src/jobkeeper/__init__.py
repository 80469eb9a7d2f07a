"""jobkeeper: durable, cache-fast, replica-correct state for long-running jobs behind FastAPI.

Postgres is the source of truth; ``JobManager`` puts a bounded, version-aware hot cache in front.
"""

from jobkeeper.cache import CacheStats
from jobkeeper.domain.batch import JobSpec, Submitted
from jobkeeper.domain.questions import Escalate, Question, QuestionPage
from jobkeeper.domain.schedules import Schedule
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job, JobEvent, JobPage, Lease, Progress, WorkerInfo
from jobkeeper.errors import (
    ChildFailed,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobId,
    InvalidRequest,
    InvalidTransition,
    JobCancelled,
    JobFinished,
    JobkeeperError,
    JobNotFound,
    LeaseLost,
    PermanentFailure,
    QuestionChanged,
    QuestionClaimed,
    QueueFull,
    Retry,
    ScheduleExists,
    ScheduleNotFound,
    TenantRequired,
)
from jobkeeper.feed import FeedStatus
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.worker import JobContext, TaskRegistry, Worker

__all__ = [
    "CacheStats",
    "ChildFailed",
    "DatabaseUnavailable",
    "Escalate",
    "FeedStatus",
    "IdempotencyConflict",
    "InvalidJobId",
    "InvalidRequest",
    "InvalidTransition",
    "Job",
    "JobCancelled",
    "JobContext",
    "JobEvent",
    "JobFinished",
    "JobManager",
    "JobNotFound",
    "JobPage",
    "JobSpec",
    "JobStatus",
    "JobkeeperError",
    "Lease",
    "LeaseLost",
    "PermanentFailure",
    "Progress",
    "Question",
    "QuestionChanged",
    "QuestionClaimed",
    "QuestionPage",
    "QueueFull",
    "Retry",
    "Schedule",
    "ScheduleExists",
    "ScheduleNotFound",
    "Settings",
    "Submitted",
    "TaskRegistry",
    "TenantRequired",
    "Worker",
    "WorkerInfo",
]
