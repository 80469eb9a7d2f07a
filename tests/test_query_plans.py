"""The hot queries keep using their indexes as the table grows (EXPLAIN, not timing)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from jobkeeper.repository import _CLAIM, _COMPLETE, _HEARTBEAT, _RECOVER, _RELEASE, _list_sql
from jobkeeper.settings import asyncpg_dsn
from support import explain, index_names, node_types

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


async def test_listing_every_status_merges_index_ranges_without_sorting_the_table(
    big_table: str,
) -> None:
    sql = _list_sql(by_status=False, by_kind=False, after_cursor=False)
    plan = await explain(big_table, sql.text, *sql.args({"tenant": "plans", "limit": 51}))
    assert "ix_jobs_tenant_status_id" in index_names(plan), json.dumps(plan, indent=1)
    assert "Merge Append" in node_types(plan), json.dumps(plan, indent=1)
    assert "Seq Scan" not in node_types(plan), json.dumps(plan, indent=1)


async def test_listing_one_status_reads_one_index_range(big_table: str) -> None:
    sql = _list_sql(by_status=True, by_kind=True, after_cursor=True)
    params = {
        "tenant": "plans",
        "status": "queued",
        "kind": "k",
        "before": "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "limit": 51,
    }
    plan = await explain(big_table, sql.text, *sql.args(params))
    assert "ix_jobs_tenant_status_id" in index_names(plan), json.dumps(plan, indent=1)
    assert "Seq Scan" not in node_types(plan), json.dumps(plan, indent=1)


@pytest.mark.parametrize(
    ("name", "sql", "extra"),
    [
        ("complete", _COMPLETE[1].text, (["null"], [None], [None])),
        ("heartbeat", _HEARTBEAT.text, (30.0,)),
        ("release", _RELEASE[1].text, ()),
    ],
)
async def test_batch_writes_of_a_worker_find_their_jobs_by_primary_key(
    big_table: str, name: str, sql: str, extra: tuple[object, ...]
) -> None:
    # the lease index keeps an entry for every run until vacuum: reading it whole per batch made
    # completions slower with every job drained
    job = "00000000-0000-0000-0000-000000000001"
    plan = await explain(big_table, sql, [job], [job], *extra)
    assert index_names(plan) == {"pk_jobs"}, json.dumps(plan, indent=1)
