"""Handlers for the worker processes that ``test_worker_processes.py`` starts through the CLI.

Loaded as ``tests.faults.fault_tasks:tasks`` (``PYTHONPATH`` = the repository root). The kinds are
``{FAULT_KIND_PREFIX}.slow`` and ``{FAULT_KIND_PREFIX}.blocking``, so every test registers kinds
no other test's workers can claim.

Both handlers first record their start in the ``fault_starts`` side table (created by the test in
the same database): the job, the how-manieth start of that job it is, the attempt and the pid. The
payload ``{"seconds": [s0, s1, ...]}`` says how long start ``n`` runs (the last entry for later
starts), so a job can run long on its first worker and briefly once recovered.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import asyncpg

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


async def _record_start(ctx: JobContext) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(os.environ["JOBKEEPER_DATABASE_URL"]))
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
