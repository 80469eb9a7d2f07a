"""Pytest fixtures for testing code that uses jobkeeper against a real Postgres (never a mock).

Enable with ``pytest_plugins = ["jobkeeper.testing"]`` in a ``conftest.py``. The server is
``JOBKEEPER_TEST_DATABASE_URL`` when set (a URL whose user may ``CREATE DATABASE``); otherwise
an embedded Postgres (``jobkeeper[embedded]``). The choice is printed once; if neither works the
session fails loudly instead of skipping. The schema is migrated once into a template database
named after a hash of the migrations; every test module gets ``CREATE DATABASE ... TEMPLATE`` of
it, so modules never see each other's rows, and each test gets its own tenant.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib.resources import files
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobkeeper.embedded import EmbeddedPostgres, default_data_dir
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.postgres import Postgres
from jobkeeper.settings import asyncpg_dsn

__all__ = [
    "create_database",
    "data_layer",
    "database_url",
    "drop_database",
    "job_manager",
    "postgres_server_url",
    "template_database",
    "tenant",
    "with_database",
]

TEST_URL_ENV = "JOBKEEPER_TEST_DATABASE_URL"


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + database))


def _migrations_hash() -> str:
    """A hash of the revisions and of the environment that lays them out."""
    digest = hashlib.sha256()
    migrations = files("jobkeeper") / "migrations"
    for folder in (migrations, migrations / "versions"):
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".py"):
                digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:12]


def data_layer(manager: JobManager) -> Postgres:
    """The manager's own data layer, for tests that reach under the facade: ad-hoc SQL on its
    pool (``.database.connection()``), forcing a status (``.jobs.transition``), or wrapping a
    statement to hold it back. Applications never need it."""
    return manager._pg


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(url))


async def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (optionally from ``template``); return its URL."""
    conn = await _admin(server_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting anyone still in it."""
    conn = await _admin(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a server where the tests may create databases (see the module docstring)."""
    configured = os.environ.get(TEST_URL_ENV)
    if configured:
        sys.stderr.write(f"\njobkeeper.testing: using {TEST_URL_ENV}\n")
        yield configured
        return
    try:
        server = EmbeddedPostgres(default_data_dir("test-pg"))
    except Exception as exc:
        pytest.fail(
            f"no test database: {TEST_URL_ENV} is unset and the embedded Postgres failed: {exc}",
            pytrace=False,
        )
    sys.stderr.write("\njobkeeper.testing: using an embedded Postgres (pgserver)\n")
    try:
        yield server.url()
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def template_database(postgres_server_url: str) -> str:
    """Name of a database migrated to head, reused while the migrations are unchanged."""
    name = f"jobkeeper_template_{_migrations_hash()}"
    conn = await _admin(postgres_server_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return name
    finally:
        await conn.close()
    building = f"{name}_{uuid.uuid4().hex[:8]}"
    url = await create_database(postgres_server_url, building)
    try:
        await asyncio.to_thread(upgrade, url)
        conn = await _admin(postgres_server_url)
        try:
            await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # a concurrent session built it first
        finally:
            await conn.close()
    finally:
        await drop_database(postgres_server_url, building)
    return name


@pytest.fixture(scope="module")
async def database_url(postgres_server_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test module, dropped afterwards."""
    name = f"jobkeeper_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name, template=template_database)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, name)


@pytest.fixture
async def job_manager(database_url: str) -> AsyncIterator[JobManager]:
    """A connected ``JobManager`` on the module's database, closed after the test."""
    async with await JobManager.connect(database_url) as manager:
        yield manager


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses, so tests sharing a database never see each other's jobs."""
    return f"tenant-{uuid.uuid4().hex[:12]}"
