"""Handlers for the worker processes that ``test_worker_processes.py`` starts through the CLI.

Loaded as ``tests.faults.fault_tasks:tasks`` (``PYTHONPATH`` = the repository root). The kinds are
``{FAULT_KIND_PREFIX}.slow`` and ``{FAULT_KIND_PREFIX}.blocking``, so every test registers kinds
no other test's workers can claim.

Every handler first records its start in the ``fault_starts`` side table (created by the test in
the same database): the job, the how-manieth start of that job it is, the attempt and the pid. The
payload ``{"seconds": [s0, s1, ...]}`` says how long start ``n`` runs (the last entry for later
starts), so a job can run long on its first worker and briefly once recovered.

``{FAULT_KIND_PREFIX}.pay`` then makes a business write of the application's own, fenced by its
lease (``ctx.fenced``), into ``public.fence_payments``; a refused one is noted in
``public.fence_refusals`` (``test_fencing_processes.py`` creates both).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

from jobkeeper.errors import LeaseLost
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["PREFIX", "tasks"]

PREFIX = os.environ.get("FAULT_KIND_PREFIX", "fault")
STEP = 0.05  # seconds between progress reports and cancel checks

tasks = TaskRegistry()

_RECORD = """
INSERT INTO fault_starts (job_id, n, attempt, pid)
SELECT $1, count(*), $2, $3 FROM fault_starts WHERE job_id = $1
RETURNING n
"""


async def _connect() -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(os.environ["JOBKEEPER_DATABASE_URL"]))


async def _record_start(ctx: JobContext) -> int:
    conn = await _connect()
    try:
        n = await conn.fetchval(_RECORD, ctx.job.id, ctx.job.attempts, os.getpid())
    finally:
        await conn.close()
    return int(n)


def _duration(payload: dict[str, Any], start: int) -> float:
    seconds = [float(s) for s in payload["seconds"]]
    return seconds[min(start, len(seconds) - 1)]


@tasks.task(f"{PREFIX}.slow")
async def slow(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Async: record the start, then sleep in steps with progress (cancelled as a task)."""
    start = await _record_start(ctx)
    seconds = _duration(payload, start)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(STEP, left))
        ctx.progress(1 - max(0.0, end - time.monotonic()) / seconds, f"start {start}")
    return {"pid": os.getpid(), "start": start, "attempt": ctx.job.attempts}


@tasks.task(f"{PREFIX}.blocking")
def blocking(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sync (in a worker thread): the same, stopping at ``ctx.raise_if_cancelled()``."""
    start = asyncio.run(_record_start(ctx))
    seconds = _duration(payload, start)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        ctx.raise_if_cancelled()
        time.sleep(min(STEP, left))
        ctx.progress(1 - max(0.0, end - time.monotonic()) / seconds, f"start {start}")
    return {"pid": os.getpid(), "start": start, "attempt": ctx.job.attempts}


@tasks.task(f"{PREFIX}.pay")
async def pay(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Async: record the start, work (sleep) for this start's seconds, then pay: a write to the
    application's table in its own transaction, fenced by the lease. The payment is shielded from
    cancellation, as a handler keeps a payment from being cut in half: a worker that finds its
    lease lost after a pause still makes the attempt, and the fence must refuse it."""
    start = await _record_start(ctx)
    await asyncio.sleep(_duration(payload, start))
    return await asyncio.shield(_pay(ctx, start))


_NOTE = "INSERT INTO public.{} (job_id, token, pid, start) VALUES ($1, $2, $3, $4)"


async def _pay(ctx: JobContext, start: int) -> dict[str, Any]:
    row = (ctx.job.id, ctx.lease_token, os.getpid(), start)
    conn = await _connect()
    try:
        try:
            async with conn.transaction():
                await ctx.fenced(conn)
                await conn.execute(_NOTE.format("fence_payments"), *row)
        except LeaseLost:
            await conn.execute(_NOTE.format("fence_refusals"), *row)
            raise
    finally:
        await conn.close()
    return {"pid": os.getpid(), "start": start, "token": str(ctx.lease_token)}
