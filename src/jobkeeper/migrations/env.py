"""Alembic environment for jobkeeper's tables (target: ``jobkeeper.schema.metadata``).

Everything lives in one Postgres schema (``jobkeeper`` unless ``jobkeeper.migrate`` or
``JOBKEEPER_SCHEMA`` says otherwise), the version table too (``jobkeeper_alembic_version``), so an
application's own Alembic history and tables in the same database are never touched. The revisions
name tables without a schema and run with ``search_path`` set to that schema (restored afterwards,
so an application's revision that calls ``jobkeeper.migrate.upgrade(op.get_bind())`` goes on as it
was).

The database is the connection ``jobkeeper.migrate`` passes, else ``sqlalchemy.url``, else
``JOBKEEPER_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from jobkeeper.domain.validate import validate_schema
from jobkeeper.schema import VERSION_TABLE, metadata
from jobkeeper.settings import Settings, sqlalchemy_url

config = context.config


def _schema() -> str:
    given = config.attributes.get("schema")
    return validate_schema(given if given is not None else Settings().pg_schema)


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
        version_table=VERSION_TABLE,
        version_table_schema=_schema(),
        # the version table lives beside the tables (search_path), but is Alembic's, not ours
        include_name=lambda name, type_, _parents: not (type_ == "table" and name == VERSION_TABLE),
    )


def _set_search_path(connection: Connection, value: str) -> None:
    literal = value.replace("'", "''")
    connection.exec_driver_sql(f"SELECT set_config('search_path', '{literal}', false)")


def _run(connection: Connection) -> None:
    """Migrate on ``connection``: in the caller's transaction if one is open (an application's
    revision), else in one of its own, committed at the end."""
    external = connection.in_transaction()
    schema = _schema()
    connection.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    previous = connection.exec_driver_sql("SELECT current_setting('search_path')").scalar_one()
    _set_search_path(connection, f'"{schema}"')
    try:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        _set_search_path(connection, previous)
    if not external:
        connection.commit()


async def _online() -> None:
    engine = create_async_engine(_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


given = config.attributes.get("connection")
if context.is_offline_mode():
    _configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{_schema()}"')
        context.execute(f'SET search_path TO "{_schema()}"')
        context.run_migrations()
elif isinstance(given, Connection):
    _run(given)
else:
    asyncio.run(_online())
