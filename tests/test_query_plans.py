"""The hot queries keep using their indexes as the table grows (EXPLAIN, not timing)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from jobkeeper.repository import _CLAIM, _RECOVER
from jobkeeper.settings import asyncpg_dsn

ROWS = 20_000


def _index_names(plan: Any) -> set[str]:
    names: set[str] = set()
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Index Name" in node:
                names.add(node["Index Name"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return names


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


async def _explain(url: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        tx = conn.transaction()
        await tx.start()
        try:  # EXPLAIN ANALYZE would run the write: plan only, and roll back regardless
            rows = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    return json.loads(rows)


async def test_claim_uses_the_partial_queue_index(big_table: str) -> None:
    plan = await _explain(
        big_table, _CLAIM[1].text, "00000000-0000-0000-0000-000000000000", None, 10, 30.0
    )
    assert "ix_jobs_claim" in _index_names(plan), json.dumps(plan, indent=1)


async def test_lease_recovery_uses_the_partial_lease_index(big_table: str) -> None:
    plan = await _explain(big_table, _RECOVER[1].text, 100, 1.0, 300.0)
    assert "ix_jobs_lease" in _index_names(plan), json.dumps(plan, indent=1)
