"""The hot queries keep using their indexes as the table grows (EXPLAIN, not timing)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from jobkeeper.repository import _CLAIM, _RECOVER
from jobkeeper.settings import asyncpg_dsn
from support import explain, index_names

ROWS = 20_000


@pytest.fixture(scope="module")
async def big_table(database_url: str) -> str:
    """Many finished jobs and a few queued and running ones, analysed."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            f"""
            INSERT INTO jobs (id, tenant, kind, status, payload, finished_at)
            SELECT gen_random_uuid(), 'plans', 'k', 'succeeded', '{{}}'::jsonb, now()
            FROM generate_series(1, {ROWS});
            INSERT INTO jobs (id, tenant, kind, payload)
            SELECT gen_random_uuid(), 'plans', 'k', '{{}}'::jsonb FROM generate_series(1, 20);
            ANALYZE jobs;
            """
        )
    finally:
        await conn.close()
    return database_url


async def test_claim_uses_the_partial_queue_index(big_table: str) -> None:
    plan = await explain(
        big_table, _CLAIM[1].text, "00000000-0000-0000-0000-000000000000", None, 10, 30.0
    )
    assert "ix_jobs_claim" in index_names(plan), json.dumps(plan, indent=1)


async def test_lease_recovery_uses_the_partial_lease_index(big_table: str) -> None:
    plan = await explain(big_table, _RECOVER[1].text, 100, 1.0, 300.0)
    assert "ix_jobs_lease" in index_names(plan), json.dumps(plan, indent=1)
