"""Human in the loop across restarts, with real processes: a question outlives every process.

A worker process asks and stops; the API replica that saw the question is closed; a brand-new
replica takes the answer; a brand-new worker process resumes the job from Postgres alone. The
side effect that ran before the question (under ``ctx.checkpoint``) is not repeated.

Every wait polls the database against a deadline (failing at once if a watched worker exits), and
every process started here is killed and awaited when the test ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import asyncpg
import pytest
import typer

from jobkeeper.cli import app
from jobkeeper.manager import JobManager
from jobkeeper.models import Job, JobStatus
from jobkeeper.settings import asyncpg_dsn

T = TypeVar("T")

ROOT = Path(__file__).parents[2]
JOBKEEPER = Path(sys.executable).parent / "jobkeeper"
TASKS = "tests.faults.hitl_tasks:tasks"
DEADLINE = 30.0  # the bound of every wait; the expected times are a few seconds
POLL = 0.05
# `jobkeeper worker MODULE:ATTR`, or `jobkeeper MODULE:ATTR` if Typer collapsed a one-command app
WORKER_COMMAND = (
    ["worker"] if isinstance(typer.main.get_command(app), typer.core.TyperGroup) else []
)


@dataclass
class WorkerProcess:
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return (
            f"--- {self.log.name} (pid {self.pid}, exit {self.proc.returncode}) ---\n{text[-3000:]}"
        )


class Workers:
    """Starts worker processes for one test; ``close()`` kills and awaits every one of them."""

    def __init__(self, database_url: str, tmp: Path) -> None:
        self._database_url = database_url
        self._tmp = tmp
        self.prefix = f"hitl-{uuid.uuid4().hex[:10]}"
        self.started: list[WorkerProcess] = []

    @property
    def kind(self) -> str:
        return f"{self.prefix}.approve"

    async def start(self) -> WorkerProcess:
        log = self._tmp / f"worker-{len(self.started)}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
        env.update(
            PYTHONPATH=str(ROOT),
            HITL_KIND_PREFIX=self.prefix,
            JOBKEEPER_DATABASE_URL=self._database_url,
            JOBKEEPER_SHUTDOWN_GRACE="5",
        )
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                str(JOBKEEPER),
                *WORKER_COMMAND,
                TASKS,
                "--kind",
                self.kind,
                "--concurrency",
                "2",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=self._tmp,  # no stray .env file is read
            )
        finally:
            os.close(fd)
        worker = WorkerProcess(proc, log)
        self.started.append(worker)
        return worker

    async def close(self) -> None:
        for worker in self.started:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        for worker in self.started:
            await asyncio.wait_for(worker.proc.wait(), DEADLINE)


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(database_url, tmp_path)
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


async def until(
    what: str,
    check: Callable[[], Awaitable[T | None]],
    *,
    watch: Sequence[WorkerProcess] = (),
    within: float = DEADLINE,
) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds, or as
    soon as a watched worker exits."""
    end = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        for worker in watch:
            if worker.proc.returncode is not None:
                pytest.fail(f"worker exited while waiting for {what}\n{worker.tail()}")
        if time.monotonic() > end:
            logs = "\n".join(w.tail() for w in watch)
            pytest.fail(f"timed out after {within} s waiting for {what}\n{logs}")
        await asyncio.sleep(POLL)


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
    first = await workers.start()
    async with await JobManager.connect(database_url) as api1:
        job = await api1.submit(tenant, workers.kind, {"question": "Approve loan 1234?"})
        waiting = await until(
            "the job to wait for input",
            status_of(api1, job.id, tenant, JobStatus.WAITING_INPUT),
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
    second = await workers.start()
    async with await JobManager.connect(database_url) as api3:
        done = await until(
            "the job to succeed",
            status_of(api3, job.id, tenant, JobStatus.SUCCEEDED),
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
