"""What the inbox page lists: the questions waiting in the caller's tenant.

``waiting_for`` is the one seam for the work queue of issue #14: today it lists the tenant's jobs
in ``waiting_input`` (newest first, keyset-paged) with their answer deadlines. Once
``JobManager.inbox`` exists (assignees, claims), it becomes that call and ``Question`` gains the
assignee and the holder; the page's ``question_actions`` block is where claim and release go.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobkeeper.api.ui.forms import Field, form_of
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Caller, Job
from jobkeeper.manager import JobManager

__all__ = ["Inbox", "Question", "waiting_for"]


@dataclass(frozen=True, slots=True)
class Question:
    """One waiting question: its job, prompt, form and deadline."""

    job: Job
    prompt: dict[str, Any]
    fields: tuple[Field, ...]
    deadline: datetime | None


@dataclass(frozen=True, slots=True)
class Inbox:
    questions: tuple[Question, ...]
    next_cursor: str | None


async def waiting_for(
    jobs: JobManager, caller: Caller, *, kind: str | None = None, cursor: str | None = None
) -> Inbox:
    """The questions ``caller`` may answer (today: every one of their tenant)."""
    page = await jobs.list(
        tenant=caller.tenant, status=JobStatus.WAITING_INPUT, kind=kind, cursor=cursor, limit=50
    )
    waiting = [job for job in page.items if job.prompt is not None]
    leases = await jobs.leases([job.id for job in waiting], tenant=caller.tenant)
    questions = tuple(
        Question(
            job=job,
            prompt=dict(job.prompt),
            fields=form_of(job.prompt),
            deadline=leases[job.id].input_deadline if job.id in leases else None,
        )
        for job in waiting
    )
    return Inbox(questions, page.next_cursor)
