"""Workflows with real worker processes: a parent fans out to children across two workers and is
resumed exactly once after the worker that ran it is killed with -9 while it waits; a durable
sleep outlives the worker process that started it.

Every wait polls the database against a deadline (failing at once if a watched worker exits), and
every process started here is killed and awaited when the test ends.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from support import eventually

from .support import DEADLINE, LEASE_SECONDS, Workers, exit_code, fault_workers

TASKS = "tests.faults.workflow_tasks:tasks"


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    async with fault_workers(
        database_url,
        tmp_path,
        lease_seconds=LEASE_SECONDS,
        tasks=TASKS,
        prefix_var="WORKFLOW_KIND_PREFIX",
    ) as started:
        yield started


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS workflow_starts (job_id uuid NOT NULL, pid int NOT NULL)"
        )
        await conn.execute("CREATE TABLE IF NOT EXISTS workflow_gate (opened boolean)")
        await conn.execute("DELETE FROM workflow_gate")
        yield conn
    finally:
        await conn.close()


async def _job(jobs: JobManager, job_id: UUID, tenant: str, *statuses: JobStatus) -> Job | None:
    job = await jobs.get(job_id, tenant=tenant, consistency="strong")
    if job.terminal and job.status not in statuses:
        pytest.fail(f"job ended {job.status}: {job.error}")
    return job if job.status in statuses else None


async def _children_running(db: asyncpg.Connection, parent: UUID) -> Any:
    """The pids running the parent's children, once two run on each of two workers."""
    rows = await db.fetch(
        "SELECT s.pid, count(*) AS n FROM jobs AS j JOIN workflow_starts AS s ON s.job_id = j.id"
        " WHERE j.parent_id = $1 AND j.status = 'running' GROUP BY s.pid",
        parent,
    )
    pids = {r["pid"]: r["n"] for r in rows}
    return pids if len(pids) == 2 and all(n == 2 for n in pids.values()) else None


async def test_a_parent_resumes_once_after_its_worker_is_killed_while_it_waits(
    workers: Workers, db: asyncpg.Connection, database_url: str, tenant: str
) -> None:
    kinds = ("--kind", workers.kind("parent"), "--kind", workers.kind("child"))
    first = await workers.start(*kinds, "--concurrency", "2")
    second = await workers.start(*kinds, "--concurrency", "2")
    async with await JobManager.connect(database_url) as jobs:
        parent = await jobs.submit(tenant, workers.kind("parent"), {"children": 5, "hold": True})
        # the parent parks (no slot held), so each worker runs two children and one waits
        waiting = await eventually(
            lambda: _job(jobs, parent.id, tenant, JobStatus.WAITING_CHILDREN),
            timeout=DEADLINE,
            what="the parent to wait for its children",
            watch=[first, second],
        )
        assert waiting.waiting_for is not None and len(waiting.waiting_for) == 5
        assert waiting.attempts == 0
        running = await eventually(
            lambda: _children_running(db, parent.id),
            timeout=DEADLINE,
            what="two children running on each worker",
            watch=[first, second],
        )
        assert set(running) == {first.pid, second.pid}
        ran_parent = await db.fetchval(
            "SELECT pid FROM workflow_starts WHERE job_id = $1", parent.id
        )
        victim, survivor = (first, second) if ran_parent == first.pid else (second, first)

        victim.proc.send_signal(signal.SIGKILL)  # its two children's leases are left to expire
        assert await exit_code(victim, DEADLINE) == -signal.SIGKILL
        await db.execute("INSERT INTO workflow_gate VALUES (true)")

        done = await eventually(
            lambda: _job(jobs, parent.id, tenant, JobStatus.SUCCEEDED),
            timeout=DEADLINE,
            what="the parent to succeed",
            watch=[survivor],
        )
        history = [e.type for e in await jobs.events(parent.id, tenant=tenant)]
        children = await db.fetch(
            "SELECT id, status FROM jobs WHERE parent_id = $1 ORDER BY id", parent.id
        )

    assert done.result == {"sum": 100, "pid": survivor.pid}
    assert done.attempts == 1 and done.waiting_for is None
    # the re-run got the same five children; the parent was woken and resumed exactly once
    assert len(children) == 5 and {c["status"] for c in children} == {"succeeded"}
    assert history.count("spawned") == 5
    assert history.count("waiting_for_children") == 1
    assert history.count("children_done") == 1
    assert history.count("claimed") == 2
    parent_starts = await db.fetch("SELECT pid FROM workflow_starts WHERE job_id = $1", parent.id)
    assert sorted(r["pid"] for r in parent_starts) == sorted([victim.pid, survivor.pid])


async def test_a_durable_sleep_outlives_the_worker_that_started_it(
    workers: Workers, db: asyncpg.Connection, database_url: str, tenant: str
) -> None:
    first = await workers.start("--kind", workers.kind("nap"), "--concurrency", "2", grace=5.0)
    async with await JobManager.connect(database_url) as jobs:
        job = await jobs.submit(tenant, workers.kind("nap"), {"seconds": 2})

        async def sleeping() -> Job | None:
            current = await _job(jobs, job.id, tenant, JobStatus.QUEUED)
            return current if current is not None and current.sleeping_until else None

        parked = await eventually(
            sleeping, timeout=DEADLINE, what="the job to sleep", watch=[first]
        )
        assert parked.run_after == parked.sleeping_until and parked.attempts == 0

        first.proc.send_signal(signal.SIGTERM)  # it holds nothing: it drains at once
        assert await exit_code(first, DEADLINE) == 0
        second = await workers.start("--kind", workers.kind("nap"), "--concurrency", "2")
        done = await eventually(
            lambda: _job(jobs, job.id, tenant, JobStatus.SUCCEEDED),
            timeout=DEADLINE,
            what="the job to wake and succeed",
            watch=[second],
        )
        events = await jobs.events(job.id, tenant=tenant)

    assert done.result == {"pid": second.pid} and done.attempts == 1
    assert [e.type for e in events] == [
        "submitted",
        "claimed",
        "sleeping",
        "claimed",
        "woke",
        "succeeded",
    ]
    until = datetime.fromisoformat(events[2].data["until"])
    assert events[3].at >= until  # claimed again only once it was due
    starts = await db.fetch("SELECT pid FROM workflow_starts WHERE job_id = $1", job.id)
    assert [r["pid"] for r in starts] == [first.pid, second.pid]


async def test_cancelling_a_waiting_parent_stops_its_children_on_the_workers(
    workers: Workers, db: asyncpg.Connection, database_url: str, tenant: str
) -> None:
    kinds = ("--kind", workers.kind("parent"), "--kind", workers.kind("child"))
    worker = await workers.start(*kinds, "--concurrency", "3")
    async with await JobManager.connect(database_url) as jobs:
        parent = await jobs.submit(tenant, workers.kind("parent"), {"children": 4, "hold": True})
        await eventually(
            lambda: _job(jobs, parent.id, tenant, JobStatus.WAITING_CHILDREN),
            timeout=DEADLINE,
            what="the parent to wait for its children",
            watch=[worker],
        )

        async def three_running() -> bool:
            count = await db.fetchval(
                "SELECT count(*) FROM jobs WHERE parent_id = $1 AND status = 'running'", parent.id
            )
            return bool(count == 3)

        await eventually(three_running, timeout=DEADLINE, what="3 children to run", watch=[worker])
        cancelled = await jobs.cancel(parent.id, tenant=tenant, cancelled_by="user:ops")
        assert cancelled.status is JobStatus.CANCELLED

        async def children_over() -> list[str] | None:
            rows = await db.fetch("SELECT status FROM jobs WHERE parent_id = $1", parent.id)
            statuses = [r["status"] for r in rows]
            return statuses if all(JobStatus(s).terminal for s in statuses) else None

        statuses = await eventually(
            children_over, timeout=DEADLINE, what="every child to stop", watch=[worker]
        )
    assert statuses == ["cancelled"] * 4  # three stopped by their worker, one never ran
