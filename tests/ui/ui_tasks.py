"""Handlers for the worker process the browser tests start (``tests.ui.ui_tasks:tasks``).

Kinds are ``{UI_KIND_PREFIX}.<name>``, fresh per test module, so no other test's worker claims
them. ``steps`` reports progress and then waits for its gate file (the test opens it once the
browser showed the progress), so the browser sees a job mid-run without any timing guess.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from jobkeeper import Escalate
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["REVIEW", "tasks"]

PREFIX = os.environ.get("UI_KIND_PREFIX", "ui")
# a rejection needs a reason: the form cannot see that rule (if/then), the server refuses it
REVIEW: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {"type": "boolean", "title": "Approve the refund"},
        "reason": {"type": "string", "maxLength": 80, "description": "Why (needed to reject)"},
    },
    "required": ["approve"],
    "if": {"properties": {"approve": {"const": False}}},
    "then": {"required": ["reason"]},
}

tasks = TaskRegistry()


async def _gate(path: str) -> None:
    # the test opens the gate by creating the file: poll for it (a tiny stat, off the loop)
    while not await asyncio.to_thread(os.path.exists, path):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


@tasks.task(f"{PREFIX}.steps")
async def steps(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.progress(0.25, "reading the ledger")
    ctx.progress(0.6, "matching 60 of 100 entries")
    await _gate(payload["gate"])
    ctx.progress(1.0, "done")
    return {"matched": 100}


@tasks.task(f"{PREFIX}.hold")
async def hold(ctx: JobContext, payload: Any) -> None:
    ctx.progress(0.1, "holding until cancelled")
    await asyncio.Event().wait()  # until the worker cancels it (the job is cancelled)


@tasks.task(f"{PREFIX}.review")
async def review(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    answer = await ctx.ask(
        f"Refund {payload['amount']} EUR to {payload['customer']}?", schema=REVIEW, timeout=600
    )
    ctx.progress(0.5, "refunding")
    await _gate(payload["gate"])
    return {"refunded": bool(answer["approve"]), "answer": answer}


@tasks.task(f"{PREFIX}.form")
async def form(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Asks with the schema in the payload and returns the answer as it arrived."""
    return await ctx.ask("Fill in the form", schema=payload["schema"], timeout=600)


@tasks.task(f"{PREFIX}.brief")
async def brief(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Asks with a deadline of ``payload["timeout"]`` seconds (then the job fails)."""
    return await ctx.ask("Quick: ship it?", schema={"type": "boolean"}, timeout=payload["timeout"])


APPROVE: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean", "title": "Approve"}},
    "required": ["approve"],
}


@tasks.task(f"{PREFIX}.escalating")
async def escalating(ctx: JobContext, payload: dict[str, Any]) -> Any:
    """Asks ``payload["assignee"]`` with a deadline of ``payload["timeout"]`` seconds, then
    escalates to ``payload["to"]`` (for ten minutes more)."""
    return await ctx.ask(
        "Sign off the audit?",
        schema=APPROVE,
        assignee=payload["assignee"],
        timeout=payload["timeout"],
        on_timeout=Escalate(to=payload["to"], after=600),
    )
