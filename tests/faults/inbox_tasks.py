"""Handlers for the worker processes that ``test_inbox_processes.py`` starts through the CLI.

Loaded as ``tests.faults.inbox_tasks:tasks``; the kind is ``{INBOX_KIND_PREFIX}.review``, so each
test registers a kind no other test's workers can claim. ``review`` asks ``user:alice`` and, when
her deadline passes, escalates to the managers; it returns the answer and the finishing pid.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from jobkeeper import Escalate
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["PREFIX", "tasks"]

PREFIX = os.environ.get("INBOX_KIND_PREFIX", "inbox")
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}},
    "required": ["approve"],
}

tasks = TaskRegistry()


@tasks.task(f"{PREFIX}.review")
async def review(ctx: JobContext, payload: Any) -> dict[str, Any]:
    answer = await ctx.ask(
        f"Approve {payload['loan']}?",
        schema=SCHEMA,
        assignee="user:alice",
        timeout=float(payload["timeout"]),
        on_timeout=Escalate(to="role:manager", after=timedelta(hours=1)),
    )
    return {"answer": answer, "finished_by": os.getpid()}
