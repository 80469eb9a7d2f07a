"""Backends terminated mid-statement (``pg_terminate_backend``), as a failover, a pooler or an
administrator does: every statement path turns that into ``DatabaseUnavailable`` (a 503 over
HTTP), and a worker process keeps claiming and renewing its leases through it.

asyncpg hands a connection whose server went away back to its pool on its own, so the data layer
must not touch it afterwards: before the fix, closing it raised ``InterfaceError`` ("released
back to the pool"), which escaped as a raw error, killed worker loops and stopped heartbeats.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import data_layer
from support import eventually, killed_while_waiting, terminate_waiting

from .support import DEADLINE, Workers

TASKS = "tests.faults.fault_tasks:tasks"


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def locker(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A second connection that holds locks in an open transaction for the test."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_statement_whose_backend_is_terminated_raises_database_unavailable(
    job_manager: JobManager, admin: asyncpg.Connection
) -> None:
    postgres = data_layer(job_manager)

    async def sleep() -> None:
        async with postgres.database.connection() as conn:
            await conn.fetchval("SELECT pg_sleep(30)")

    task = asyncio.ensure_future(sleep())
    await eventually(
        lambda: admin.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query = 'SELECT pg_sleep(30)'"
        ),
        timeout=DEADLINE,
        what="the sleeping backend",
    )
    with pytest.raises(DatabaseUnavailable):
        await asyncio.wait_for(task, 30)
    await postgres.ping()  # the pool recovered


async def test_a_claim_behind_a_table_lock_whose_backend_is_terminated_raises_database_unavailable(
    job_manager: JobManager, tenant: str, admin: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    kind = f"claim-{uuid4().hex[:8]}"
    job = await job_manager.submit(tenant, kind, {})
    async with locker.transaction():
        await locker.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        claim = job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
        with pytest.raises(DatabaseUnavailable):
            await killed_while_waiting(admin, claim)
    leases = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    assert [lease.job.id for lease in leases] == [job.id]


async def test_a_heartbeat_behind_a_row_lock_whose_backend_is_killed_raises_database_unavailable(
    job_manager: JobManager, tenant: str, admin: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    kind = f"beat-{uuid4().hex[:8]}"
    job = await job_manager.submit(tenant, kind, {})
    [lease] = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    held = [(lease.job.id, lease.token)]
    async with locker.transaction():
        await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        with pytest.raises(DatabaseUnavailable):
            await killed_while_waiting(admin, job_manager.renew_leases(held, 30))
    assert await job_manager.renew_leases(held, 30) == {job.id: False}


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    # a lease of 3 s is renewed every second: a heartbeat that is killed once and then succeeds
    # keeps the lease, one that dies for good lets it expire
    started = Workers(
        database_url,
        tmp_path,
        tasks=TASKS,
        prefix_var="FAULT_KIND_PREFIX",
        settings={"lease_seconds": "3", "poll_interval": "0.1"},
    )
    try:
        yield started
    finally:
        await started.close()


@pytest.mark.timeout(90)
async def test_a_worker_survives_its_claims_being_terminated(
    job_manager: JobManager,
    tenant: str,
    admin: asyncpg.Connection,
    locker: asyncpg.Connection,
    workers: Workers,
    starts_table: None,
) -> None:
    worker = await workers.start()
    await eventually(
        lambda: admin.fetchval("SELECT count(*) FROM workers"),
        timeout=DEADLINE,
        what="the worker to register",
    )
    async with locker.transaction():
        await locker.execute("LOCK TABLE jobs IN EXCLUSIVE MODE")
        killed = 0
        for _ in range(3):  # one claim after another, each terminated while it waits
            killed += await eventually(
                lambda: terminate_waiting(admin),
                timeout=DEADLINE,
                what="a claim waiting on the lock",
            )
        assert killed >= 3
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [0.1]})

    async def succeeded() -> bool:
        current = await job_manager.get(job.id, tenant=tenant, consistency="strong")
        return current.status == "succeeded"

    await eventually(
        succeeded, timeout=DEADLINE, what="the job to succeed on the same worker", watch=[worker]
    )
    assert worker.proc.returncode is None
    assert "Traceback" not in worker.output()


@pytest.mark.timeout(90)
async def test_a_worker_keeps_its_lease_when_a_heartbeat_is_terminated(
    job_manager: JobManager,
    tenant: str,
    admin: asyncpg.Connection,
    locker: asyncpg.Connection,
    workers: Workers,
    starts_table: None,
) -> None:
    worker = await workers.start()
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [6]})
    await eventually(
        lambda: admin.fetchval("SELECT count(*) FROM fault_starts WHERE job_id = $1", job.id),
        timeout=DEADLINE,
        what="the handler to start",
        watch=[worker],
    )
    async with locker.transaction():
        await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        # the heartbeat (and progress writes) now wait on the row: terminate them
        await eventually(
            lambda: terminate_waiting(admin),
            timeout=DEADLINE,
            what="a heartbeat waiting on the row",
        )
    renewed_before = await admin.fetchval("SELECT lease_expires_at FROM jobs WHERE id = $1", job.id)

    async def renewed() -> bool:
        now = await admin.fetchval("SELECT lease_expires_at FROM jobs WHERE id = $1", job.id)
        return now is not None and now > renewed_before

    await eventually(
        renewed, timeout=DEADLINE, what="a later heartbeat to renew the lease", watch=[worker]
    )

    async def finished() -> bool:
        current = await job_manager.get(job.id, tenant=tenant, consistency="strong")
        return current.terminal

    await eventually(finished, timeout=DEADLINE, what="the job to finish", watch=[worker])
    done = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert done.status == "succeeded"
    assert done.attempts == 1
    runs = await admin.fetchval("SELECT count(*) FROM fault_starts WHERE job_id = $1", job.id)
    assert runs == 1, "the job ran again: its lease was not renewed after the terminated heartbeat"
    assert worker.proc.returncode is None
    assert "Task exception was never retrieved" not in worker.output()


@pytest.mark.timeout(90)
async def test_a_finished_jobs_success_survives_its_write_being_terminated(
    job_manager: JobManager,
    tenant: str,
    admin: asyncpg.Connection,
    locker: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
    starts_table: None,
) -> None:
    """The success write waits on the job's row and is terminated, again and again, until the
    row is free: it is retried while the lease holds, so the job ends succeeded after one run
    (before, the result was dropped and the job ran again once its lease expired)."""
    workers = Workers(
        database_url,
        tmp_path,
        tasks=TASKS,
        prefix_var="FAULT_KIND_PREFIX",
        settings={"lease_seconds": "6", "poll_interval": "0.1"},
    )
    try:
        worker = await workers.start()
        job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [1.0]})
        await eventually(
            lambda: admin.fetchval("SELECT count(*) FROM fault_starts WHERE job_id = $1", job.id),
            what="the handler to start",
            watch=[worker],
        )
        loop = asyncio.get_running_loop()
        async with locker.transaction():
            await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            until = loop.time() + 2.5  # the handler finishes at 1 s: its success waits here
            while loop.time() < until:
                await terminate_waiting(admin)
                await asyncio.sleep(0.02)

        async def finished() -> bool:
            current = await job_manager.get(job.id, tenant=tenant, consistency="strong")
            return current.terminal

        await eventually(finished, what="the job to finish", watch=[worker])
        done = await job_manager.get(job.id, tenant=tenant, consistency="strong")
        assert (done.status, done.attempts) == ("succeeded", 1)
        runs = await admin.fetchval("SELECT count(*) FROM fault_starts WHERE job_id = $1", job.id)
        assert runs == 1
        assert "recording 1 completions failed" in worker.output()  # the write was terminated
        assert "retrying while the lease holds" in worker.output()
        assert worker.proc.returncode is None
    finally:
        await workers.close()
