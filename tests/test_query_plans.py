"""The hot queries keep using their indexes as the table grows (EXPLAIN, not timing)."""

from __future__ import annotations

import json
import re

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager
from jobkeeper.postgres import (
    batch,
    jobs,
    leases,
    notify,
    questions,
    retention,
    schedules,
    workflows,
)
from jobkeeper.postgres.compile import Sql
from jobkeeper.postgres.jobs import _list_sql, _transition_sql
from jobkeeper.postgres.leases import (
    _CLAIM,
    _COMPLETE,
    _COMPLETE_IDS,
    _HEARTBEAT,
    _RECOVER,
    _RELEASE,
)
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import data_layer
from support import explain, index_names, node_types, seq_scanned

ROWS = 20_000
# every statement that reads or writes jobs, by module and name (found, so none is forgotten)
JOB_STATEMENTS = {
    **{
        f"{module.__name__.rsplit('.', 1)[1]}.{name}": value.text
        for module in (batch, jobs, leases, notify, questions, retention, schedules, workflows)
        for name, value in vars(module).items()
        if isinstance(value, Sql) and re.search(r"\bjobs\b", value.text)
    },
    **{f"transition to {s.value}": _transition_sql(s).text for s in JobStatus},
    **{f"pin {p}": jobs._PIN[p].text for p in (True, False)},
}


def test_every_statement_is_checked() -> None:
    assert len(JOB_STATEMENTS) >= 30, sorted(JOB_STATEMENTS)


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
            INSERT INTO job_events (job_id, seq, type) SELECT id, 1, 'submitted' FROM jobs;
            ANALYZE jobs;
            ANALYZE job_events;
            """
        )
    finally:
        await conn.close()
    return database_url


async def test_claim_uses_the_partial_queue_index(big_table: str) -> None:
    plan = await explain(big_table, _CLAIM.text)
    assert "ix_jobs_claim" in index_names(plan), json.dumps(plan, indent=1)


async def test_the_inbox_reads_the_tenants_open_questions_in_index_order(big_table: str) -> None:
    plan = await explain(big_table, questions._INBOX.text)
    assert "ix_jobs_inbox" in index_names(plan), json.dumps(plan, indent=1)
    assert "Sort" not in node_types(plan), json.dumps(plan, indent=1)


async def test_the_watchers_fan_out_reads_each_jobs_events_by_primary_key(big_table: str) -> None:
    plan = await explain(big_table, jobs._EVENTS_OF_MANY.text)
    assert "pk_job_events" in index_names(plan), json.dumps(plan, indent=1)
    assert "job_events" not in seq_scanned(plan), json.dumps(plan, indent=1)


async def test_lease_recovery_reads_only_the_running_jobs(big_table: str) -> None:
    plan = await explain(big_table, _RECOVER.text)
    assert "ix_jobs_status_tenant_id" in index_names(plan), json.dumps(plan, indent=1)


async def test_listing_every_status_merges_index_ranges_without_sorting_the_table(
    big_table: str,
) -> None:
    plan = await explain(
        big_table, _list_sql(by_status=False, by_kind=False, after_cursor=False).text
    )
    assert "ix_jobs_status_tenant_id" in index_names(plan), json.dumps(plan, indent=1)
    assert "Merge Append" in node_types(plan), json.dumps(plan, indent=1)
    assert "Seq Scan" not in node_types(plan), json.dumps(plan, indent=1)


async def test_listing_one_status_reads_one_index_range(big_table: str) -> None:
    plan = await explain(big_table, _list_sql(by_status=True, by_kind=True, after_cursor=True).text)
    assert "ix_jobs_status_tenant_id" in index_names(plan), json.dumps(plan, indent=1)
    assert "Seq Scan" not in node_types(plan), json.dumps(plan, indent=1)


@pytest.mark.parametrize(
    "sql", [_COMPLETE.text, _COMPLETE_IDS.text, _HEARTBEAT.text, _RELEASE.text]
)
async def test_batch_writes_of_a_worker_find_their_jobs_by_primary_key(
    big_table: str, sql: str
) -> None:
    # the running jobs' index range keeps an entry for every run until vacuum: reading it whole
    # per batch made completions slower with every job drained
    plan = await explain(big_table, sql)
    assert index_names(plan) == {"pk_jobs"}, json.dumps(plan, indent=1)


@pytest.mark.parametrize("name", sorted(JOB_STATEMENTS))
async def test_no_statement_reads_the_jobs_table_whole(big_table: str, name: str) -> None:
    """Statements run as generic plans (planned once per connection, whatever the values): each
    must still find its rows through an index."""
    plan = await explain(big_table, JOB_STATEMENTS[name])
    assert "jobs" not in seq_scanned(plan), json.dumps(plan, indent=1)


async def test_the_pool_plans_each_statement_once(job_manager: JobManager) -> None:
    async with data_layer(job_manager).database.connection() as conn:
        assert await conn.fetchval("SHOW plan_cache_mode") == "force_generic_plan"


# columns that heartbeats, progress reports and checkpoints change: an index naming any of them
# (as a key, in an expression or in a predicate) would make those updates non-HOT, adding an
# entry to every index of jobs per heartbeat (the table's fillfactor leaves room for HOT updates)
HOT_COLUMNS = (
    "lease_expires_at",
    "progress_fraction",
    "progress_message",
    "checkpoints",
    "updated_at",
    "version",
)


async def test_no_index_of_jobs_names_a_column_of_the_frequent_small_updates(
    database_url: str,
) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT indexrelid::regclass::text AS name, pg_get_indexdef(indexrelid) AS def"
            " FROM pg_index WHERE indrelid = 'jobs'::regclass"
        )
    finally:
        await conn.close()
    assert len(rows) >= 5
    for row in rows:
        named = {c for c in HOT_COLUMNS if re.search(rf"\b{c}\b", row["def"])}
        assert not named, f"{row['name']} names {named}: {row['def']}"
