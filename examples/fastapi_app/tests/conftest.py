"""The loan office's own test setup, on jobkeeper's test kit: a real Postgres, a template database
built by the application's own Alembic (which brings jobkeeper along) through the kit's one hook,
a clone of it per module, and a client with the application's lifespan running."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from alembic.config import Config
from jobkeeper.settings import sqlalchemy_url
from jobkeeper.testing import Migrations, hash_files, lifespan_client

pytest_plugins = ["jobkeeper.testing"]

APP = Path(__file__).parents[1]


def alembic_config(url: str) -> Config:
    config = Config(str(APP / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    return config


def migrate(url: str) -> None:
    """The application's Alembic history; its revision 0002 migrates jobkeeper's schema."""
    command.upgrade(alembic_config(url), "head")


@pytest.fixture(scope="session")
def jobkeeper_migrations() -> Migrations:
    """The kit's one hook: the template holds what ``alembic upgrade head`` builds, and is built
    again when the application's migrations change."""
    return Migrations(upgrade=migrate, version=hash_files(APP / "loanapp/migrations"))


@pytest.fixture(scope="module")
def app_database(database_url: str) -> str:
    """The module's clone of the template, in the form the application's engine takes."""
    return sqlalchemy_url(database_url)


@pytest.fixture
async def client(
    app_database: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[httpx.AsyncClient]:
    """The application over ASGI with its lifespan running (httpx's transport does not run it)."""
    from loanapp.main import create_app

    monkeypatch.setenv("LOANAPP_DATABASE_URL", app_database)  # what the worker's lifespan reads
    async with lifespan_client(create_app(app_database), base_url="http://loans") as http:
        yield http
