"""What the inbox page lists: the questions the caller may answer, from ``JobManager.inbox``.

Each item is the work queue's ``Question`` (assignee, deadline, version, who holds it) with the
form its schema draws. ``question_state`` is what a live row carries of a waiting job's
question, so a page redraws a claim, a takeover or an escalation without asking the database:
the live fan-out already read the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jobkeeper.api.schemas import iso
from jobkeeper.api.ui.forms import Field, form_of
from jobkeeper.domain.questions import Question, addressees, question_of
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Caller, Job
from jobkeeper.manager import JobManager

__all__ = ["Inbox", "Item", "addressed_to", "question_state", "waiting_for"]

PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class Item:
    """One waiting question and the form that answers it."""

    question: Question
    fields: tuple[Field, ...]


@dataclass(frozen=True, slots=True)
class Inbox:
    items: tuple[Item, ...]
    next_cursor: str | None


async def waiting_for(
    jobs: JobManager,
    caller: Caller,
    *,
    kind: str | None = None,
    assignee: str | None = None,
    cursor: str | None = None,
) -> Inbox:
    """The questions ``caller`` may answer (for anyone, for them, for one of their roles),
    oldest deadline first; the manager refuses a malformed filter or cursor."""
    page = await jobs.inbox(
        caller.tenant,
        principal=caller.principal,
        roles=caller.roles,
        kind=kind,
        assignee=assignee,
        cursor=cursor,
        limit=PAGE_SIZE,
    )
    items = tuple(Item(q, form_of({"schema": q.schema, "choices": q.choices})) for q in page.items)
    return Inbox(items, page.next_cursor)


def addressed_to(caller: Caller) -> list[str]:
    """The assignees whose questions reach ``caller``'s inbox (besides those for anyone)."""
    return addressees(caller.principal, sorted(caller.roles))


def question_state(job: Job) -> dict[str, Any] | None:
    """A waiting job's question as a live row carries it (``None``: it waits for nothing);
    a claim shows only while it lasts."""
    if job.status is not JobStatus.WAITING_INPUT or job.prompt is None:
        return None
    question = question_of(job, now=datetime.now(UTC))
    return {
        "key": question.key,
        "version": question.version,
        "assignee": question.assignee,
        "deadline": iso(question.deadline),
        "claimed_by": question.claimed_by,
        "claim_expires_at": iso(question.claim_expires_at),
    }
