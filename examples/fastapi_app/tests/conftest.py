"""The loan office's own test setup: a real Postgres from jobkeeper's test kit, a database per
module migrated by the application's own Alembic (which brings jobkeeper along), and a client
with the application's lifespan running."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.config import Config
from jobkeeper.settings import sqlalchemy_url

pytest_plugins = ["jobkeeper.testing"]

APP = Path(__file__).parents[1]


def alembic_config(url: str) -> Config:
    config = Config(str(APP / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    return config


@pytest.fixture(scope="module")
async def app_database(postgres_server_url: str) -> AsyncIterator[str]:
    from alembic import command
    from jobkeeper.testing import create_database, drop_database

    name = f"loanapp_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        await asyncio.to_thread(command.upgrade, alembic_config(url), "head")
        yield sqlalchemy_url(url)
    finally:
        await drop_database(postgres_server_url, name)


@pytest.fixture
async def client(
    app_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The application over ASGI with its lifespan running (httpx's transport does not run it)."""
    from loanapp.main import create_app

    monkeypatch.setenv("LOANAPP_DATABASE_URL", app_database)  # what the worker's lifespan reads
    app = create_app(app_database)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://loans") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http
