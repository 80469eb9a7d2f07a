"""Alembic environment for the jobkeeper schema (target: ``jobkeeper.schema.metadata``).

The database is ``sqlalchemy.url`` when ``jobkeeper.migrate`` sets it,
else ``JOBKEEPER_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from jobkeeper.schema import metadata
from jobkeeper.settings import Settings, sqlalchemy_url

config = context.config


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or Settings().database_url
    if not url:
        raise SystemExit("set JOBKEEPER_DATABASE_URL to the database to migrate")
    return sqlalchemy_url(url)


def _configure(
    connection: Connection | None = None, *, url: str | None = None, literal_binds: bool = False
) -> None:
    context.configure(
        connection=connection,
        url=url,
        literal_binds=literal_binds,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        transaction_per_migration=True,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
