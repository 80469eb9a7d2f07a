"""jobkeeper as the benchmarks drive it, and the ONE place where they reach past its public API.

Every other benchmark file imports ``from jobkeeper import <public name>`` only; whatever else
they need (the data layer, the table definitions, URL helpers, the embedded server, migrations,
scratch databases, which source files a profile attributes time to) is named here, so a move
inside jobkeeper is fixed in this file alone.

Importing it loads nothing that importing jobkeeper does not: ``bench_coherence.py`` weighs a
replica process that imports it, and the test helpers, migrations and embedded server (pytest,
alembic, pgserver) are imported by the functions that use them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from jobkeeper import JobContext, JobManager, JobStatus, Lease, TaskRegistry, Worker
from jobkeeper.domain.validate import DEFAULT_SCHEMA
from jobkeeper.maintenance import Retention, Sweeper
from jobkeeper.postgres import CHANNEL, Postgres
from jobkeeper.postgres.compile import Sql, qualify
from jobkeeper.schema import jobs
from jobkeeper.settings import asyncpg_dsn, sqlalchemy_url
from jobkeeper.testing import data_layer
from systems import PRODUCERS, TENANT, Config, Producer, Ready, System, WorkerArgs

__all__ = [
    "CHANNEL",
    "CONCURRENCY",
    "LOOP",
    "NOOP",
    "PROFILED",
    "STAMP",
    "Jobkeeper",
    "Postgres",
    "Retention",
    "Step",
    "Sweeper",
    "WorkerStatements",
    "asyncpg_dsn",
    "create_database",
    "drop_database",
    "embedded_server",
    "in_schema",
    "jobs",
    "lease_statements",
    "migrate_to_head",
    "move_to_running",
    "open_repository",
    "repository_of",
    "serve_uvicorn",
    "sqlalchemy_url",
]

NOOP = "bench.noop"
STAMP = "bench.stamp"  # returns when its handler started (CLOCK_MONOTONIC, one clock for all)
LOOP = "bench.loop"  # checks for cancellation every 100 ms, for up to 30 s
CONCURRENCY = 100  # a drain worker process's slots

# (file under jobkeeper/, function): the jobkeeper functions whose cumulative time a profiled
# worker reports, the ones a worker's cycle goes through
PROFILED = (
    ("postgres/leases.py", "claim"),
    ("postgres/leases.py", "complete_ids"),
    ("postgres/notify.py", "queue"),
    ("postgres/pool.py", "connection"),
    ("postgres/pool.py", "to_job"),
    ("postgres/pool.py", "loads"),
    ("worker/worker.py", "_start"),
    ("worker/executor.py", "execute"),
    ("worker/worker.py", "_on_changes"),
    ("feed.py", "_on_payload"),
    ("values.py", "freeze_json"),
)


# --- the server, scratch databases, the schema -----------------------------------------------


@contextmanager
def embedded_server(name: str) -> Iterator[str]:
    """An embedded Postgres (pgserver) in data directory ``name``, stopped on the way out: its
    URL."""
    from jobkeeper.embedded import EmbeddedPostgres, default_data_dir

    embedded = EmbeddedPostgres(default_data_dir(name))
    try:
        yield embedded.url()
    finally:
        embedded.stop()


async def create_database(server_url: str, name: str) -> str:
    """Database ``name`` on the server; its URL."""
    from jobkeeper.testing import create_database as create

    return await create(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting anyone still in it."""
    from jobkeeper.testing import drop_database as drop

    await drop(server_url, name)


def serve_uvicorn() -> tuple[dict[str, Any], Callable[[], None]]:
    """The uvicorn options of ``jobkeeper serve`` (event loop, HTTP parser, its own logging in
    place of uvicorn's) and the function that configures that logging, for a peer server run
    the same way (imported here, when called: the CLI loads typer and rich)."""
    from jobkeeper.cli import SERVE_HTTP, SERVE_LOOP
    from jobkeeper.logs import configure_logging

    return {"loop": SERVE_LOOP, "http": SERVE_HTTP, "log_config": None}, configure_logging


def in_schema(text: str) -> str:
    """The benchmarks' own SQL with jobkeeper's tables named in their (default) schema."""
    return qualify(text, DEFAULT_SCHEMA)


async def migrate_to_head(url: str) -> None:
    """Migrate the database at ``url`` to head (``jobkeeper.migrate.upgrade``), and put
    jobkeeper's schema on the search path of connections opened from now on (after ``public``,
    where the peers create their tables), for the SQLAlchemy reference rows; connections opened
    before use ``in_schema``."""
    from jobkeeper.migrate import upgrade

    await asyncio.to_thread(upgrade, url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET search_path TO public, jobkeeper')
    finally:
        await conn.close()


# --- below the manager -----------------------------------------------------------------------


def open_repository(url: str, *, notify: bool) -> Postgres:
    """A data layer of its own (pool of 10), announcing its changes or not."""
    return Postgres.create(url, notify=notify)


def repository_of(manager: JobManager) -> Postgres:
    """The data layer a manager reads and writes through."""
    return data_layer(manager)


async def move_to_running(manager: JobManager, job_id: UUID, tenant: str) -> None:
    """Put a queued job in ``running`` with an hour's lease, as a claim would (without one)."""
    await repository_of(manager).jobs.transition(
        job_id, tenant, JobStatus.RUNNING, event="claimed", lease_seconds=3600
    )


@dataclass(frozen=True, slots=True)
class WorkerStatements:
    """The two statements a worker runs per batch, as compiled for asyncpg."""

    claim_sql: Sql
    complete_sql: Sql  # the completion of a worker that keeps no cache (ids back, not rows)


def lease_statements() -> WorkerStatements:
    """A worker's claim and completion statements, for ``EXPLAIN`` (``bench_limit.py``)."""
    from jobkeeper.postgres import leases

    return WorkerStatements(leases._CLAIM, leases._COMPLETE_IDS)


# --- the throughput adapter ------------------------------------------------------------------


def tasks() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task(NOOP)
    async def noop(ctx: JobContext, payload: Any) -> None:
        return None

    @registry.task(STAMP)
    async def stamp(ctx: JobContext, payload: Any) -> dict[str, int]:
        return {"started_ns": time.monotonic_ns()}

    @registry.task(LOOP)
    async def loop(ctx: JobContext, payload: Any) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            await asyncio.sleep(0.1)

    return registry


Claim = Callable[..., Awaitable[list[Lease]]]
Complete = Callable[[list[Lease]], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Step:
    """One call of a worker's cycle, timed from the parent."""

    name: str
    wall_ms: tuple[float, ...]
    cpu_ms: tuple[float, ...]  # this thread's CPU time during the call (Python side)


_C = CONCURRENCY
_ARGS = WorkerArgs(concurrency=CONCURRENCY)


class Jobkeeper(System):
    name = "jobkeeper"
    done_sql = in_schema("SELECT count(*) FROM jobs WHERE status = 'succeeded'")
    pending_sql = in_schema(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued')"
        " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running')"
    )
    reset_sql = in_schema("TRUNCATE jobs, job_events, workers")
    workers_method = (
        f'jobkeeper workers: `Worker(await JobManager.connect(url, role="worker"), tasks, '
        f"concurrency={CONCURRENCY})`, otherwise default settings (what `jobkeeper worker` runs: "
        "a worker process keeps no cache), and an async no-op handler; on the standard asyncio "
        "loop like the CLI, and on uvloop."
    )
    configurations = (
        Config("jk1", f"1 process, concurrency {_C}", 1, _ARGS),
        Config("jk4", f"4 processes, concurrency {_C} each", 4, _ARGS),
        Config("jk1uv", f"1 process, concurrency {_C}, uvloop", 1, _ARGS, uvloop=True),
        Config("jk2uv", f"2 processes, concurrency {_C} each, uvloop", 2, _ARGS, uvloop=True),
        Config("jk4uv", f"4 processes, concurrency {_C} each, uvloop", 4, _ARGS, uvloop=True),
    )

    @asynccontextmanager
    async def installed(self) -> AsyncIterator[None]:
        await migrate_to_head(self.url)
        yield

    # rows like ``submit`` writes (uuid7 ids, a ``submitted`` event each), in one statement:
    # $1 ids, $2 payloads (JSON text), $3 tenant, $4 kind
    preload_sql = in_schema(
        """WITH new AS (
        INSERT INTO jobs (id, tenant, kind, payload)
        SELECT t.id, $3, $4, t.payload::jsonb
        FROM unnest($1::uuid[], $2::text[]) AS t(id, payload)
        RETURNING id, version, created_at)
    INSERT INTO job_events (job_id, seq, type, data, at)
    SELECT id, version, 'submitted', jsonb_build_object('kind', $4::text), created_at
    FROM new"""
    )

    async def preload(self, n: int) -> None:
        """``n`` queued no-op jobs as ``submit`` writes them (``preload_sql``)."""
        ids = [uuid7() for _ in range(n)]
        payloads = [json.dumps({"n": i}) for i in range(n)]
        await self.admin.execute(self.preload_sql, ids, payloads, TENANT, NOOP)

    @asynccontextmanager
    async def producer(self, batch: int) -> AsyncIterator[Producer]:
        """``JobManager.submit`` on a pool of ``PRODUCERS``, one job per call (lists:
        ``bench_batch.py``)."""
        async with await JobManager.connect(self.url, pool_size=PRODUCERS) as manager:

            def submit(i: int) -> Awaitable[object]:
                return manager.submit(TENANT, NOOP, {"n": i})

            yield Producer(("`JobManager.submit`", submit))

    @staticmethod
    async def run_worker(url: str, args: WorkerArgs, ready: Ready) -> None:
        """``jobkeeper worker`` in-process: the same Worker the CLI runs, with default
        settings (a worker process keeps no cache)."""
        async with await JobManager.connect(url, role="worker") as manager:
            worker = Worker(manager, tasks(), concurrency=args.concurrency)
            await ready()
            worker.install_signal_handlers()
            await worker.run()

    async def worker_cycle(self, cycles: int) -> list[Step]:
        """A worker's two statements per batch, timed from the parent: ``claim`` of
        ``CONCURRENCY`` jobs, then ``mark_succeeded`` of all of them, as ``Worker`` calls them
        (through ``JobManager``, notifications on), and on a repository with ``notify=False``
        for the cost of the notifications. Cycles alternate between the two; the first of each
        kind warms up."""
        await self.reset()
        await self.preload(2 * (cycles + 1) * CONCURRENCY)
        await self.analyze()
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}
        worker_id = uuid.uuid4()

        async def timed(name: str, call: Awaitable[Any], *, record: bool) -> Any:
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            value = await call
            if record:
                wall.setdefault(name, []).append((time.perf_counter_ns() - w0) / 1e6)
                cpu.setdefault(name, []).append((time.thread_time_ns() - c0) / 1e6)
            return value

        manager = await JobManager.connect(self.url)
        quiet = open_repository(self.url, notify=False)

        def manager_complete(leases: list[Lease]) -> Awaitable[object]:
            return manager.mark_succeeded([(lease, "null", None) for lease in leases])

        def quiet_complete(leases: list[Lease]) -> Awaitable[object]:
            return quiet.leases.complete(
                [(lease.job.id, lease.token, "null", None) for lease in leases]
            )

        ways: tuple[tuple[str, Claim, str, Complete], ...] = (
            (
                f"`JobManager.claim`, {_C} jobs (as `Worker` calls it)",
                manager.claim,
                f"`JobManager.mark_succeeded`, {_C} jobs (as `Worker` calls it)",
                manager_complete,
            ),
            (
                f"`LeaseStatements.claim`, {_C} jobs, `notify=False`",
                quiet.leases.claim,
                f"`LeaseStatements.complete`, {_C} jobs, `notify=False`",
                quiet_complete,
            ),
        )
        try:
            for i in range(cycles + 1):
                for claim_name, claim, complete_name, complete in ways:
                    claimed = claim(worker_id, kinds=[NOOP], limit=_C, lease_seconds=30.0)
                    leases = await timed(claim_name, claimed, record=i > 0)
                    await timed(complete_name, complete(leases), record=i > 0)
        finally:
            await quiet.close()
            await manager.close()
        return [Step(name, tuple(wall[name]), tuple(cpu[name])) for name in wall]


ADAPTER = Jobkeeper
