"""The asyncpg pool every statement runs on, its codecs, and what counts as a lost connection.

Statements run in autocommit as prepared statements with generic plans. The pool is asyncpg's,
not SQLAlchemy's: a checkout and return through SQLAlchemy's async engine cost more CPU than
the statement itself for a submit (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

import asyncpg

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import FrozenDict, Job, Progress, freeze_json, job_of
from jobkeeper.errors import DatabaseUnavailable, SchemaMissing, SchemaOutdated
from jobkeeper.postgres.compile import Sql, qualify
from jobkeeper.schema import REVISION, VERSION_TABLE

__all__ = ["LINK_ERRORS", "Database", "Pooled", "loads", "to_job"]

# errors that mean the connection (not the statement) failed
LINK_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    # a pooled connection the server dropped: "connection is closed", or a protocol left
    # mid-operation ("cannot switch to state ...; another operation is in progress")
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# every table of the current schema exists in schema $1 (a cheap check at connect)
_SCHEMA_PRESENT = """SELECT count(*) = 6 FROM pg_catalog.pg_tables WHERE schemaname = $1
  AND tablename IN ('jobs', 'job_events', 'job_tombstones', 'api_keys', 'workers', 'schedules')"""
# jobkeeper's tables in public with Alembic's default version table: the layout before schemas
_OLD_LAYOUT = """SELECT to_regclass('public.job_tombstones') IS NOT NULL
  AND to_regclass('public.alembic_version') IS NOT NULL"""

Pooled: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"
_EMPTY_OBJECT = FrozenDict()
_STATUS = {status.value: status for status in JobStatus}  # a dict lookup, not Enum.__call__


def loads(text: str) -> Any:
    """A JSON value as jobkeeper hands it out: deep-frozen."""
    if text == "{}":  # answers, checkpoints and many payloads: skip the parser
        return _EMPTY_OBJECT
    return freeze_json(json.loads(text))


def to_job(row: asyncpg.Record | Mapping[str, Any]) -> Job:
    """The ``Job`` of a ``jobs`` row (its JSON already frozen by the codec)."""
    waiting_for = row["waiting_for"]
    return job_of(
        row["id"],
        row["tenant"],
        row["kind"],
        _STATUS[row["status"]],
        row["payload"],
        row["result"],
        row["error"],
        Progress(row["progress_fraction"], row["progress_message"]),
        row["priority"],
        row["attempts"],
        row["max_attempts"],
        row["run_after"],
        row["idempotency_key"],
        row["concurrency_key"],
        row["cancel_requested"],
        row["pinned"],
        row["version"],
        row["created_at"],
        row["updated_at"],
        row["started_at"],
        row["finished_at"],
        row["prompt"],
        row["answers"],
        row["checkpoints"],
        row["schedule_id"],
        row["scheduled_for"],
        row["input_deadline"],
        row["question_version"],
        row["claimed_by"],
        row["claim_expires_at"],
        row["parent_id"],
        None if waiting_for is None else tuple(waiting_for),
        row["sleeping_until"],
        row["trace_context"],
    )


async def _set_codecs(conn: asyncpg.Connection) -> None:
    """JSON columns arrive as frozen values (``loads``); JSON parameters are sent as text."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_as_text, decoder=loads, format="text"
        )


def _as_text(value: str) -> str:
    return value


async def _keep_as_is(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection returns to the pool: statements run in autocommit and
    leave no session state (the sweeper's advisory lock ends with its transaction), so
    asyncpg's default reset (one more round trip per checkout) is skipped."""


def _discard(conn: Pooled) -> None:
    """Close a pooled connection whose link failed, whatever state asyncpg left it in.

    When the server ends a backend mid-statement, asyncpg sees the connection lost and hands its
    holder back to the pool itself; the proxy is then detached and every method on it, even
    ``terminate()``, raises ``InterfaceError`` ("released back to the pool"). Nothing is left to
    close then, so that error is the sign the job is already done.
    """
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


class Database:
    """One asyncpg pool (no I/O until the first statement) and the ways to run statements on it,
    each with its tables in ``schema`` (``text``). A statement that takes longer than
    ``command_timeout`` seconds counts as a lost connection.

    ``announce`` is called with the rows of every committed change (``write``); the change
    announcer (``notify.Announcer``) sets it.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        prepared_statements: bool = True,
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.prepared_statements = prepared_statements
        self.connect_timeout = connect_timeout
        self._texts: dict[str, str] = {}
        self._pool: asyncpg.Pool = asyncpg.create_pool(
            dsn,
            min_size=0,  # connections are opened on demand; no I/O until the first statement
            max_size=pool_size,
            init=_set_codecs,
            reset=_keep_as_is,
            timeout=connect_timeout,
            # a link that dies silently (a partition, a dead switch port) drops packets without
            # a reset: a statement on it would wait for TCP to give up, minutes later. Past this
            # it ends in TimeoutError, a LINK_ERROR: the connection is dropped, the caller gets
            # DatabaseUnavailable (HTTP 503) and a worker's loops carry on.
            command_timeout=command_timeout,
            # a transaction-mode pooler (PgBouncer before 1.21) cannot keep a connection's
            # named prepared statements: each statement is then prepared unnamed, per call
            statement_cache_size=1024 if prepared_statements else 0,
            server_settings={
                "application_name": "jobkeeper",
                # every statement is prepared once per connection and planned once: left to
                # choose, Postgres re-planned the claim on every call, which cost more than
                # running it for a small batch. tests/test_query_plans.py checks each plan.
                "plan_cache_mode": "force_generic_plan",
            },
        )
        self._ready = False
        self._lock = asyncio.Lock()
        self.announce: Callable[[Sequence[Any]], None] = lambda rows: None

    def text(self, sql: Sql) -> str:
        """``sql`` as run here: its tables in this database's schema (worked out once)."""
        text = self._texts.get(sql.text)
        if text is None:
            text = self._texts[sql.text] = qualify(sql.text, self.schema)
        return text

    @property
    def ready(self) -> bool:
        """Whether the pool was ever opened (there is something to close)."""
        return self._ready

    async def close(self) -> None:
        """Close every pooled connection, waiting briefly for those in use."""
        if not self._ready:
            return
        try:
            await asyncio.wait_for(self._pool.close(), self.connect_timeout)
        except TimeoutError:
            self._pool.terminate()

    async def _acquire(self) -> Pooled:
        if not self._ready:
            async with self._lock:
                if not self._ready:
                    await self._pool
                    self._ready = True
        return await self._pool.acquire(timeout=self.connect_timeout)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Pooled]:
        """A pooled asyncpg connection in autocommit, for the block.

        A failure of the connection itself becomes ``DatabaseUnavailable``; the connection is
        dropped and every other pooled one is replaced when next used: after a database restart
        every pooled connection is dead, not just this one.
        """
        try:
            conn = await self._acquire()
        except LINK_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        except asyncpg.PostgresError as exc:  # refused by the server: authentication, no database
            raise DatabaseUnavailable(f"database connection failed: {exc}") from exc
        try:
            yield conn
        except LINK_ERRORS as exc:
            _discard(conn)
            await self._pool.expire_connections()
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        finally:
            await self._pool.release(conn)

    async def rows(self, sql: Sql, params: Mapping[str, Any], *, read: bool) -> list[Any]:
        """Run one statement. A read that hit a dead pooled connection is tried once more."""
        for attempt in (1, 2):
            try:
                async with self.connection() as conn:
                    return list(await conn.fetch(self.text(sql), *sql.args(params)))
            except DatabaseUnavailable:
                if not read or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def job(self, sql: Sql, params: Mapping[str, Any]) -> Job | None:
        """The job a read returns, if any."""
        rows = await self.rows(sql, params, read=True)
        return to_job(rows[0]) if rows else None

    async def write(self, sql: Sql, params: Mapping[str, Any]) -> list[Any]:
        """Run one change and announce what it changed (each row: id, version, status...)."""
        async with self.connection() as conn:
            rows = list(await conn.fetch(self.text(sql), *sql.args(params)))
        self.announce(rows)
        return rows

    async def write_job(self, sql: Sql, params: Mapping[str, Any]) -> Job | None:
        rows = await self.write(sql, params)
        return to_job(rows[0]) if rows else None

    async def write_jobs(self, sql: Sql, params: Mapping[str, Any]) -> list[Job]:
        return [to_job(row) for row in await self.write(sql, params)]

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless Postgres answers, ``SchemaMissing`` unless the
        tables are in this database's schema at this code's revision or a newer one
        (``SchemaOutdated`` if they are where jobkeeper kept them before it had a schema of its
        own)."""
        async with self.connection() as conn:
            present = await conn.fetchval(_SCHEMA_PRESENT, self.schema)
            old = not present and await conn.fetchval(_OLD_LAYOUT)
            revision = present and await conn.fetchval(
                f'SELECT max(version_num) FROM "{self.schema}".{VERSION_TABLE}'
            )
        if old:
            raise SchemaOutdated(self.schema)
        if not present:
            raise SchemaMissing(self.schema)
        # revisions are numbered: an older one lacks what this code writes (a newer one, from
        # a release rolled out ahead of this process, only adds to it)
        if revision is None or revision < REVISION:
            raise SchemaMissing(
                self.schema,
                f"jobkeeper's tables in schema {self.schema!r} are at revision {revision}, and "
                f"this jobkeeper needs {REVISION}: run `jobkeeper migrate --schema "
                f"{self.schema}`, or bring jobkeeper to {REVISION!r} from your application's "
                "own Alembic revision (jobkeeper.migrate.upgrade)",
            )
