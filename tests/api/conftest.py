"""Fixtures of the HTTP API tests (helpers live in ``support``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.manager import JobManager

from .support import Processes, Served, bearer, make_settings, serve


@pytest.fixture(scope="module")
async def job_manager(database_url: str) -> AsyncIterator[JobManager]:
    """One manager per module (overrides the per-test one: opening it per test is slow)."""
    async with await JobManager.connect(database_url, pool_size=4) as manager:
        yield manager


@pytest.fixture(scope="module")
async def shared_app(database_url: str) -> AsyncIterator[Served]:
    """One keys-auth app per module, lifespan running; tests reach it with their own key."""
    async with serve(create_app(make_settings(database_url))) as running:
        yield running


@pytest.fixture
async def api_key(job_manager: JobManager, tenant: str) -> str:
    """A fresh API key of this test's tenant."""
    return (await ApiKeys(job_manager).create(tenant)).key


@pytest.fixture
async def served(shared_app: Served, api_key: str) -> AsyncIterator[Served]:
    """The module's app, reached as this test's tenant (with response-start notices)."""
    async with shared_app.as_caller(bearer(api_key)) as running:
        yield running


@pytest.fixture
def api(served: Served) -> httpx.AsyncClient:
    """A client of the module's app, authorised as this test's tenant."""
    return served.client


@pytest.fixture
def processes(tmp_path: Path, database_url: str) -> Iterator[Processes]:
    """Subprocesses of this test, on the module's database; all killed afterwards."""
    running = Processes(tmp_path, database_url)
    try:
        yield running
    finally:
        running.stop_all()
