"""The handlers of the harness's worker processes (``tests.faults.harness.tasks:tasks``).

Every handler marks what it writes under its lease with the claim it runs under: the job's
version right after the claim, which is the ``seq`` of that ``claimed`` event in the job's
history. Progress messages read ``claim <seq>``, questions ``claim <seq>: ...`` and results carry
``{"claim": seq}``. The checker compares each mark with the history: a write accepted from a
lease that was no longer the job's current one shows up as a mark that is not the latest claim.

Kinds (no database access of their own, so every write is jobkeeper's):
- ``harness.short``: returns at once;
- ``harness.slow``: runs ``payload["seconds"]`` with progress every ``STEP`` seconds;
- ``harness.ask``: asks a question (key ``q``) and returns the answer it was given.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["ANSWER_SCHEMA", "ASK", "KINDS", "SHORT", "SLOW", "tasks"]

SHORT, SLOW, ASK = "harness.short", "harness.slow", "harness.ask"
KINDS = (SHORT, SLOW, ASK)
STEP = 0.1  # seconds between a slow job's progress reports

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}, "token": {"type": "string"}},
    "required": ["approve", "token"],
    "additionalProperties": False,
}

tasks = TaskRegistry()


def _mark(ctx: JobContext) -> dict[str, Any]:
    return {"claim": ctx.job.version, "attempt": ctx.job.attempts, "pid": os.getpid()}


@tasks.task(SHORT)
async def short(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.progress(0.5, f"claim {ctx.job.version}")
    return _mark(ctx)


@tasks.task(SLOW)
async def slow(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    seconds = float(payload["seconds"])
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(STEP, left))
        ctx.progress(1 - max(0.0, end - time.monotonic()) / seconds, f"claim {ctx.job.version}")
    return _mark(ctx)


@tasks.task(ASK)
async def ask(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    answer = await ctx.ask(f"claim {ctx.job.version}: approve?", schema=ANSWER_SCHEMA, key="q")
    return {**_mark(ctx), "answer": answer}
