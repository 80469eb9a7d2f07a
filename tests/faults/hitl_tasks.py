"""Handlers for the worker processes that ``test_hitl_restart.py`` starts through the CLI.

Loaded as ``tests.faults.hitl_tasks:tasks`` (``PYTHONPATH`` = the repository root). The kind is
``{HITL_KIND_PREFIX}.approve``, so each test registers a kind no other test's workers can claim.

``approve`` first runs a side effect under ``ctx.checkpoint``: a row in the ``hitl_effects`` table
(created by the test in the same database) recording the job and this process's pid. Then it asks
for an approval and returns the answer, the checkpointed side effect and the pid that finished it.
"""

from __future__ import annotations

import os
from typing import Any

import asyncpg

from jobkeeper.settings import asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["APPROVAL", "PREFIX", "tasks"]

PREFIX = os.environ.get("HITL_KIND_PREFIX", "hitl")

APPROVAL: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approve"],
    "additionalProperties": False,
}

tasks = TaskRegistry()


async def _side_effect(ctx: JobContext) -> dict[str, Any]:
    conn = await asyncpg.connect(asyncpg_dsn(os.environ["JOBKEEPER_DATABASE_URL"]))
    try:
        row_id = await conn.fetchval(
            "INSERT INTO hitl_effects (job_id, pid) VALUES ($1, $2) RETURNING id",
            ctx.job.id,
            os.getpid(),
        )
    finally:
        await conn.close()
    return {"effect": int(row_id), "pid": os.getpid()}


@tasks.task(f"{PREFIX}.approve")
async def approve(ctx: JobContext, payload: Any) -> dict[str, Any]:
    effect = await ctx.checkpoint("effect", lambda: _side_effect(ctx))
    answer = await ctx.ask(str(payload["question"]), schema=APPROVAL, key="approval")
    return {"answer": answer, "effect": effect, "finished_by": os.getpid()}
