"""Fixtures of the fault suites."""

from __future__ import annotations

import asyncpg
import pytest

from jobkeeper.settings import asyncpg_dsn


@pytest.fixture(scope="module")
async def starts_table(database_url: str) -> None:
    """``fault_starts``, where the fault tasks record every start of a handler
    (``tests/faults/fault_tasks.py``)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS fault_starts (job_id uuid NOT NULL, n int NOT NULL,"
            " attempt int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL"
            " DEFAULT clock_timestamp())"
        )
    finally:
        await conn.close()
