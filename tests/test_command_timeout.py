"""A statement that takes longer than ``command_timeout`` counts as a lost connection: the caller
gets ``DatabaseUnavailable`` (an HTTP 503) instead of waiting as long as the statement does. A
silently dead network link hangs statements exactly like this (tests/faults/test_netns.py shows
it across real network namespaces); here a lock stands in for the dead link."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from jobkeeper.errors import DatabaseUnavailable, InvalidRequest
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings, asyncpg_dsn
from support import DEADLINE

COMMAND_TIMEOUT = 0.5


async def test_a_statement_past_the_command_timeout_is_database_unavailable_then_reads_resume(
    database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(database_url, command_timeout=COMMAND_TIMEOUT) as jobs:
        job = await jobs.submit(tenant, "timeout.test", {})
        locker = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            async with locker.transaction():
                await locker.execute("LOCK TABLE jobkeeper.jobs IN ACCESS EXCLUSIVE MODE")
                # the lock outlives the read: without the timeout, the read would wait forever
                async with asyncio.timeout(DEADLINE):
                    with pytest.raises(DatabaseUnavailable):
                        await jobs.get(job.id, tenant=tenant, consistency="strong")
        finally:
            await locker.close()
        # the lock is gone and so is the abandoned connection: the next read just works
        assert (await jobs.get(job.id, tenant=tenant, consistency="strong")).version == 1


async def test_the_command_timeout_is_a_setting_and_must_be_positive(database_url: str) -> None:
    assert Settings(command_timeout="2.5").command_timeout == 2.5
    assert Settings().command_timeout == 10.0
    with pytest.raises(InvalidRequest):
        await JobManager.connect(database_url, command_timeout=0)
