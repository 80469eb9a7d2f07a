"""The status machine: every status, which are terminal, and the one table of allowed moves."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

__all__ = [
    "TERMINAL",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "JobStatus",
    "can_transition",
    "sources_of",
]


class JobStatus(StrEnum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_INPUT = "waiting_input"
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
    # finished; re-queued (retry, lease recovery, graceful release); paused for a person
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.QUEUED,
            JobStatus.WAITING_INPUT,
        }
    ),
    # answered (back to the queue); cancelled; input deadline passed
    JobStatus.WAITING_INPUT: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
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
