"""Shared test setup: jobkeeper's own fixtures (a real Postgres per test module), and pytester
for the test kit's own tests (pytest sessions of a host application)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from jobkeeper.settings import asyncpg_dsn

pytest_plugins = ["jobkeeper.testing", "pytester"]


@pytest.fixture(scope="module")
async def database_url(database_url: str) -> str:
    """The module's database, where connections the tests open themselves find jobkeeper's
    tables on their search path (the tests read and write them with plain SQL). jobkeeper's own
    statements name the schema and need none of it: tests/test_embedding.py checks them on a
    database whose search path is the application's."""
    name = urlsplit(database_url).path.lstrip("/")
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(f'ALTER DATABASE "{name}" SET search_path TO jobkeeper, public')
    finally:
        await conn.close()
    return database_url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the module's database, for looking at rows the API does not show."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        yield conn
    finally:
        await conn.close()
