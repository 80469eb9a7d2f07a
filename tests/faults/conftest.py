"""Fixtures of the fault suites."""

from __future__ import annotations

import asyncpg
import pytest

from jobkeeper.settings import asyncpg_dsn

from .support import STARTS_TABLE


@pytest.fixture(scope="module")
async def starts_table(database_url: str) -> None:
    """``fault_starts``, where the fault tasks record every start of a handler
    (``tests/faults/fault_tasks.py``)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(STARTS_TABLE)
    finally:
        await conn.close()
