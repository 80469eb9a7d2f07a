"""The jobkeeper error tree.

Every error carries a stable machine ``code`` (a ``snake_case`` string that clients may switch on);
the HTTP layer maps codes to statuses in one place. Messages are for people and may change.

    JobkeeperError
    ├── InvalidRequest              validation_error     bad input; nothing was written
    │   ├── TenantRequired          tenant_required
    │   └── InvalidJobId            invalid_job_id
    ├── JobNotFound                 job_not_found        missing, or owned by another tenant
    │   └── JobExpired              job_expired          it existed; retention removed it
    ├── ScheduleNotFound            schedule_not_found   missing, or owned by another tenant
    ├── ScheduleExists              schedule_exists      the tenant has a schedule of that name
    ├── InvalidTransition           invalid_transition   the job's status does not allow it
    │   └── JobFinished             job_finished         the job already reached a terminal status
    ├── IdempotencyConflict         idempotency_key_reused
    ├── QueueFull                   queue_full           backpressure; retry after ``retry_after`` s
    ├── InvalidAnswer               invalid_answer       the answer does not fit the question
    ├── NotWaitingForInput          not_waiting_for_input  no open question (or another one)
    ├── QuestionClaimed             question_claimed     someone else holds the question
    ├── QuestionChanged             precondition_failed  the question changed since it was read
    ├── SchemaMissing               schema_missing       the database was never migrated
    │   └── SchemaOutdated          schema_outdated      tables in the layout before schemas
    ├── DatabaseUnavailable         database_unavailable
    ├── LeaseLost                   lease_lost           a fenced write: the lease is gone
    └── LifespanFailed              lifespan_failed      a worker's task-registry lifespan failed

An error about one item of a batch (``JobManager.submit_many``) is raised with ``index``, the
item's position, and its message starts with ``item <index>:``; otherwise ``index`` is ``None``.

Raised by handlers to steer the worker (not errors of jobkeeper itself):

    Retry(delay=None)               retry this job (after ``delay`` s, else the backoff)
    PermanentFailure                fail this job now, without retrying
    └── ChildFailed                 raised by ``ctx.wait_for``: a child did not succeed
    JobCancelled                    raised by ``JobContext.raise_if_cancelled()``
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar, Self
from uuid import UUID

from jobkeeper.clock import utc_text

__all__ = [
    "DatabaseUnavailable",
    "IdempotencyConflict",
    "InvalidAnswer",
    "InvalidJobId",
    "InvalidRequest",
    "InvalidTransition",
    "JobCancelled",
    "JobExpired",
    "JobFinished",
    "JobNotFound",
    "JobkeeperError",
    "LeaseLost",
    "NotWaitingForInput",
    "PermanentFailure",
    "QuestionChanged",
    "QuestionClaimed",
    "QueueFull",
    "Retry",
    "ScheduleExists",
    "ScheduleNotFound",
    "SchemaMissing",
    "TenantRequired",
]


class JobkeeperError(Exception):
    """Base of every error jobkeeper raises on purpose."""

    code: ClassVar[str] = "jobkeeper_error"
    # the position of the batch item this error is about (``submit_many``); None otherwise
    index: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def at_item(self, index: int) -> Self:
        """This error, as one about item ``index`` of a batch: ``index`` set, the message
        prefixed with it."""
        self.index = index
        self.message = f"item {index}: {self.message}"
        self.args = (self.message,)
        return self


class InvalidRequest(JobkeeperError):
    """An argument failed validation; nothing was read or written."""

    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TenantRequired(InvalidRequest):
    """The tenant was missing or blank: every job belongs to exactly one tenant."""

    code = "tenant_required"

    def __init__(self) -> None:
        super().__init__("tenant", "a non-empty tenant is required")


class InvalidJobId(InvalidRequest):
    """A job id that is not a UUID."""

    code = "invalid_job_id"

    def __init__(self, value: object) -> None:
        super().__init__("job_id", f"not a UUID: {value!r}")
        self.value = value


class JobNotFound(JobkeeperError):
    """No such job for this tenant (a job of another tenant is reported the same way)."""

    code = "job_not_found"

    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobExpired(JobNotFound):
    """The job existed but retention removed it at ``expired_at`` (its tombstone remains for a
    while, so this is told apart from a job that never existed)."""

    code = "job_expired"

    def __init__(self, job_id: UUID, expired_at: datetime) -> None:
        super().__init__(job_id)
        moment = utc_text(expired_at)
        self.message = f"job {job_id} expired at {moment}"
        self.args = (self.message,)
        self.expired_at = expired_at


class ScheduleNotFound(JobkeeperError):
    """No such schedule for this tenant (another tenant's is reported the same way)."""

    code = "schedule_not_found"

    def __init__(self, schedule_id: UUID) -> None:
        super().__init__(f"schedule {schedule_id} not found")
        self.schedule_id = schedule_id


class ScheduleExists(JobkeeperError):
    """The tenant already has a schedule of this name; nothing was written."""

    code = "schedule_exists"

    def __init__(self, name: str) -> None:
        super().__init__(f"a schedule named {name!r} exists already")
        self.name = name


class InvalidTransition(JobkeeperError):
    """The job's current status does not allow the requested change."""

    code = "invalid_transition"

    def __init__(self, job_id: UUID, current: str, requested: str) -> None:
        super().__init__(f"job {job_id} is {current}; cannot become {requested}")
        self.job_id = job_id
        self.current = current
        self.requested = requested


class JobFinished(InvalidTransition):
    """The job is already succeeded, failed or cancelled, so it cannot change any more."""

    code = "job_finished"


class IdempotencyConflict(JobkeeperError):
    """The idempotency key was already used by this tenant for a different request."""

    code = "idempotency_key_reused"

    def __init__(self, idempotency_key: str, job_id: UUID) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was used for a different request (job {job_id})"
        )
        self.idempotency_key = idempotency_key
        self.job_id = job_id


class SchemaMissing(JobkeeperError):
    """The database has no jobkeeper tables in ``schema`` (or not all of them): migrate it."""

    code = "schema_missing"

    def __init__(self, schema: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"jobkeeper's tables are not in schema {schema!r} (or not all of them): run "
            f"`jobkeeper migrate --schema {schema}`, or jobkeeper.migrate.upgrade(..., "
            f"schema={schema!r}) from your application's own Alembic revision"
        )
        self.schema = schema


class SchemaOutdated(SchemaMissing):
    """jobkeeper's tables are in ``public`` with Alembic's default version table: the layout
    before jobkeeper had a schema of its own."""

    code = "schema_outdated"

    def __init__(self, schema: str) -> None:
        super().__init__(
            schema,
            f"jobkeeper's tables are in schema 'public' with Alembic's default version table "
            f"(the layout before jobkeeper had a schema of its own), not in {schema!r}: migrate "
            f"schema {schema!r} with `jobkeeper migrate --schema {schema}` and move the jobs over, "
            "or start from a fresh database",
        )


class DatabaseUnavailable(JobkeeperError):
    """Postgres could not be reached; the operation did not happen (or its outcome is unknown)."""

    code = "database_unavailable"


class LeaseLost(JobkeeperError):
    """The worker no longer holds the job's lease (it expired, or the job was recovered and may
    run elsewhere), so a write fenced by it (``JobContext.fenced``) must not happen: roll back
    the transaction it was in. Nothing was written."""

    code = "lease_lost"

    def __init__(self, job_id: UUID) -> None:
        super().__init__(f"the lease on job {job_id} is no longer held; another worker may own it")
        self.job_id = job_id


class LifespanFailed(JobkeeperError):
    """The task registry's ``lifespan`` raised as a worker entered it; the worker did not start."""

    code = "lifespan_failed"

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the task registry's lifespan failed to start: {cause!r}")


class QueueFull(JobkeeperError):
    """The tenant's queue (or the kind's) is at its configured limit; nothing was written."""

    code = "queue_full"

    def __init__(
        self, tenant: str, limit: int, retry_after: float, kind: str | None = None
    ) -> None:
        scope = f"tenant {tenant!r}" + (f", kind {kind!r}" if kind else "")
        super().__init__(f"queue full for {scope}: {limit} jobs queued; retry in {retry_after:g} s")
        self.tenant = tenant
        self.limit = limit
        self.retry_after = retry_after
        self.kind = kind


class InvalidAnswer(JobkeeperError):
    """An answer that does not validate against the question's JSON Schema or choices."""

    code = "invalid_answer"

    def __init__(self, job_id: UUID, problems: list[str]) -> None:
        super().__init__(f"invalid answer for job {job_id}: " + "; ".join(problems))
        self.job_id = job_id
        self.problems = problems


class NotWaitingForInput(JobkeeperError):
    """The job has no open question (or not the one answered): nothing was changed."""

    code = "not_waiting_for_input"

    def __init__(self, job_id: UUID, status: str, question_key: str | None = None) -> None:
        what = f"question {question_key!r}" if question_key else "input"
        super().__init__(f"job {job_id} is {status}, not waiting for {what}")
        self.job_id = job_id
        self.status = status
        self.question_key = question_key


class QuestionClaimed(JobkeeperError):
    """Someone else holds the job's question (``claimed_by`` until ``claim_expires_at``): take
    it over explicitly (``claim_question(..., takeover=True)``) to answer it; nothing was
    changed."""

    code = "question_claimed"

    def __init__(self, job_id: UUID, claimed_by: str, claim_expires_at: datetime) -> None:
        super().__init__(
            f"the question of job {job_id} is held by {claimed_by}"
            f" until {utc_text(claim_expires_at)}"
        )
        self.job_id = job_id
        self.claimed_by = claimed_by
        self.claim_expires_at = claim_expires_at


class QuestionChanged(JobkeeperError):
    """The question is no longer in the version the answer was for (asked anew or escalated
    since it was read): read it again; nothing was changed."""

    code = "precondition_failed"

    def __init__(self, job_id: UUID, expected_version: int, current_version: int | None) -> None:
        now = "no open question" if current_version is None else f"version {current_version}"
        super().__init__(
            f"the question of job {job_id} changed: expected version {expected_version}, {now}"
        )
        self.job_id = job_id
        self.expected_version = expected_version
        self.current_version = current_version


class Retry(Exception):
    """Raised by a handler: run the job again, after ``delay`` seconds (default: the backoff),
    if attempts remain; otherwise it fails."""

    def __init__(self, reason: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


class PermanentFailure(Exception):
    """Raised by a handler: fail the job now; retrying cannot help."""


class ChildFailed(PermanentFailure):
    """Raised by ``ctx.wait_for`` (``on_failure="fail"``, the default) when a child job did not
    succeed: the parent fails at once (code ``child_failed``; a re-run would find the same
    outcomes). ``failed`` maps each such child's id to its status."""

    code = "child_failed"

    def __init__(self, failed: Mapping[UUID, str]) -> None:
        listed = ", ".join(f"{job_id} ({status})" for job_id, status in failed.items())
        super().__init__(f"child jobs did not succeed: {listed}")
        self.failed = dict(failed)


class JobCancelled(Exception):
    """Raised inside a handler by ``JobContext.raise_if_cancelled()`` once cancel was requested."""
