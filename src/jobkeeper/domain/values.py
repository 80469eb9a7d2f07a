"""Immutable values: a job, its history, a lease, a page, a validated submission.

A ``Job`` is a frozen snapshot of one committed row. Its JSON fields (payload, result, error) are
deep-frozen (``FrozenDict`` and tuples), so a job handed out by the cache cannot be mutated by one
caller under another's feet, yet it still serialises with ``json.dumps`` as plain JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from uuid import UUID

from jobkeeper.domain.status import TERMINAL, JobStatus

__all__ = [
    "Caller",
    "FrozenDict",
    "Job",
    "JobCounts",
    "JobEvent",
    "JobLease",
    "JobPage",
    "Lease",
    "NewJob",
    "Progress",
    "WorkerInfo",
    "freeze_json",
    "job_of",
    "new_job_of",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Frozen = TypeVar("_Frozen", bound="DataclassInstance")


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses mutation; ``json.dumps`` still sees a plain JSON object."""

    __slots__ = ()

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("job snapshots are immutable; copy with dict(...) to change one")

    __setitem__ = _readonly
    __delitem__ = _readonly
    __ior__ = _readonly
    clear = _readonly
    pop = _readonly
    popitem = _readonly
    setdefault = _readonly
    update = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def freeze_json(value: Any) -> Any:
    """Deep-freeze a JSON value: objects become ``FrozenDict``, arrays become tuples."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking: the tenant whose jobs they may see, who they are, and their roles.

    ``principal`` names a person or a service (``"user:alice"``, ``"api-key:<key id>"``); it is
    what ``answered_by`` and the audit trail record, so it must never hold any part of a secret.
    ``roles`` are the roles an assignee such as ``"role:underwriter"`` is matched against.
    """

    tenant: str
    principal: str
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running job got: a fraction in [0, 1] and a short message, both optional."""

    fraction: float | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One committed version of a job. Newer versions have a larger ``version``."""

    id: UUID
    tenant: str
    kind: str
    status: JobStatus
    payload: Any
    result: Any
    error: Any
    progress: Progress
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    idempotency_key: str | None
    concurrency_key: str | None
    cancel_requested: bool
    pinned: bool
    version: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    prompt: Any = None  # the open question while waiting_input, else None
    answers: Any = field(default_factory=lambda: FrozenDict())  # key -> answer, who, when
    checkpoints: Any = field(default_factory=lambda: FrozenDict())  # key -> stored result
    schedule_id: UUID | None = None  # the schedule that submitted it, if one did
    scheduled_for: datetime | None = None  # and the tick it stands for
    # the open question's deadline, version (it changes when the question does) and claim
    input_deadline: datetime | None = None
    question_version: int | None = None
    claimed_by: str | None = None
    claim_expires_at: datetime | None = None
    # workflows: the job that spawned this one, the children it waits for (waiting_children),
    # and the wake-up time of the durable sleep it is parked in
    parent_id: UUID | None = None
    waiting_for: tuple[UUID, ...] | None = None
    sleeping_until: datetime | None = None
    # the W3C trace context of the span that submitted it ({"traceparent": ..., ...}), if traced
    trace_context: Any = None

    @property
    def terminal(self) -> bool:
        """Whether the job reached succeeded, failed or cancelled."""
        return self.status in TERMINAL


def _slot_built(cls: type[_Frozen]) -> Callable[..., _Frozen]:
    """A constructor of the frozen slotted dataclass ``cls`` that takes every field's value, in
    declaration order. The frozen ``__init__`` sets each field through ``object.__setattr__``;
    the slots' own setters take a third of that time, which counts where thousands are built at
    once (the jobs of a claim, the drafts of a batch). The field count is checked; the order is
    the caller's to keep (tests compare what such callers build with the rows read back)."""
    setters = tuple(getattr(cls, f.name).__set__ for f in fields(cls))
    new = object.__new__

    def build(*values: Any) -> _Frozen:
        built: _Frozen = new(cls)
        for set_slot, value in zip(setters, values, strict=True):
            set_slot(built, value)
        return built

    return build


job_of = _slot_built(Job)


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job and the token that fences every write of the worker holding it."""

    job: Job
    token: UUID


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker process, as recorded in the ``workers`` table."""

    id: UUID
    host: str
    pid: int
    kinds: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's history. ``seq`` equals the job's ``version`` after the change."""

    seq: int
    type: str
    data: Any
    at: datetime


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first; pass ``next_cursor`` back for the next page."""

    items: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to insert. ``fingerprint`` identifies the request (only
    one with an idempotency key needs it: it tells a replay from a reuse of the key)."""

    tenant: str
    kind: str
    payload_json: str
    priority: int
    max_attempts: int
    run_after: datetime | None
    idempotency_key: str | None
    concurrency_key: str | None
    pinned: bool
    fingerprint: str | None
    parent_id: UUID | None = None


new_job_of = _slot_built(NewJob)


@dataclass(frozen=True, slots=True)
class JobLease:
    """Who runs a job and until when (a running job), and when a waiting job's question times
    out: what the dashboard shows beside the job."""

    job_id: UUID
    worker_id: UUID | None
    worker_host: str | None
    worker_pid: int | None
    lease_expires_at: datetime | None
    input_deadline: datetime | None


@dataclass(frozen=True, slots=True)
class JobCounts:
    """A tenant's jobs counted: the live ones per ``(kind, status)``, exactly, and the finished
    ones per status, each up to ``cap`` (a count equal to ``cap`` means "at least")."""

    live: Mapping[tuple[str, JobStatus], int]
    finished: Mapping[JobStatus, int]
    cap: int

    def per_status(self) -> dict[JobStatus, int]:
        """Every status with its count (0 when none)."""
        totals = dict.fromkeys(JobStatus, 0)
        for (_kind, status), n in self.live.items():
            totals[status] += n
        totals.update(self.finished)
        return totals
