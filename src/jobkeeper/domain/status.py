"""The status machine: every status, which are terminal, and the one table of allowed moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "OPERATIONS",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "JobStatus",
    "Operation",
    "can_transition",
    "sources_of",
]


class JobStatus(StrEnum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_INPUT = "waiting_input"
    WAITING_CHILDREN = "waiting_children"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)

# The one table of allowed transitions. The repository derives every conditional
# ``UPDATE ... WHERE status IN (...)`` from it, so Python and SQL cannot disagree.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # claimed by a worker; cancelled before it ran
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # finished; re-queued (retry, lease recovery, graceful release, a durable sleep); paused for
    # a person or for child jobs
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.QUEUED,
            JobStatus.WAITING_INPUT,
            JobStatus.WAITING_CHILDREN,
        }
    ),
    # answered (back to the queue); cancelled; input deadline passed
    JobStatus.WAITING_INPUT: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    # every child it waits for finished (back to the queue); cancelled
    JobStatus.WAITING_CHILDREN: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """Whether a job in ``current`` may move to ``target``."""
    return target in TRANSITIONS[current]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


# the events after which a job changes no more (an expired job is gone)
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled", "expired"})


@dataclass(frozen=True, slots=True)
class Operation:
    """What one status-changing statement may do: from each status it starts from, the statuses
    it may leave the job in (several where SQL decides, such as retry or fail; the same one where
    it only flags the job, as a cancel request for a running job does)."""

    moves: Mapping[JobStatus, frozenset[JobStatus]]

    @property
    def sources(self) -> frozenset[JobStatus]:
        return frozenset(self.moves)

    @property
    def targets(self) -> frozenset[JobStatus]:
        return frozenset().union(*self.moves.values())


def _op(sources: set[JobStatus], targets: set[JobStatus]) -> Operation:
    return Operation({source: frozenset(targets) for source in sources})


_Q, _R, _W = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING_INPUT
_WC = JobStatus.WAITING_CHILDREN
_S, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED

# Every statement that changes a job's status, by name (a submit inserts the job queued). The SQL
# takes its status conditions and targets from here (postgres/compile.py), and
# tests/test_operations.py runs each statement from every status and checks what it did against
# this table and TRANSITIONS. Fenced writes (by lease token) start from ``running`` only: a token
# exists only while a job runs (ck_jobs_lease).
OPERATIONS: Mapping[str, Operation] = {
    "claim": _op({_Q}, {_R}),
    "succeed": _op({_R}, {_S}),
    # retried, failed, or cancelled when that was requested meanwhile
    "fail": _op({_R}, {_Q, _F, _C}),
    "stop_cancelled": _op({_R}, {_C}),
    # graceful shutdown gives leases back (a cancel request wins)
    "release": _op({_R}, {_Q, _C}),
    # lease expired: retried, or failed with lease_expired (a cancel request wins)
    "recover": _op({_R}, {_Q, _F, _C}),
    "ask": _op({_R}, {_W}),
    "answer": _op({_W}, {_Q}),
    # on_timeout: fail, cancel, or resume with the default answer
    "input_timeout": _op({_W}, {_F, _C, _Q}),
    # a durable sleep: queued again, to run after its wake-up time
    "sleep": _op({_R}, {_Q}),
    # a parent parks until the children it waits for have all finished; the last one wakes it
    "wait_children": _op({_R}, {_WC}),
    "wake": _op({_WC}, {_Q}),
    # queued and waiting jobs end at once; a running one is flagged and keeps running
    "cancel": Operation(
        {_Q: frozenset({_C}), _W: frozenset({_C}), _WC: frozenset({_C}), _R: frozenset({_R})}
    ),
}
