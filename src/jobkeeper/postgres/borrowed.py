"""Statements on the caller's connection, inside the caller's open transaction: a job submitted
there commits or rolls back with the application's own rows.

The connection is the application's: it has its own ``search_path`` (statements are schema-
qualified anyway) and its own JSON codecs, or none (so JSON columns are read back as text and
parsed here), and only the application decides when it commits. Notifications are therefore sent
inside that transaction with ``pg_notify``, which Postgres delivers at commit and drops on
rollback: no worker or replica hears of a job before it exists for them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from jobkeeper.domain.values import Job
from jobkeeper.errors import DatabaseUnavailable, InvalidRequest
from jobkeeper.postgres.pool import LINK_ERRORS, loads, to_job
from jobkeeper.schema import jobs

__all__ = ["Borrowed", "CallerConnection", "borrow", "job_of_text_row", "json_as_text"]

# what an application may hand over: its ORM session, its Core connection, or asyncpg's own
CallerConnection = AsyncSession | AsyncConnection | asyncpg.Connection
_JSON_COLUMNS = frozenset(c.name for c in jobs.c if c.type.__class__.__name__ in ("JSONB", "JSON"))


def json_as_text(prefix: str) -> str:
    """A select list of every ``jobs`` column of ``prefix`` (a table or CTE name), JSON as text."""
    return ", ".join(
        f"{prefix}.{c.name}::text AS {c.name}" if c.name in _JSON_COLUMNS else f"{prefix}.{c.name}"
        for c in jobs.c
    )


def job_of_text_row(row: Mapping[str, Any]) -> Job:
    """The ``Job`` of a row selected with ``json_as_text``."""
    values = dict(row)
    for name in _JSON_COLUMNS:
        if values[name] is not None:
            values[name] = loads(values[name])
    return to_job(values)


class Borrowed(Protocol):
    """A connection of the caller's, in its open transaction; rows are read by column name."""

    async def fetch(self, text: str, args: Sequence[Any]) -> list[Any]: ...


class _Core:
    """Through SQLAlchemy, so its own notion of the transaction (begun, not yet on the wire
    with asyncpg until its first statement) stays the truth."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def fetch(self, text: str, args: Sequence[Any]) -> list[Any]:
        try:
            result = await self._connection.exec_driver_sql(text, tuple(args))
        except LINK_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        return [row._mapping for row in result] if result.returns_rows else []


class _Asyncpg:
    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def fetch(self, text: str, args: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._connection.fetch(text, *args))
        except LINK_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc


async def borrow(connection: object) -> Borrowed:
    """The caller's connection, checked: a SQLAlchemy ``AsyncSession`` (its transaction is
    begun if it has none, as any use of the session would) or ``AsyncConnection``, or an asyncpg
    ``Connection``, each inside an open transaction; else ``InvalidRequest``."""
    if isinstance(connection, AsyncSession):
        connection = await connection.connection()
    if isinstance(connection, AsyncConnection):
        if not connection.in_transaction():
            raise InvalidRequest(
                "connection", "begin a transaction first (async with conn.begin())"
            )
        return _Core(connection)
    if isinstance(connection, asyncpg.Connection) or _is_pooled(connection):
        if not connection.is_in_transaction():  # type: ignore[attr-defined]
            raise InvalidRequest(
                "connection", "begin a transaction first (async with conn.transaction())"
            )
        return _Asyncpg(connection)  # type: ignore[arg-type]
    raise InvalidRequest(
        "connection", "an AsyncSession, an AsyncConnection or an asyncpg Connection is required"
    )


def _is_pooled(connection: object) -> bool:
    """An asyncpg pool's connection proxy (not a ``Connection`` subclass)."""
    return isinstance(connection, asyncpg.pool.PoolConnectionProxy)
