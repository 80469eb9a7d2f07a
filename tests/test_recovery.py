"""After Postgres drops every pooled connection (a restart, a failover, pg_terminate_backend), the
manager recovers by itself: reads retry once on a fresh connection, and a write fails at most
once with DatabaseUnavailable (its outcome unknown to the caller) before working again."""

from __future__ import annotations

import contextlib

import asyncpg

from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn


async def _kill_pool(url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'jobkeeper' AND datname = current_database()"
            " AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return len(killed)


async def test_reads_and_writes_recover_after_the_pool_is_killed(
    database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(database_url, pool_size=3) as jobs:
        job = await jobs.submit(tenant, "recovery.test", {})
        await jobs.get(job.id, tenant=tenant, consistency="strong")
        assert await _kill_pool(database_url) >= 1

        found = await jobs.get(job.id, tenant=tenant, consistency="strong")
        assert found.id == job.id  # the read retried on a fresh connection

        assert await _kill_pool(database_url) >= 1
        # a write is never retried blindly (it may or may not have happened): it may fail once
        with contextlib.suppress(DatabaseUnavailable):
            await jobs.cancel(job.id, tenant=tenant)
        final = await jobs.get(job.id, tenant=tenant, consistency="strong")
        if not final.terminal:
            final = await jobs.cancel(job.id, tenant=tenant)
        assert final.status == "cancelled"
