"""The fence around a handler's own writes (``JobManager.fence``, ``ctx.fenced``), in process.

In the application's own transaction, on each kind of connection it may hand over (a SQLAlchemy
``AsyncSession`` or ``AsyncConnection``, an asyncpg connection or pooled connection): a write
behind the fence commits while the lease holds, and no recovery can take the job until that
commit; a lease that is gone (recovered, expired by Postgres's clock, finished, or never this
token) raises ``LeaseLost`` and the rolled-back transaction leaves nothing; a rollback releases the
job's row at once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from typing import Any
from uuid import UUID

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from jobkeeper.domain.values import Job, Lease
from jobkeeper.errors import InvalidRequest, LeaseLost
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn, sqlalchemy_url
from jobkeeper.worker import JobContext, TaskRegistry
from support import eventually, make_worker

EFFECTS = """CREATE TABLE IF NOT EXISTS public.fenced_effects (job_id uuid NOT NULL,
    token uuid NOT NULL, note text NOT NULL)"""
INSERT = "INSERT INTO public.fenced_effects (job_id, token, note) VALUES ($1, $2, $3)"
KIND = "fencing.work"
# a backend of jobkeeper's waiting on a row lock to renew leases
RENEWAL_WAITING = """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
    AND application_name = 'jobkeeper' AND wait_event_type = 'Lock'
    AND query LIKE '%lease_expires_at%'"""
# a write through the caller's connection: (job_id, token, note)
Write = Callable[[UUID, UUID, str], Awaitable[object]]
Transaction = Callable[[], AbstractAsyncContextManager[tuple[Any, Write]]]


@pytest.fixture(scope="module")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    made = create_async_engine(sqlalchemy_url(database_url), pool_size=2)
    async with made.begin() as conn:
        await conn.exec_driver_sql(EFFECTS)
    try:
        yield made
    finally:
        await made.dispose()


def _core_insert() -> sa.TextClause:
    return sa.text(
        "INSERT INTO public.fenced_effects (job_id, token, note) VALUES (:job_id, :token, :note)"
    )


@pytest.fixture(params=["session", "core", "asyncpg", "pooled"])
async def transaction(
    request: pytest.FixtureRequest, engine: AsyncEngine, database_url: str
) -> AsyncIterator[Transaction]:
    """Opens the application's transaction on one kind of connection: yields the connection to
    fence and a write through it; commits at the end of the block, rolls back on an error."""
    kind = request.param
    pool = None
    if kind == "pooled":
        pool = await asyncpg.create_pool(asyncpg_dsn(database_url), min_size=1, max_size=1)

    @asynccontextmanager
    async def opened() -> AsyncIterator[tuple[Any, Write]]:
        if kind == "session":
            async with AsyncSession(engine) as session, session.begin():

                async def by_session(job_id: UUID, token: UUID, note: str) -> object:
                    params = {"job_id": job_id, "token": token, "note": note}
                    return await session.execute(_core_insert(), params)

                yield session, by_session
        elif kind == "core":
            async with engine.connect() as conn, conn.begin():

                async def by_core(job_id: UUID, token: UUID, note: str) -> object:
                    params = {"job_id": job_id, "token": token, "note": note}
                    return await conn.execute(_core_insert(), params)

                yield conn, by_core
        elif pool is not None:
            async with pool.acquire() as pooled, pooled.transaction():
                yield pooled, lambda *row: pooled.execute(INSERT, *row)
        else:
            plain = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                async with plain.transaction():
                    yield plain, lambda *row: plain.execute(INSERT, *row)
            finally:
                await plain.close()

    try:
        yield opened
    finally:
        if pool is not None:
            await pool.close()


async def claimed(jobs: JobManager, tenant: str, lease_seconds: float = 30.0) -> Lease:
    """A new job of a kind of its own, claimed with a lease of ``lease_seconds``."""
    kind = f"fencing.{uuid.uuid4().hex}"
    job = await jobs.submit(tenant, kind, {})
    [lease] = await jobs.claim(uuid.uuid4(), kinds=[kind], limit=1, lease_seconds=lease_seconds)
    assert lease.job.id == job.id
    return lease


async def effects(db: asyncpg.Connection, job_id: UUID) -> list[tuple[UUID, str]]:
    rows = await db.fetch("SELECT token, note FROM public.fenced_effects WHERE job_id = $1", job_id)
    return [(r["token"], r["note"]) for r in rows]


async def lease_expired(db: asyncpg.Connection, job_id: UUID) -> bool:
    """Whether the job's lease has expired by Postgres's clock."""
    return bool(
        await db.fetchval(
            "SELECT lease_expires_at < clock_timestamp() FROM jobs WHERE id = $1", job_id
        )
    )


async def recovered(jobs: JobManager, job_id: UUID) -> bool:
    return job_id in {job.id for job in await jobs.recover_expired(limit=1000)}


async def worked(
    jobs: JobManager,
    tasks: TaskRegistry,
    job: Job,
    *,
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> Job:
    """The job once an in-process worker of ``tasks`` has finished it (``meanwhile`` runs while
    the worker works)."""
    worker = make_worker(jobs, tasks)
    running = asyncio.create_task(worker.run())
    try:
        if meanwhile is not None:
            await meanwhile()

        async def done() -> Job | None:
            current = await jobs.get(job.id, tenant=job.tenant, consistency="strong")
            return current if current.terminal else None

        return await eventually(done, what="the job to finish")
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)


# --- while the lease holds -----------------------------------------------------------------------


async def test_a_fenced_write_commits_and_no_recovery_takes_the_job_before_the_commit(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, transaction: Transaction
) -> None:
    lease = await claimed(job_manager, tenant, lease_seconds=0.5)
    async with transaction() as (conn, write):
        await job_manager.fence(lease, conn)
        await write(lease.job.id, lease.token, "paid")
        # the lease runs out while the transaction is open: recovery must not take the job
        await eventually(lambda: lease_expired(db, lease.job.id), what="the lease to expire")
        assert not await recovered(job_manager, lease.job.id)
    assert await effects(db, lease.job.id) == [(lease.token, "paid")]
    # committed: the row is free, and the expired lease is recovered as usual
    assert await recovered(job_manager, lease.job.id)


async def test_a_rollback_writes_nothing_and_frees_the_job_at_once(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, transaction: Transaction
) -> None:
    lease = await claimed(job_manager, tenant)
    with pytest.raises(RuntimeError, match="the app changed its mind"):
        async with transaction() as (conn, write):
            await job_manager.fence(lease, conn)
            await write(lease.job.id, lease.token, "paid")
            raise RuntimeError("the app changed its mind")
    assert await effects(db, lease.job.id) == []
    renewed = asyncio.wait_for(job_manager.renew_leases([(lease.job.id, lease.token)], 30.0), 5)
    assert lease.job.id in await renewed  # nothing holds the row any more
    async with transaction() as (conn, write):  # and the lease can be fenced again
        await job_manager.fence(lease, conn)
        await write(lease.job.id, lease.token, "paid")
    assert await effects(db, lease.job.id) == [(lease.token, "paid")]


async def test_the_heartbeat_waits_for_the_fenced_transaction(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, transaction: Transaction
) -> None:
    """The documented cost: the worker's renewal of the job's lease waits until the commit."""
    lease = await claimed(job_manager, tenant)
    async with transaction() as (conn, _write):
        await job_manager.fence(lease, conn)
        renewal = asyncio.ensure_future(
            job_manager.renew_leases([(lease.job.id, lease.token)], 30.0)
        )
        await eventually(lambda: db.fetchval(RENEWAL_WAITING), what="the renewal to wait")
        assert not renewal.done()
    assert lease.job.id in await asyncio.wait_for(renewal, 10)


# --- when the lease is gone ----------------------------------------------------------------------


async def _stale(jobs: JobManager, tenant: str, db: asyncpg.Connection, how: str) -> Lease:
    """A lease that no longer holds its job, gone in the way ``how`` names."""
    if how == "never ours":
        lease = await claimed(jobs, tenant)
        return replace(lease, token=uuid.uuid4())
    if how == "expired, not yet recovered":
        lease = await claimed(jobs, tenant, lease_seconds=0.2)
        await eventually(lambda: lease_expired(db, lease.job.id), what="the lease to expire")
        return lease
    if how == "recovered":
        lease = await claimed(jobs, tenant, lease_seconds=0.2)
        await eventually(lambda: recovered(jobs, lease.job.id), what="recovery")
        return lease
    lease = await claimed(jobs, tenant)
    assert await jobs.mark_succeeded([(lease, "{}", None)]) == [lease.job.id]
    return lease


@pytest.mark.parametrize("how", ["never ours", "expired, not yet recovered", "recovered", "done"])
async def test_a_lost_lease_is_refused_and_the_transaction_writes_nothing(
    job_manager: JobManager,
    tenant: str,
    db: asyncpg.Connection,
    transaction: Transaction,
    how: str,
) -> None:
    stale = await _stale(job_manager, tenant, db, how)
    with pytest.raises(LeaseLost) as refused:
        async with transaction() as (conn, write):
            await write(stale.job.id, stale.token, "written before the fence")
            await job_manager.fence(stale, conn)
    assert refused.value.code == "lease_lost" and refused.value.job_id == stale.job.id
    assert await effects(db, stale.job.id) == []


async def test_the_fence_needs_an_open_transaction_of_a_known_kind(
    job_manager: JobManager, tenant: str, database_url: str
) -> None:
    lease = await claimed(job_manager, tenant)
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        with pytest.raises(InvalidRequest, match="begin a transaction"):
            await job_manager.fence(lease, conn)  # autocommit: the lock would end at once
    finally:
        await conn.close()
    with pytest.raises(InvalidRequest, match="AsyncSession"):
        await job_manager.fence(lease, object())  # type: ignore[arg-type]


# --- from a handler ------------------------------------------------------------------------------


async def test_a_handler_fences_its_write_with_its_lease_token(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    tasks = TaskRegistry()
    tokens: list[UUID] = []

    @tasks.task(KIND)
    async def work(ctx: JobContext, payload: Any) -> dict[str, str]:
        tokens.append(ctx.lease_token)
        async with AsyncSession(engine) as session, session.begin():
            await ctx.fenced(session)
            params = {"job_id": ctx.job.id, "token": ctx.lease_token, "note": "handler"}
            await session.execute(_core_insert(), params)
        return {"token": str(ctx.lease_token)}

    job = await job_manager.submit(tenant, KIND, {})
    finished = await worked(job_manager, tasks, job)
    assert finished.status == "succeeded", finished.error
    assert tokens and finished.result == {"token": str(tokens[-1])}
    assert await effects(db, job.id) == [(tokens[-1], "handler")]


async def test_a_handler_whose_fence_finds_the_lease_gone_ends_quietly(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    """``LeaseLost`` out of a handler records nothing (the job is its next run's); the run's
    context says it was stopped."""
    tasks = TaskRegistry()
    kind = f"fencing.{uuid.uuid4().hex}"
    taken = asyncio.Event()
    runs: list[tuple[JobContext, str]] = []

    @tasks.task(kind)
    async def work(ctx: JobContext, payload: Any) -> str:
        if not runs:
            runs.append((ctx, "first"))
            await taken.wait()  # meanwhile the job is taken from this run, as recovery would
        else:
            runs.append((ctx, "again"))
        async with AsyncSession(engine) as session, session.begin():
            await ctx.fenced(session)
            params = {"job_id": ctx.job.id, "token": ctx.lease_token, "note": runs[-1][1]}
            await session.execute(_core_insert(), params)
        return runs[-1][1]

    async def take_the_job() -> None:
        await eventually(lambda: runs, what="the first run")
        await db.execute(  # what recovery does to the row, without waiting for the lease
            "UPDATE jobs SET status = 'queued', lease_token = NULL, lease_expires_at = NULL,"
            " worker_id = NULL, version = version + 1 WHERE id = $1",
            job.id,
        )
        taken.set()

    job = await job_manager.submit(tenant, kind, {})
    finished = await worked(job_manager, tasks, job, meanwhile=take_the_job)
    first = runs[0][0]
    assert first.cancelled and first.stop_reason == "lease_lost"
    assert (finished.status, finished.result, finished.error) == ("succeeded", "again", None)
    assert await effects(db, job.id) == [(runs[1][0].lease_token, "again")]
