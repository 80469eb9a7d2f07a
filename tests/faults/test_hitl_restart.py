"""Human in the loop across restarts, with real processes: a question outlives every process.

A worker process asks and stops; the API replica that saw the question is closed; a brand-new
replica takes the answer; a brand-new worker process resumes the job from Postgres alone. The
side effect that ran before the question (under ``ctx.checkpoint``) is not repeated.

Every wait polls the database against a deadline (failing at once if a watched worker exits), and
every process started here is killed and awaited when the test ends.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from support import eventually

from .support import DEADLINE, Workers

T = TypeVar("T")

TASKS = "tests.faults.hitl_tasks:tasks"


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(
        database_url,
        tmp_path,
        tasks=TASKS,
        prefix_var="HITL_KIND_PREFIX",
        settings={"shutdown_grace": "5"},
    )
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS hitl_effects (id bigserial PRIMARY KEY,"
            " job_id uuid NOT NULL, pid int NOT NULL)"
        )
        yield conn
    finally:
        await conn.close()


def status_of(
    jobs: JobManager, job_id: UUID, tenant: str, *statuses: JobStatus
) -> Callable[[], Awaitable[Job | None]]:
    async def check() -> Job | None:
        job = await jobs.get(job_id, tenant=tenant, consistency="strong")
        if job.terminal and job.status not in statuses:
            pytest.fail(f"job ended {job.status}: {job.error}")
        return job if job.status in statuses else None

    return check


async def effects(db: asyncpg.Connection, job_id: UUID) -> list[tuple[int, int]]:
    rows = await db.fetch("SELECT id, pid FROM hitl_effects WHERE job_id = $1 ORDER BY id", job_id)
    return [(r["id"], r["pid"]) for r in rows]


async def test_a_question_outlives_every_process_and_resumes_elsewhere(
    workers: Workers, db: asyncpg.Connection, database_url: str, tenant: str
) -> None:
    # API replica 1 submits and sees the question; worker process 1 runs the job and asks
    first = await workers.start("--kind", workers.kind("approve"), "--concurrency", "2", grace=5.0)
    async with await JobManager.connect(database_url) as api1:
        job = await api1.submit(tenant, workers.kind("approve"), {"question": "Approve loan 1234?"})
        waiting = await eventually(
            status_of(api1, job.id, tenant, JobStatus.WAITING_INPUT),
            timeout=DEADLINE,
            what="the job to wait for input",
            watch=[first],
        )
    assert waiting.prompt["key"] == "approval" and waiting.prompt["text"] == "Approve loan 1234?"
    assert waiting.attempts == 0
    effect = await effects(db, job.id)
    assert effect == [(effect[0][0], first.pid)]
    first_worker = await db.fetchval("SELECT id FROM workers WHERE pid = $1", first.pid)
    assert first_worker is not None

    # every process that saw the job goes away: the worker drains (it holds nothing) and exits
    first.proc.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(first.proc.wait(), DEADLINE)
    except TimeoutError:
        pytest.fail(f"worker 1 did not exit after SIGTERM\n{first.tail()}")
    assert code == 0, first.tail()
    assert await db.fetchval("SELECT count(*) FROM workers WHERE pid = $1", first.pid) == 0

    # a brand-new replica takes the answer while no worker runs at all
    async with await JobManager.connect(database_url) as api2:
        answered = await api2.answer(
            job.id, tenant=tenant, answer={"approve": True, "comment": "ok"}, answered_by="bob"
        )
        assert answered.status is JobStatus.QUEUED and answered.prompt is None

    # a brand-new worker process resumes it; yet another replica watches it finish
    second = await workers.start("--kind", workers.kind("approve"), "--concurrency", "2", grace=5.0)
    async with await JobManager.connect(database_url) as api3:
        done = await eventually(
            status_of(api3, job.id, tenant, JobStatus.SUCCEEDED),
            timeout=DEADLINE,
            what="the job to succeed",
            watch=[second],
        )
        history = await api3.events(job.id, tenant=tenant)
    assert second.pid != first.pid
    assert done.result == {
        "answer": {"approve": True, "comment": "ok"},
        "effect": {"effect": effect[0][0], "pid": first.pid},
        "finished_by": second.pid,
    }
    assert done.answers["approval"]["answered_by"] == "bob"
    assert done.attempts == 1
    assert await effects(db, job.id) == effect  # the side effect ran exactly once
    assert [e.type for e in history] == [
        "submitted",
        "claimed",
        "checkpoint",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]
    assert [e.seq for e in history] == list(range(1, len(history) + 1))
    claimers = [e.data["worker"] for e in history if e.type == "claimed"]
    assert claimers[0] == str(first_worker) and claimers[1] != claimers[0]
    second_worker = await db.fetchval("SELECT id FROM workers WHERE pid = $1", second.pid)
    assert claimers[1] == str(second_worker)
