"""Fixtures of the fault suites."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from jobkeeper.settings import asyncpg_dsn

from .support import LEASE_SECONDS, STARTS_TABLE, Workers, fault_workers


@pytest.fixture(scope="module")
async def starts_table(database_url: str) -> None:
    """``fault_starts``, where the fault tasks record every start of a handler
    (``tests/faults/fault_tasks.py``)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(STARTS_TABLE)
    finally:
        await conn.close()


@pytest.fixture
async def db(database_url: str, starts_table: None) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the module's database (``fault_starts`` in it)."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    """``jobkeeper worker`` processes of the fault tasks with a short lease (1.5 s, renewed every
    0.5 s) and quick retries."""
    async with fault_workers(database_url, tmp_path, lease_seconds=LEASE_SECONDS) as started:
        yield started
