"""Handlers for the worker processes that ``test_workflow_processes.py`` starts through the CLI.

Loaded as ``tests.faults.workflow_tasks:tasks`` (``PYTHONPATH`` = the repository root); the kinds
are named after ``$WORKFLOW_KIND_PREFIX``, so each test registers kinds no other test's workers
can claim. Every handler records its start (job, pid) in ``workflow_starts``, a side table the
test creates in the same database.

``parent`` spawns ``children`` children and waits for them; ``child`` returns ten times its
``n``, after waiting (``hold``) until the test puts a row in ``workflow_gate``; ``nap`` sleeps
durably for ``seconds``.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from typing import Any

import asyncpg

from jobkeeper.settings import asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["PREFIX", "tasks"]

PREFIX = os.environ.get("WORKFLOW_KIND_PREFIX", "workflow")
tasks = TaskRegistry()


async def _connect() -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(os.environ["JOBKEEPER_DATABASE_URL"]))


async def _record_start(ctx: JobContext) -> None:
    conn = await _connect()
    try:
        await conn.execute(
            "INSERT INTO workflow_starts (job_id, pid) VALUES ($1, $2)", ctx.job.id, os.getpid()
        )
    finally:
        await conn.close()


async def _gate_open() -> bool:
    conn = await _connect()
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM workflow_gate"))
    finally:
        await conn.close()


@tasks.task(f"{PREFIX}.parent")
async def parent(ctx: JobContext, payload: Any) -> dict[str, Any]:
    await _record_start(ctx)
    children = [
        await ctx.spawn(f"{PREFIX}.child", {"n": n, "hold": payload.get("hold", False)})
        for n in range(payload["children"])
    ]
    outcomes = await ctx.wait_for(children)
    return {"sum": sum(o.result for o in outcomes), "pid": os.getpid()}


@tasks.task(f"{PREFIX}.child")
async def child(ctx: JobContext, payload: Any) -> int:
    await _record_start(ctx)
    while payload["hold"] and not await _gate_open():  # noqa: ASYNC110 - a row another process writes
        await asyncio.sleep(0.05)
    return int(payload["n"]) * 10


@tasks.task(f"{PREFIX}.nap")
async def nap(ctx: JobContext, payload: Any) -> dict[str, Any]:
    await _record_start(ctx)
    await ctx.sleep(timedelta(seconds=payload["seconds"]))
    return {"pid": os.getpid()}
