"""The application's Alembic environment. jobkeeper's schema and version table are left out of
autogenerate and ``alembic check`` (``include_name``/``include_object``); a revision of the
application's own brings jobkeeper to its revision (versions/0002_jobkeeper.py)."""

from __future__ import annotations

import asyncio
import os

import jobkeeper.migrate
from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from loanapp.models import Base


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        include_schemas=True,
        include_name=jobkeeper.migrate.include_name,
        include_object=jobkeeper.migrate.include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def main() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or os.environ["LOANAPP_DATABASE_URL"]
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
