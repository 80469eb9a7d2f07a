"""A schedule that ticks every second, fired by three ``jobkeeper worker`` processes at once,
one of them killed with SIGKILL half-way: every tick becomes exactly one job, none is missing,
and every job runs. No scheduler is elected; Postgres decides who fires each tick."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobkeeper.manager import JobManager
from support import eventually

from .support import DEADLINE, Workers, fault_workers

TASKS = "tests.faults.schedule_tasks:tasks"
TICK = timedelta(seconds=1)


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    async with fault_workers(
        database_url, tmp_path, lease_seconds=1.5, tasks=TASKS, prefix_var="SCHEDULE_PREFIX"
    ) as started:
        yield started


async def fired(db: asyncpg.Connection, kind: str) -> list[Any]:
    return await db.fetch(
        "SELECT scheduled_for, (payload ->> 'fired_by')::int AS pid, status FROM jobs"
        " WHERE kind = $1 ORDER BY scheduled_for",
        kind,
    )


async def test_three_workers_and_a_kill_make_exactly_one_job_per_tick(
    workers: Workers, db: asyncpg.Connection, job_manager: JobManager
) -> None:
    kind, tenant = workers.kind("tick"), workers.prefix
    started = [await workers.start() for _ in range(3)]
    pids = {w.pid for w in started}

    async def ticks(count: int) -> list[Any] | None:
        rows = await fired(db, kind)
        return rows if len(rows) >= count else None

    await eventually(lambda: ticks(5), what="five ticks fired", watch=started, timeout=DEADLINE)
    # kill whichever worker fired the latest tick: it is alive and firing
    latest = (await fired(db, kind))[-1]["pid"]
    victim = next(w for w in started if w.pid == latest)
    victim.proc.send_signal(signal.SIGKILL)
    await victim.proc.wait()
    survivors = [w for w in started if w is not victim]
    killed_at = len(await fired(db, kind))
    await eventually(
        lambda: ticks(killed_at + 5), what="five more ticks", watch=survivors, timeout=DEADLINE
    )

    [schedule] = await job_manager.list_schedules(tenant=tenant)
    await job_manager.pause_schedule(schedule.id, tenant=tenant)  # no tick fires after this
    schedule = await job_manager.get_schedule(schedule.id, tenant=tenant)
    rows = await fired(db, kind)
    got = [row["scheduled_for"] for row in rows]
    first = got[0]
    expected = [first + n * TICK for n in range(int((schedule.last_tick - first) / TICK) + 1)]
    assert got == expected  # exactly one job per tick, none missing, from the first to the last
    assert len(got) >= 10
    firing = {row["pid"] for row in rows}
    assert firing <= pids and len(firing) >= 2, firing  # several workers fired, none elected
    assert victim.pid not in {row["pid"] for row in rows[killed_at + 1 :]}

    async def all_ran() -> bool:
        statuses = {row["status"] for row in await fired(db, kind)}
        return statuses == {"succeeded"}

    # ordinary jobs: the killed worker's claimed ones come back through lease recovery
    await eventually(all_ran, what="every scheduled job to succeed", watch=survivors)
