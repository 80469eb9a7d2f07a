"""Helpers shared by the test modules (not fixtures: those are in jobkeeper.testing)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar, overload
from uuid import UUID, uuid4

import asyncpg
import pytest

from jobkeeper.domain.status import TRANSITIONS, JobStatus
from jobkeeper.domain.values import Job, Progress
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.worker import TaskRegistry, Worker

DEADLINE = 10.0
T = TypeVar("T")
# the first and the longest pause between two checks of ``eventually``
FIRST_POLL, LONGEST_POLL = 0.01, 0.05
# waiting on a lock, in one of jobkeeper's pooled connections of this database
_WAITING_ON_LOCK = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = 'jobkeeper' AND wait_event_type = 'Lock'"
)


class Watched(Protocol):
    """What ``eventually(watch=...)`` watches: a process whose death makes waiting pointless."""

    def died(self) -> bool:
        """Whether it has ended in a way that means the awaited state will never come."""
        ...

    def tail(self) -> str:
        """Who it is, how it ended and the end of its log, for a failure message."""
        ...


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    what: str,
    watch: Sequence[Watched] = ...,
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None],
    *,
    timeout: float = ...,  # noqa: ASYNC109
    what: str,
    watch: Sequence[Watched] = ...,
) -> T: ...


async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = DEADLINE,  # noqa: ASYNC109 (a failure that names what it waited for)
    what: str,
    watch: Sequence[Watched] = (),
) -> Any:
    """Poll ``check`` (sync or async) until it gives something truthy, and return that: the one
    wait of the tests, instead of a fixed sleep. Fails naming ``what`` after ``timeout`` seconds,
    or as soon as a ``watch``ed process has died, with the tails of their logs."""
    end = time.monotonic() + timeout
    pause = FIRST_POLL
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        for watched in watch:
            if watched.died():
                pytest.fail(f"a watched process died while waiting for {what}\n{watched.tail()}")
        if time.monotonic() > end:
            logs = "".join(f"\n{watched.tail()}" for watched in watch)
            pytest.fail(f"timed out after {timeout} s waiting for {what} (last: {value!r}){logs}")
        await asyncio.sleep(pause)
        pause = min(2 * pause, LONGEST_POLL)


def make_worker(jobs: JobManager, tasks: TaskRegistry, **overrides: Any) -> Worker:
    """An in-process worker with quick settings (a short lease, fast polls and retries, a short
    grace); ``overrides`` are any other ``Worker`` keywords (``kinds``, ``concurrency``...)."""
    settings: dict[str, Any] = {
        "concurrency": 4,
        "lease_seconds": 2.0,
        "poll_interval": 0.2,
        "backoff_base": 0.05,
        "backoff_max": 0.2,
        "shutdown_grace": 1.0,
        "progress_interval": 0.2,
    }
    return Worker(jobs, tasks, **(settings | overrides))


async def terminate_feeds(url: str) -> int:
    """Kill every change-feed backend on the test database, as a network failure would."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'jobkeeper-feed' AND datname = current_database()"
        )
    finally:
        await conn.close()
    return len(killed)


def make_job(*, version: int = 1, id: UUID | None = None, tenant: str = "tenant-a") -> Job:
    """A ``Job`` value for tests of the cache (no database row behind it)."""
    now = datetime.now(UTC)
    return Job(
        id=uuid4() if id is None else id,
        tenant=tenant,
        kind="cache.test",
        status=JobStatus.QUEUED,
        payload={"n": version},
        result=None,
        error=None,
        progress=Progress(),
        priority=0,
        attempts=0,
        max_attempts=3,
        run_after=now,
        idempotency_key=None,
        concurrency_key=None,
        cancel_requested=False,
        pinned=False,
        version=version,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
    )


async def explain(url: str, sql: str) -> Any:
    """The JSON plan of ``sql`` as jobkeeper runs it: a generic plan (its pool sets
    ``plan_cache_mode = force_generic_plan``), so no parameter values are needed. Planned inside a
    transaction that is rolled back (some statements write; EXPLAIN does not run them anyway)."""
    conn = await asyncpg.connect(
        asyncpg_dsn(url), server_settings={"plan_cache_mode": "force_generic_plan"}
    )
    try:
        tx = conn.transaction()
        await tx.start()
        try:
            await conn.execute(f"PREPARE planned AS {sql}")
            count = await conn.fetchval(
                "SELECT cardinality(parameter_types) FROM pg_prepared_statements"
                " WHERE name = 'planned'"
            )
            nulls = f"({', '.join(['NULL'] * count)})" if count else ""
            plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE planned{nulls}")
        finally:
            await tx.rollback()
    finally:
        await conn.close()
    return json.loads(plan)


def plan_nodes(plan: Any) -> list[dict[str, Any]]:
    """Every node of a JSON plan."""
    nodes: list[dict[str, Any]] = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Node Type" in node:
                nodes.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return nodes


def index_names(plan: Any) -> set[str]:
    """Every index a plan uses."""
    return {node["Index Name"] for node in plan_nodes(plan) if "Index Name" in node}


def node_types(plan: Any) -> set[str]:
    """Every kind of plan node (``Seq Scan``, ``Merge Append``, ...) in a plan."""
    return {node["Node Type"] for node in plan_nodes(plan)}


def seq_scanned(plan: Any) -> set[str]:
    """The tables a plan reads whole."""
    return {node["Relation Name"] for node in plan_nodes(plan) if node["Node Type"] == "Seq Scan"}


async def terminate_waiting(admin: asyncpg.Connection) -> int:
    """Terminate every jobkeeper backend that waits on a lock; how many there were."""
    rows = await admin.fetch(f"SELECT pg_terminate_backend(pid) FROM ({_WAITING_ON_LOCK}) AS w")
    return len(rows)


async def killed_while_waiting(admin: asyncpg.Connection, work: Awaitable[T]) -> T:
    """Run ``work``, terminating its backend each time it waits on a lock, until it ends."""
    task = asyncio.ensure_future(work)
    killed = 0
    try:
        async with asyncio.timeout(DEADLINE):
            while not task.done():
                killed += await terminate_waiting(admin)
                await asyncio.wait({task}, timeout=0.02)
        assert killed, "the statement never waited on the lock"
        return task.result()
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def path_to(target: JobStatus) -> list[JobStatus]:
    """The shortest chain of allowed transitions from ``queued`` to ``target`` (BFS)."""
    paths: dict[JobStatus, list[JobStatus]] = {JobStatus.QUEUED: []}
    todo = deque([JobStatus.QUEUED])
    while todo:
        status = todo.popleft()
        for nxt in sorted(TRANSITIONS[status]):
            if nxt not in paths:
                paths[nxt] = [*paths[status], nxt]
                todo.append(nxt)
    return paths[target]


_ALEMBIC_ENV = """import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.ext.asyncio import create_async_engine

import jobkeeper.migrate
{models}


def run(connection):
    context.configure(
        connection=connection,
        target_metadata={metadata},
        include_schemas=True,  # the strictest: every schema is compared, jobkeeper's left out
        include_name=jobkeeper.migrate.include_name,
        include_object=jobkeeper.migrate.include_object,
    )
    with context.begin_transaction():
        context.run_migrations()


async def main():
    url = context.config.get_main_option("sqlalchemy.url")
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()


asyncio.run(main())
"""


def alembic_env(*, models: str, metadata: str) -> str:
    """The ``env.py`` of a test application's Alembic: async, its ``metadata`` (imported by the
    ``models`` line) compared in every schema, jobkeeper's schema and version table left out."""
    return _ALEMBIC_ENV.format(models=models, metadata=metadata)
