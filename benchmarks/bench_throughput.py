"""Throughput benchmark: jobkeeper against pgqueuer and procrastinate on the same Postgres.

One run measures, for each system in its own scratch database (created, migrated or installed, and
dropped at the end, even on error):

1. enqueue only: jobs/s of ``JobManager.submit`` (sequential and 16 tasks), pgqueuer
   ``Queries.enqueue`` (single and batched) and procrastinate ``defer_async``/``batch_defer_async``;
2. drain: N no-op jobs pre-enqueued, then worker *processes* run them all (jobs/s, worker and
   Postgres CPU per job);
3. submit + work: producers submit at full speed while workers run, for a fixed time;
4. jobkeeper only: claim latency of an idle worker (submit returned -> handler started) and cancel
   latency (``cancel()`` returned -> status ``cancelled`` seen by a strong read);
5. jobkeeper only: one worker process drained under cProfile, to show where its time goes.

The server is ``JOBKEEPER_DATABASE_URL`` when set (its user must be allowed to ``CREATE
DATABASE``), else an embedded Postgres (pgserver). Worker processes are this script started with
``--role ...``; every one is killed on the way out. Peers are benchmark-only extras
(``pip install pgqueuer procrastinate``, or ``jobkeeper[bench]``).

    .venv/bin/python benchmarks/bench_throughput.py            # print the markdown report
    .venv/bin/python benchmarks/bench_throughput.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_throughput.py --quick    # smoke run, small counts (< 90 s)

Exits with status 1 when a target is missed (after printing and writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import logging
import math
import os
import pstats
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from common import (
    arguments,
    load_average,
    machine,
    nearest_rank,
    postgres_server,
    proc_cpu,
    publish,
    scratch,
)
from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager
from jobkeeper.repository import JobRepository
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry, Worker

SCRIPT = Path(__file__).resolve()

TENANT = "bench"
NOOP = "bench.noop"
STAMP = "bench.stamp"
LOOP = "bench.loop"
PEER_TASK = "bench_noop"
PRODUCERS = 16  # concurrent submitting tasks, in the enqueue and submit + work phases
MAX_SUBMITS = 1_000_000  # a bound on the submit + work producers besides their time
JK_CONCURRENCY = 100
PGQ_DEFAULT_BATCH = 10
PGQ_BEST_BATCH = 100
PROC_CONCURRENCY = 10
POLL = 0.025  # seconds between the parent's "is the queue empty yet?" checks
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0

TARGET_CLAIM_P50_MS = 5.0
TARGET_CANCEL_MS = 2_000.0
PACKAGES = ("jobkeeper", "asyncpg", "SQLAlchemy", "pgqueuer", "procrastinate", "psycopg")


@dataclass(frozen=True, slots=True)
class Plan:
    drain_jobs: int  # per round, for the fast configurations (see WorkerSpec.share)
    rounds: int  # drain rounds, interleaved: every configuration once per round
    drain_timeout: float
    enqueue_single: int
    enqueue_concurrent: int
    enqueue_batched: int
    batch: int
    enqueue_timeout: float
    cycles: int  # claim + complete cycles timed in the statement phase
    mixed_seconds: float
    mixed_warmup: float
    latency_jobs: int
    cancel_jobs: int
    profile_jobs: int


FULL = Plan(
    drain_jobs=40_000,
    rounds=3,
    drain_timeout=40.0,
    enqueue_single=1_000,
    enqueue_concurrent=3_000,
    enqueue_batched=20_000,
    batch=100,
    enqueue_timeout=8.0,
    cycles=20,
    mixed_seconds=10.0,
    mixed_warmup=1.0,
    latency_jobs=200,
    cancel_jobs=20,
    profile_jobs=3_000,
)
QUICK = Plan(
    drain_jobs=2_500,
    rounds=1,
    drain_timeout=15.0,
    enqueue_single=200,
    enqueue_concurrent=600,
    enqueue_batched=5_000,
    batch=100,
    enqueue_timeout=3.0,
    cycles=5,
    mixed_seconds=2.0,
    mixed_warmup=0.5,
    latency_jobs=50,
    cancel_jobs=5,
    profile_jobs=1_000,
)


# --- measurement helpers -----------------------------------------------------------------------


_BEGAN = time.monotonic()


def progress(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - _BEGAN:6.1f} s] {message}\n")


def quantile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of unsorted samples (nan when empty)."""
    return nearest_rank(sorted(samples), q) if samples else math.nan


async def backend_pids(conn: asyncpg.Connection) -> list[int]:
    """Postgres backends connected to this connection's database."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid IS NOT NULL"
    )
    return [int(r["pid"]) for r in rows]


@dataclass(slots=True)
class CpuMeter:
    """CPU used by a set of worker processes and by the Postgres backends of one database."""

    workers: Sequence[int]
    conn: asyncpg.Connection
    start_workers: float = 0.0
    start_backends: dict[int, float] = field(default_factory=dict)
    # the last CPU reading of every backend seen, kept once it is gone: a worker may open
    # connections after the start and close them before the stop (procrastinate's does both)
    seen_backends: dict[int, float] = field(default_factory=dict)

    async def start(self) -> None:
        self.start_workers = sum(proc_cpu(p) for p in self.workers)
        self.start_backends = {p: proc_cpu(p) for p in await backend_pids(self.conn)}
        self.seen_backends = dict(self.start_backends)

    async def sample(self) -> None:
        """Read the backends connected now; call it while the workers run."""
        for pid in await backend_pids(self.conn):
            self.seen_backends[pid] = max(self.seen_backends.get(pid, 0.0), proc_cpu(pid))

    async def stop(self) -> tuple[float, float]:
        """(worker CPU s, Postgres backend CPU s) since ``start``; call before workers exit."""
        workers = sum(proc_cpu(p) for p in self.workers) - self.start_workers
        await self.sample()
        backends = sum(
            cpu - self.start_backends.get(pid, 0.0) for pid, cpu in self.seen_backends.items()
        )
        return workers, backends


# --- worker processes (this script with --role) -------------------------------------------------


def jobkeeper_tasks() -> TaskRegistry:
    tasks = TaskRegistry()

    @tasks.task(NOOP)
    async def noop(ctx: JobContext, payload: Any) -> None:
        return None

    @tasks.task(STAMP)
    async def stamp(ctx: JobContext, payload: Any) -> dict[str, int]:
        return {"started_ns": time.monotonic_ns()}  # CLOCK_MONOTONIC: one clock for all processes

    @tasks.task(LOOP)
    async def loop(ctx: JobContext, payload: Any) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            await asyncio.sleep(0.1)

    return tasks


# set by run_role with --profile; enabled at "go", so start-up is not in the profile
_PROFILER: cProfile.Profile | None = None


async def _ready_then_wait_for_go() -> None:
    """Tell the parent we are set up ("ready" on stdout), then wait for its "go" on stdin."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # anything printed later goes to stderr and cannot fill the parent's pipe
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if line.strip() != "go":
        raise SystemExit(0)
    if _PROFILER is not None:
        _PROFILER.enable()


async def role_jobkeeper(url: str, concurrency: int) -> None:
    """``jobkeeper worker`` in-process: the same Worker the CLI runs, with default settings."""
    async with await JobManager.connect(url, cache_size=0) as manager:
        worker = Worker(manager, jobkeeper_tasks(), concurrency=concurrency)
        await _ready_then_wait_for_go()
        worker.install_signal_handlers()
        await worker.run()


async def role_pgqueuer(url: str, batch: int) -> None:
    """A pgqueuer ``QueueManager`` on one asyncpg connection (its documented setup)."""
    from pgqueuer.models import Job as PgqJob
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        qm = QueueManager(Queries.from_asyncpg_connection(conn))

        @qm.entrypoint(PEER_TASK)
        async def noop(job: PgqJob) -> None:
            return None

        await _ready_then_wait_for_go()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
        await qm.run(batch_size=batch)
    finally:
        await conn.close()


def procrastinate_app(url: str, pool_size: int) -> Any:
    import procrastinate

    # it warns that an App defined in __main__ cannot be found by its CLI: we do not use the CLI
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=asyncpg_dsn(url), min_size=1, max_size=pool_size
        )
    )

    @app.task(name=PEER_TASK)
    async def noop(n: int) -> None:
        return None

    return app


async def role_procrastinate(url: str, concurrency: int, wait: bool) -> None:
    """``procrastinate worker`` in-process: ``run_worker_async`` with ``concurrency``."""
    app = procrastinate_app(url, concurrency + 2)
    async with app.open_async():
        await _ready_then_wait_for_go()
        await app.run_worker_async(concurrency=concurrency, wait=wait)


def run_role(args: argparse.Namespace) -> int:
    work: Coroutine[Any, Any, None]
    if args.role == "jobkeeper":
        work = role_jobkeeper(args.url, args.concurrency)
    elif args.role == "pgqueuer":
        work = role_pgqueuer(args.url, args.batch)
    elif args.role == "procrastinate":
        work = role_procrastinate(args.url, args.concurrency, not args.drain)
    else:
        raise SystemExit(f"unknown role {args.role!r}")
    global _PROFILER
    # CPU time of this thread, not wall time: on a shared machine, preemption would otherwise be
    # charged to whatever function happened to be running
    profiler = _PROFILER = cProfile.Profile(time.thread_time) if args.profile else None
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(work)
        else:
            asyncio.run(work)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return 0


@dataclass(slots=True)
class Child:
    proc: asyncio.subprocess.Process
    log: Path


@asynccontextmanager
async def workers(
    count: int, role: str, url: str, logs: Path, *extra: str, uvloop: bool = False
) -> AsyncIterator[list[Child]]:
    """Start ``count`` worker processes, wait until each is ready; kill them all on exit."""
    children: list[Child] = []
    try:
        for i in range(count):
            log = logs / f"{role}-{uuid.uuid4().hex[:6]}-{i}.log"
            argv = [sys.executable, str(SCRIPT), "--role", role, "--url", url, *extra]
            if uvloop:
                argv.append("--uvloop")
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            children.append(Child(proc, log))
        for child in children:
            assert child.proc.stdout is not None
            try:
                line = await asyncio.wait_for(child.proc.stdout.readline(), READY_TIMEOUT)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                tail = child.log.read_text(errors="replace")[-2_000:]
                raise RuntimeError(f"{role} worker did not start:\n{tail}")
        yield children
    finally:
        await stop_children(children)


async def go(children: Sequence[Child]) -> None:
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"go\n")
        await child.proc.stdin.drain()


async def stop_children(children: Sequence[Child]) -> None:
    """SIGTERM (graceful), then SIGKILL after ``STOP_TIMEOUT``; only our own children."""
    for child in children:
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()


# --- the three systems --------------------------------------------------------------------------


class System:
    """One system's scratch database and the few statements the parent needs."""

    name: str
    done_sql: str  # count of jobs finished successfully
    pending_sql: str  # whether any job is still queued or running
    reset_sql: str

    def __init__(self, url: str, admin: asyncpg.Connection) -> None:
        self.url = url
        self.admin = admin

    async def done(self) -> int:
        return int(await self.admin.fetchval(self.done_sql))

    async def pending(self) -> bool:
        return bool(await self.admin.fetchval(self.pending_sql))

    async def reset(self) -> None:
        await self.admin.execute(self.reset_sql)

    async def preload(self, n: int) -> None:
        raise NotImplementedError

    async def analyze(self) -> None:
        await self.admin.execute("ANALYZE")


class JobkeeperSystem(System):
    name = "jobkeeper"
    done_sql = "SELECT count(*) FROM jobs WHERE status = 'succeeded'"
    pending_sql = (
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE status = 'queued')"
        " OR EXISTS (SELECT 1 FROM jobs WHERE status = 'running')"
    )
    reset_sql = "TRUNCATE jobs, job_events, workers"

    async def preload(self, n: int) -> None:
        """N queued jobs, rows like ``submit`` writes (uuid7 ids, a ``submitted`` event each),
        in one statement: setup, not measured."""
        ids = [uuid7() for _ in range(n)]
        payloads = [json.dumps({"n": i}) for i in range(n)]
        await self.admin.execute(
            """WITH new AS (
                INSERT INTO jobs (id, tenant, kind, payload)
                SELECT t.id, $3, $4, t.payload::jsonb
                FROM unnest($1::uuid[], $2::text[]) AS t(id, payload)
                RETURNING id, version, created_at)
            INSERT INTO job_events (job_id, seq, type, data, at)
            SELECT id, version, 'submitted', jsonb_build_object('kind', $4::text), created_at
            FROM new""",
            ids,
            payloads,
            TENANT,
            NOOP,
        )


class PgqueuerSystem(System):
    name = "pgqueuer"
    done_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    pending_sql = "SELECT EXISTS (SELECT 1 FROM pgqueuer)"
    reset_sql = "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics"

    async def install(self) -> None:
        from pgqueuer.queries import Queries

        await Queries.from_asyncpg_connection(self.admin).install()

    async def preload(self, n: int) -> None:
        from pgqueuer.queries import Queries

        queries = Queries.from_asyncpg_connection(self.admin)
        for start in range(0, n, 5_000):
            count = min(5_000, n - start)
            await queries.enqueue(
                [PEER_TASK] * count,
                [json.dumps({"n": start + i}).encode() for i in range(count)],
                [0] * count,
            )


class ProcrastinateSystem(System):
    name = "procrastinate"
    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    pending_sql = (
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    )
    reset_sql = (
        "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers,"
        " procrastinate_periodic_defers CASCADE"
    )

    def __init__(self, url: str, admin: asyncpg.Connection) -> None:
        super().__init__(url, admin)
        self.app: Any = None

    async def open(self) -> None:
        self.app = procrastinate_app(self.url, PRODUCERS)
        await self.app.open_async()
        await self.app.schema_manager.apply_schema_async()

    async def close(self) -> None:
        if self.app is not None:
            await self.app.close_async()

    async def preload(self, n: int) -> None:
        task = self.app.tasks[PEER_TASK]
        for start in range(0, n, 1_000):
            await task.batch_defer_async(*({"n": start + i} for i in range(min(1_000, n - start))))


# --- phase 1: enqueue only ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enqueue:
    system: str
    method: str
    tasks: int
    per_call: int
    jobs: int
    seconds: float
    call_ms: tuple[float, ...]

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def __add__(self, other: Enqueue) -> Enqueue:
        return Enqueue(
            self.system,
            self.method,
            self.tasks,
            self.per_call,
            self.jobs + other.jobs,
            self.seconds + other.seconds,
            self.call_ms + other.call_ms,
        )


async def time_calls(
    system: str,
    method: str,
    op: Callable[[int], Awaitable[object]],
    calls: int,
    *,
    tasks: int = 1,
    per_call: int = 1,
    limit_s: float,
) -> Enqueue:
    """Run ``op(i)`` for ``calls`` calls from ``tasks`` tasks, stopping early after ``limit_s``."""
    warm = max(5, calls // 50)
    for i in range(warm):
        await op(-1 - i)
    durations: list[float] = []
    counter = iter(range(calls))
    deadline = time.monotonic() + limit_s

    async def run() -> None:
        for i in counter:
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter_ns()
            await op(i)
            durations.append((time.perf_counter_ns() - t0) / 1e6)

    start = time.perf_counter()
    await asyncio.gather(*(run() for _ in range(tasks)))
    seconds = time.perf_counter() - start
    n = len(durations)
    return Enqueue(system, method, tasks, per_call, n * per_call, seconds, tuple(durations))


async def enqueue_rows(
    system: str,
    plan: Plan,
    single: tuple[str, Callable[[int], Awaitable[object]]],
    batched: tuple[str, Callable[[int], Awaitable[object]]] | None = None,
) -> list[Enqueue]:
    """One system's enqueue rows: its one-job call sequentially and from ``PRODUCERS`` tasks,
    and its batch call (``plan.batch`` jobs per call) sequentially when it has one."""
    name, call = single
    out = [
        await time_calls(
            system,
            f"{name}, sequential",
            call,
            plan.enqueue_single // plan.rounds,
            limit_s=plan.enqueue_timeout,
        ),
        await time_calls(
            system,
            f"{name}, {PRODUCERS} tasks",
            call,
            plan.enqueue_concurrent // plan.rounds,
            tasks=PRODUCERS,
            limit_s=plan.enqueue_timeout,
        ),
    ]
    if batched is not None:
        name, call = batched
        out.append(
            await time_calls(
                system,
                f"{name}, sequential",
                call,
                plan.enqueue_batched // plan.batch // plan.rounds,
                per_call=plan.batch,
                limit_s=plan.enqueue_timeout,
            )
        )
    return out


async def enqueue_jobkeeper(sys_: JobkeeperSystem, plan: Plan) -> list[Enqueue]:
    async with await JobManager.connect(sys_.url, pool_size=PRODUCERS) as manager:

        def submit(i: int) -> Awaitable[object]:
            return manager.submit(TENANT, NOOP, {"n": i})

        out = await enqueue_rows("jobkeeper", plan, ("`JobManager.submit`", submit))
    await sys_.reset()
    return out


async def enqueue_pgqueuer(sys_: PgqueuerSystem, plan: Plan) -> list[Enqueue]:
    from pgqueuer.queries import Queries

    pool = await asyncpg.create_pool(asyncpg_dsn(sys_.url), min_size=PRODUCERS, max_size=PRODUCERS)
    assert pool is not None
    try:
        queries = Queries.from_asyncpg_pool(pool)

        def single(i: int) -> Awaitable[object]:
            return queries.enqueue(PEER_TASK, json.dumps({"n": i}).encode())

        def batched(i: int) -> Awaitable[object]:
            return queries.enqueue(
                [PEER_TASK] * plan.batch,
                [json.dumps({"n": i * plan.batch + k}).encode() for k in range(plan.batch)],
                [0] * plan.batch,
            )

        out = await enqueue_rows(
            "pgqueuer",
            plan,
            ("`Queries.enqueue`, one job", single),
            (f"`Queries.enqueue`, lists of {plan.batch}", batched),
        )
    finally:
        await pool.close()
    await sys_.reset()
    return out


async def enqueue_procrastinate(sys_: ProcrastinateSystem, plan: Plan) -> list[Enqueue]:
    task = sys_.app.tasks[PEER_TASK]

    def single(i: int) -> Awaitable[object]:
        return task.defer_async(n=i)  # type: ignore[no-any-return]

    def batched(i: int) -> Awaitable[object]:
        return task.batch_defer_async(  # type: ignore[no-any-return]
            *({"n": i * plan.batch + k} for k in range(plan.batch))
        )

    out = await enqueue_rows(
        "procrastinate",
        plan,
        ("`defer_async`", single),
        (f"`batch_defer_async`, {plan.batch} per call", batched),
    )
    await sys_.reset()
    return out


# --- phase 2: drain ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """How to start one configuration's worker processes."""

    system: System
    config: str
    processes: int
    role: str
    args: tuple[str, ...]
    uvloop: bool = False
    share: int = 1  # slow configurations drain plan.drain_jobs // share jobs per round


@dataclass(frozen=True, slots=True)
class Drain:
    """One configuration's drains (one per round), summed."""

    spec: WorkerSpec
    jobs: int
    done: int
    seconds: float
    worker_cpu: float
    postgres_cpu: float
    finished: bool
    round_rates: tuple[float, ...]

    @property
    def system(self) -> str:
        return self.spec.system.name

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    def per_job_us(self, cpu: float) -> float:
        return cpu / max(1, self.done) * 1e6

    def __add__(self, other: Drain) -> Drain:
        return Drain(
            self.spec,
            self.jobs + other.jobs,
            self.done + other.done,
            self.seconds + other.seconds,
            self.worker_cpu + other.worker_cpu,
            self.postgres_cpu + other.postgres_cpu,
            self.finished and other.finished,
            self.round_rates + other.round_rates,
        )


async def drain(spec: WorkerSpec, plan: Plan, logs: Path, *, jobs: int | None = None) -> Drain:
    """Pre-enqueue no-op jobs, start the workers, and time them until none is left."""
    system = spec.system
    n = plan.drain_jobs // spec.share if jobs is None else jobs
    await system.reset()
    await system.preload(n)
    await system.analyze()
    args = (*spec.args, "--drain")
    async with workers(
        spec.processes, spec.role, system.url, logs, *args, uvloop=spec.uvloop
    ) as children:
        meter = CpuMeter([c.proc.pid for c in children], system.admin)
        await meter.start()
        start = time.monotonic()
        await go(children)
        finished = False
        while time.monotonic() - start < plan.drain_timeout:
            if not await system.pending():
                finished = True
                break
            await meter.sample()
            await asyncio.sleep(POLL)
        seconds = time.monotonic() - start
        worker_cpu, postgres_cpu = await meter.stop()
    done = await system.done()
    if finished and done != n:
        raise RuntimeError(f"{spec.config}: queue empty but {done} of {n} jobs succeeded")
    progress(f"drain {system.name}, {spec.config}: {done:,} jobs in {seconds:.2f} s")
    return Drain(spec, n, done, seconds, worker_cpu, postgres_cpu, finished, (done / seconds,))


# --- phase 2b: one worker cycle, statement by statement -------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    wall_ms: tuple[float, ...]
    cpu_ms: tuple[float, ...]  # this thread's CPU time during the call (Python side)


async def worker_cycle(sys_: JobkeeperSystem, plan: Plan) -> list[Step]:
    """A worker's two statements per batch, timed from the parent: ``claim`` of
    ``JK_CONCURRENCY`` jobs, then ``mark_succeeded`` of all of them, as ``Worker`` calls them
    (through ``JobManager``, notifications on), and on a ``JobRepository`` with ``notify=False``
    for the cost of the notifications. Cycles alternate between the two."""
    await sys_.reset()
    await sys_.preload(2 * (plan.cycles + 1) * JK_CONCURRENCY)
    await sys_.analyze()
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    worker_id = uuid.uuid4()

    async def timed(name: str, call: Awaitable[Any], record: bool) -> Any:
        w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        value = await call
        if record:
            wall.setdefault(name, []).append((time.perf_counter_ns() - w0) / 1e6)
            cpu.setdefault(name, []).append((time.thread_time_ns() - c0) / 1e6)
        return value

    manager = await JobManager.connect(sys_.url)
    quiet = JobRepository.create(sys_.url, notify=False)
    try:
        for i in range(plan.cycles + 1):
            record = i > 0  # the first cycle of each kind warms up
            leases = await timed(
                MANAGER_CLAIM,
                manager.claim(worker_id, kinds=[NOOP], limit=JK_CONCURRENCY, lease_seconds=30.0),
                record,
            )
            await timed(
                MANAGER_COMPLETE,
                manager.mark_succeeded([(lease, "null", None) for lease in leases]),
                record,
            )
            leases = await timed(
                QUIET_CLAIM,
                quiet.claim(worker_id, kinds=[NOOP], limit=JK_CONCURRENCY, lease_seconds=30.0),
                record,
            )
            await timed(
                QUIET_COMPLETE,
                quiet.complete([(lease.job.id, lease.token, "null", None) for lease in leases]),
                record,
            )
    finally:
        await quiet.close()
        await manager.close()
    return [Step(name, tuple(wall[name]), tuple(cpu[name])) for name in wall]


MANAGER_CLAIM = f"`JobManager.claim`, {JK_CONCURRENCY} jobs (as `Worker` calls it)"
MANAGER_COMPLETE = f"`JobManager.mark_succeeded`, {JK_CONCURRENCY} jobs (as `Worker` calls it)"
QUIET_CLAIM = f"`JobRepository.claim`, {JK_CONCURRENCY} jobs, `notify=False`"
QUIET_COMPLETE = f"`JobRepository.complete`, {JK_CONCURRENCY} jobs, `notify=False`"


# --- phase 3: submit + work --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mixed:
    spec: WorkerSpec
    producer: str
    seconds: float
    submitted: int
    completed: int
    backlog: int
    worker_cpu: float
    producer_cpu: float
    postgres_cpu: float

    @property
    def system(self) -> str:
        return self.spec.system.name

    @property
    def submit_rate(self) -> float:
        return self.submitted / self.seconds

    @property
    def rate(self) -> float:
        return self.completed / self.seconds

    def per_job_us(self, cpu: float) -> float:
        return cpu / max(1, self.completed) * 1e6


async def mixed(
    spec: WorkerSpec,
    producer: str,
    submit: Callable[[int], Awaitable[object]],
    plan: Plan,
    logs: Path,
) -> Mixed:
    """``PRODUCERS`` tasks submit one job per call as fast as they can while the workers run;
    after a warm-up, completions and submissions are counted over ``plan.mixed_seconds``."""
    system = spec.system
    await system.reset()
    submitted = 0
    stop = asyncio.Event()

    async def produce(k: int) -> None:
        nonlocal submitted
        i = k
        while not stop.is_set() and submitted < MAX_SUBMITS:
            await submit(i)
            submitted += 1
            i += PRODUCERS

    async with workers(
        spec.processes, spec.role, system.url, logs, *spec.args, uvloop=spec.uvloop
    ) as children:
        await go(children)
        tasks = [asyncio.create_task(produce(k)) for k in range(PRODUCERS)]
        try:
            await asyncio.sleep(plan.mixed_warmup)
            meter = CpuMeter([c.proc.pid for c in children], system.admin)
            await meter.start()
            cpu0 = time.process_time()
            done0, sub0, t0 = await system.done(), submitted, time.monotonic()
            await asyncio.sleep(plan.mixed_seconds)
            done1, sub1, t1 = await system.done(), submitted, time.monotonic()
            producer_cpu = time.process_time() - cpu0
            worker_cpu, postgres_cpu = await meter.stop()
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    progress(f"submit + work {system.name}: {done1 - done0:,} done in {t1 - t0:.1f} s")
    return Mixed(
        spec,
        producer,
        t1 - t0,
        sub1 - sub0,
        done1 - done0,
        sub1 - done1,
        worker_cpu,
        producer_cpu,
        postgres_cpu,
    )


# --- phase 4: jobkeeper latencies --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    name: str
    samples_ms: tuple[float, ...]
    bound_ms: tuple[float, ...] = ()
    timeouts: int = 0


async def wait_status(
    manager: JobManager, job_id: UUID, statuses: set[JobStatus], limit_s: float, every: float
) -> JobStatus | None:
    """Poll strong reads until the job is in one of ``statuses``; ``None`` on timeout."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        job = await manager.get(job_id, tenant=TENANT, consistency="strong")
        if job.status in statuses:
            return job.status
        await asyncio.sleep(every)
    return None


async def latencies(sys_: JobkeeperSystem, plan: Plan, logs: Path) -> list[Latency]:
    """An idle worker (one process, concurrency 4, the default); jobs one at a time."""
    await sys_.reset()
    claim: list[float] = []
    bound: list[float] = []
    cancel: list[float] = []
    misses = 0
    async with (
        await JobManager.connect(sys_.url) as manager,
        workers(1, "jobkeeper", sys_.url, logs, "--concurrency", "4") as children,
    ):
        await go(children)
        finished: dict[UUID, asyncio.Event] = {}

        def on_change(job_id: UUID, _version: int, status: str | None) -> None:
            event = finished.get(job_id)
            if event is not None and status in ("succeeded", "failed", None):
                event.set()

        unsubscribe = manager.subscribe(on_change)
        try:
            await asyncio.sleep(0.5)  # the worker registers and starts listening
            for i in range(10 + plan.latency_jobs):  # 10 untimed warm-up jobs
                await asyncio.sleep(0.02)  # the worker is idle again, waiting for a wake-up
                event = asyncio.Event()
                before = time.monotonic_ns()
                job = await manager.submit(TENANT, STAMP, {"i": i})
                finished[job.id] = event
                after = time.monotonic_ns()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), 5.0)
                status = await wait_status(manager, job.id, {JobStatus.SUCCEEDED}, 5.0, 0.005)
                finished.pop(job.id, None)
                if status is None:
                    misses += 1
                    continue
                done = await manager.get(job.id, tenant=TENANT, consistency="strong")
                started = int(done.result["started_ns"])
                if i >= 10:
                    claim.append((started - after) / 1e6)
                    bound.append((started - before) / 1e6)
            for i in range(plan.cancel_jobs):
                job = await manager.submit(TENANT, LOOP, {"i": i})
                if await wait_status(manager, job.id, {JobStatus.RUNNING}, 10.0, 0.005) is None:
                    misses += 1
                    continue
                await asyncio.sleep(0.15)  # the handler is in its check-and-sleep loop
                await manager.cancel(job.id, tenant=TENANT)
                t0 = time.monotonic_ns()
                final = {JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED}
                status = await wait_status(manager, job.id, final, 10.0, 0.002)
                if status is not JobStatus.CANCELLED:
                    misses += 1
                    continue
                cancel.append((time.monotonic_ns() - t0) / 1e6)
        finally:
            unsubscribe()
    return [
        Latency("claim", tuple(claim), tuple(bound), misses),
        Latency("cancel", tuple(cancel)),
    ]


# --- phase 5: profile --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hotspot:
    name: str
    calls: int
    tottime: float
    cumtime: float


@dataclass(frozen=True, slots=True)
class Profile:
    drain: Drain
    total: float  # profiled seconds excluding waiting in the selector
    idle: float
    groups: tuple[tuple[str, float], ...]
    top: tuple[Hotspot, ...]
    cumulative: tuple[Hotspot, ...]


_GROUPS = (
    ("jobkeeper", "/jobkeeper/"),
    ("cachetools", "/cachetools/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("asyncpg (Python part)", "/asyncpg/"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
    ("uuid", "/uuid.py"),
    ("other standard library (enum, threading, abc...)", "/lib/python3"),
    ("other standard library (enum, threading, abc...)", "<frozen"),
)
_CUMULATIVE = (
    ("repository.py", "claim"),
    ("repository.py", "complete_ids"),
    ("repository.py", "_announce"),
    ("repository.py", "connection"),
    ("repository.py", "_to_job"),
    ("repository.py", "_loads"),
    ("worker.py", "_start"),
    ("worker.py", "_execute"),
    ("worker.py", "_on_changes"),
    ("feed.py", "_on_payload"),
    ("values.py", "freeze_json"),
)


def _label(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if "site-packages" in parts or "jobkeeper" in parts else filename
    return f"{short}:{line} {func}"


def read_profile(path: Path, run: Drain) -> Profile:
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    idle = sum(
        tt for (fn, _, func), (_, _, tt, _, _) in stats.items() if fn == "~" and "epoll" in func
    )
    total = sum(tt for (_, _, tt, _, _) in stats.values()) - idle
    groups: dict[str, float] = {}
    for (fn, _, func), (_, _, tt, _, _) in stats.items():
        if fn == "~" and "epoll" in func:
            continue
        name = next((g for g, marker in _GROUPS if marker in fn), None)
        if name is None:
            name = "C functions (asyncpg protocol, sockets, builtins)" if fn == "~" else "other"
        groups[name] = groups.get(name, 0.0) + tt
    ranked = sorted(
        (
            Hotspot(_label(key), nc, tt, ct)
            for key, (_, nc, tt, ct, _) in stats.items()
            if not (key[0] == "~" and "epoll" in key[2])
        ),
        key=lambda h: h.tottime,
        reverse=True,
    )
    cumulative = [
        Hotspot(_label(key), nc, tt, ct)
        for key, (_, nc, tt, ct, _) in stats.items()
        if any(key[0].endswith(f"jobkeeper/{f}") and key[2] == fn for f, fn in _CUMULATIVE)
    ]
    return Profile(
        run,
        total,
        idle,
        tuple(sorted(groups.items(), key=lambda kv: kv[1], reverse=True)),
        tuple(ranked[:12]),
        tuple(sorted(cumulative, key=lambda h: h.cumtime, reverse=True)),
    )


# --- the run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    enqueue: list[Enqueue] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    mixed: list[Mixed] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    profile: Profile | None = None
    postgres: str = ""
    jobs_indexes: int = 0
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0


def configurations(
    jk: JobkeeperSystem, pgq: PgqueuerSystem, proc: ProcrastinateSystem
) -> dict[str, WorkerSpec]:
    """Every drain configuration, by a short key."""
    jk_args = ("--concurrency", str(JK_CONCURRENCY))
    pgq_default = ("--batch", str(PGQ_DEFAULT_BATCH))
    pgq_best = ("--batch", str(PGQ_BEST_BATCH))
    proc_args = ("--concurrency", str(PROC_CONCURRENCY))
    c, b = JK_CONCURRENCY, PGQ_BEST_BATCH
    return {
        "jk1": WorkerSpec(jk, f"1 process, concurrency {c}", 1, "jobkeeper", jk_args),
        "jk4": WorkerSpec(jk, f"4 processes, concurrency {c} each", 4, "jobkeeper", jk_args),
        "jk1uv": WorkerSpec(
            jk, f"1 process, concurrency {c}, uvloop", 1, "jobkeeper", jk_args, uvloop=True
        ),
        "jk2uv": WorkerSpec(
            jk, f"2 processes, concurrency {c} each, uvloop", 2, "jobkeeper", jk_args, uvloop=True
        ),
        "jk4uv": WorkerSpec(
            jk, f"4 processes, concurrency {c} each, uvloop", 4, "jobkeeper", jk_args, uvloop=True
        ),
        "pgq10": WorkerSpec(
            pgq,
            f"1 process, batch {PGQ_DEFAULT_BATCH} (default), uvloop",
            1,
            "pgqueuer",
            pgq_default,
            uvloop=True,
            share=4,
        ),
        "pgq1": WorkerSpec(
            pgq, f"1 process, batch {b}, uvloop", 1, "pgqueuer", pgq_best, uvloop=True
        ),
        "pgq1aio": WorkerSpec(pgq, f"1 process, batch {b}, asyncio loop", 1, "pgqueuer", pgq_best),
        "pgq2": WorkerSpec(
            pgq, f"2 processes, batch {b}, uvloop", 2, "pgqueuer", pgq_best, uvloop=True
        ),
        "pgq4": WorkerSpec(
            pgq, f"4 processes, batch {b}, uvloop", 4, "pgqueuer", pgq_best, uvloop=True
        ),
        "proc1": WorkerSpec(
            proc,
            f"1 process, concurrency {PROC_CONCURRENCY}",
            1,
            "procrastinate",
            proc_args,
            share=10,
        ),
    }


async def run(server_url: str, plan: Plan, logs: Path) -> Results:
    results = Results(load_start=os.getloadavg())
    began = time.monotonic()
    async with AsyncExitStack() as stack:
        jk_url = await stack.enter_async_context(scratch(server_url, "jk"))
        pgq_url = await stack.enter_async_context(scratch(server_url, "pgq", migrate=False))
        proc_url = await stack.enter_async_context(scratch(server_url, "proc", migrate=False))
        admins = []
        for url in (jk_url, pgq_url, proc_url):
            conn = await asyncpg.connect(asyncpg_dsn(url))
            stack.push_async_callback(conn.close)
            admins.append(conn)
        jk = JobkeeperSystem(jk_url, admins[0])
        pgq = PgqueuerSystem(pgq_url, admins[1])
        proc = ProcrastinateSystem(proc_url, admins[2])
        await pgq.install()
        await proc.open()
        stack.push_async_callback(proc.close)
        results.postgres = str(await admins[0].fetchval("SELECT version()"))
        results.jobs_indexes = int(
            await admins[0].fetchval("SELECT count(*) FROM pg_indexes WHERE tablename = 'jobs'")
        )

        enqueuers: list[Callable[[], Awaitable[list[Enqueue]]]] = [
            lambda: enqueue_jobkeeper(jk, plan),
            lambda: enqueue_pgqueuer(pgq, plan),
            lambda: enqueue_procrastinate(proc, plan),
        ]
        merged: dict[tuple[str, str], Enqueue] = {}
        for r in range(plan.rounds):
            progress(f"enqueue only, round {r + 1} of {plan.rounds}")
            for enqueue in enqueuers[r % 3 :] + enqueuers[: r % 3]:
                for row in await enqueue():
                    pair = (row.system, row.method)
                    merged[pair] = merged[pair] + row if pair in merged else row
        results.enqueue = list(merged.values())

        specs = configurations(jk, pgq, proc)
        keys = list(specs)
        rounds: dict[str, Drain] = {}
        for r in range(plan.rounds):
            progress(f"drain, round {r + 1} of {plan.rounds}")
            shift = r * len(keys) // max(1, plan.rounds)
            for key in keys[shift:] + keys[:shift]:  # rotate the order
                one = await drain(specs[key], plan, logs)
                rounds[key] = rounds[key] + one if key in rounds else one
        results.drains = [rounds[key] for key in keys]

        progress("worker cycle, statement by statement")
        results.steps = await worker_cycle(jk, plan)

        progress("submit + work")
        mixed_keys = ("jk1", "jk2uv", "jk4", "pgq1", "pgq2", "pgq4", "proc1")
        mixed_specs = [specs[key] for key in mixed_keys]
        from pgqueuer.queries import Queries

        async with AsyncExitStack() as producers:
            manager = await producers.enter_async_context(
                await JobManager.connect(jk_url, pool_size=PRODUCERS)
            )
            pool = await asyncpg.create_pool(
                asyncpg_dsn(pgq_url), min_size=PRODUCERS, max_size=PRODUCERS
            )
            assert pool is not None
            producers.push_async_callback(pool.close)
            queries = Queries.from_asyncpg_pool(pool)
            task = proc.app.tasks[PEER_TASK]

            def jk_submit(i: int) -> Awaitable[object]:
                return manager.submit(TENANT, NOOP, {"n": i})

            def pgq_submit(i: int) -> Awaitable[object]:
                return queries.enqueue(PEER_TASK, json.dumps({"n": i}).encode())

            def proc_submit(i: int) -> Awaitable[object]:
                return task.defer_async(n=i)  # type: ignore[no-any-return]

            submitters = {
                "jobkeeper": ("`JobManager.submit`", jk_submit),
                "pgqueuer": ("`Queries.enqueue`, one job", pgq_submit),
                "procrastinate": ("`defer_async`", proc_submit),
            }
            for spec in mixed_specs:
                producer, submit = submitters[spec.system.name]
                results.mixed.append(await mixed(spec, producer, submit, plan, logs))

        progress("jobkeeper latencies")
        results.latency = await latencies(jk, plan, logs)

        progress("a jobkeeper worker under cProfile")
        stats_path = logs / "worker.pstats"
        profiled = WorkerSpec(
            jk, f"1 process, concurrency {JK_CONCURRENCY}, under cProfile", 1, "jobkeeper",
            ("--concurrency", str(JK_CONCURRENCY), "--profile", str(stats_path)),
        )  # fmt: skip
        profiled_run = await drain(profiled, plan, logs, jobs=plan.profile_jobs)
        if stats_path.exists():
            results.profile = read_profile(stats_path, profiled_run)
    results.load_end = os.getloadavg()
    results.seconds = time.monotonic() - began
    progress("done")
    return results


# --- the report --------------------------------------------------------------------------------


def machine_lines(server: str, results: Results) -> list[str]:
    load = load_average(results.load_start, results.load_end)
    return [
        *machine(server, results.postgres, PACKAGES),
        f"{load}; the machine is shared with other work, and the workers, the parent and Postgres "
        "all share its CPUs",
    ]


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


def best(rows: Sequence[Drain], system: str) -> Drain:
    """The configuration of ``system`` with the highest drain rate (finished drains first)."""
    mine = [r for r in rows if r.system == system]
    return max(mine, key=lambda r: (r.finished, r.rate))


def best_mixed(rows: Sequence[Mixed], system: str) -> Mixed:
    return max((r for r in rows if r.system == system), key=lambda r: r.rate)


def _cum(profile: Profile, func: str) -> float:
    return sum(h.cumtime for h in profile.cumulative if h.name.endswith(f" {func}"))


def verdict(results: Results) -> tuple[list[str], bool]:
    def status(ok: bool) -> str:
        return "**PASS**" if ok else "**FAIL**"

    jk, pgq = best(results.drains, "jobkeeper"), best(results.drains, "pgqueuer")
    drain_ok = jk.finished and jk.rate >= pgq.rate
    mjk, mpgq = best_mixed(results.mixed, "jobkeeper"), best_mixed(results.mixed, "pgqueuer")
    mixed_ok = mjk.rate >= mpgq.rate
    claim = next(x for x in results.latency if x.name == "claim")
    cancel = next(x for x in results.latency if x.name == "cancel")
    claim_p50 = quantile(claim.samples_ms, 0.5)
    claim_ok = claim_p50 < TARGET_CLAIM_P50_MS and claim.timeouts == 0
    cancel_max = max(cancel.samples_ms, default=math.inf)
    cancel_ok = cancel_max < TARGET_CANCEL_MS and len(cancel.samples_ms) > 0
    lines = [
        f"- Drain: jobkeeper's best ({jk.spec.config}) {jk.rate:,.0f} jobs/s vs pgqueuer's "
        f"best ({pgq.spec.config}) {pgq.rate:,.0f} jobs/s = {jk.rate / pgq.rate:.2f}x; "
        f"target >= 1x: {status(drain_ok)}",
        f"- Submit + work: jobkeeper's best ({mjk.spec.config}) {mjk.rate:,.0f} completed "
        f"jobs/s vs pgqueuer's best ({mpgq.spec.config}) {mpgq.rate:,.0f} = "
        f"{mjk.rate / mpgq.rate:.2f}x; target >= 1x: {status(mixed_ok)}",
        f"- Claim latency p50 = {_ms(claim_p50)} ms (p99 {_ms(quantile(claim.samples_ms, 0.99))} "
        f"ms, {claim.timeouts} lost); target < {TARGET_CLAIM_P50_MS:.0f} ms: {status(claim_ok)}",
        f"- Cancel latency max = {_ms(cancel_max)} ms over {len(cancel.samples_ms)} jobs; "
        f"target < {TARGET_CANCEL_MS:,.0f} ms: {status(cancel_ok)}",
    ]
    return lines, drain_ok and mixed_ok and claim_ok and cancel_ok


def interpretation(results: Results) -> str:
    jk, pgq = best(results.drains, "jobkeeper"), best(results.drains, "pgqueuer")
    jk1 = next(d for d in results.drains if d.system == "jobkeeper" and d.spec.processes == 1)
    pgq_loop = next(
        d for d in results.drains if d.system == "pgqueuer" and "asyncio loop" in d.spec.config
    )
    steps = {s.name: s for s in results.steps}
    claim_ms = quantile(steps[MANAGER_CLAIM].wall_ms, 0.5)
    complete_ms = quantile(steps[MANAGER_COMPLETE].wall_ms, 0.5)
    mjk, mpgq = best_mixed(results.mixed, "jobkeeper"), best_mixed(results.mixed, "pgqueuer")
    claim = next(x for x in results.latency if x.name == "claim")
    cancel = next(x for x in results.latency if x.name == "cancel")
    verb = "beats" if jk.rate >= pgq.rate else "trails"
    text = [
        f"Draining no-op jobs, jobkeeper's best configuration ({jk.spec.config}) {verb} "
        f"pgqueuer's best ({pgq.spec.config}): {jk.rate:,.0f} against {pgq.rate:,.0f} jobs/s "
        f"({jk.rate / pgq.rate:.2f}x); with one process on the asyncio loop, jobkeeper does "
        f"{jk1.rate:,.0f} and pgqueuer {pgq_loop.rate:,.0f}.",
        f"Per job, those best configurations spend {jk.per_job_us(jk.worker_cpu):,.0f} {US} of "
        f"worker CPU and {jk.per_job_us(jk.postgres_cpu):,.0f} {US} of Postgres backend CPU "
        f"(jobkeeper) against {pgq.per_job_us(pgq.worker_cpu):,.0f} and "
        f"{pgq.per_job_us(pgq.postgres_cpu):,.0f} {US} (pgqueuer); on 2 CPUs shared by the "
        "workers and Postgres that sum is the throughput. jobkeeper's Postgres work per job is "
        f"two version-bumping `UPDATE`s of a row with {results.jobs_indexes} indexes (claim, "
        "completion), two `job_events` rows and a share of two batch notifications; "
        "pgqueuer's an `UPDATE`, then a `DELETE` and a log `INSERT`.",
        f"A worker process claims up to its free slots in one statement ({claim_ms:.1f} ms p50 "
        f"for {JK_CONCURRENCY} jobs) and writes the successes that piled up in another "
        f"({complete_ms:.1f} ms with whole rows returned; a worker process, keeping no cache, "
        "gets ids only); a slot is free as soon as its handler returns, so claims and "
        "completions overlap on two connections.",
    ]
    prof = results.profile
    if prof is not None:
        tasks = _cum(prof, "_execute") + _cum(prof, "_start")
        decode = _cum(prof, "_to_job")
        feed = _cum(prof, "_on_payload")
        text.append(
            f"In the profiled worker, starting and running the handler tasks takes "
            f"{100 * tasks / prof.total:.0f}% of the busy time, turning claimed rows into `Job` "
            f"snapshots {100 * decode / prof.total:.0f}%, and hearing the change feed (a worker "
            f"listens to new work and cancel requests only) {100 * feed / prof.total:.0f}%."
        )
    text.append(
        f"With {PRODUCERS} producers submitting while the workers run, jobkeeper completes "
        f"{mjk.rate:,.0f} jobs/s against pgqueuer's {mpgq.rate:,.0f}, using "
        f"{mjk.per_job_us(mjk.producer_cpu + mjk.worker_cpu):,.0f} {US} of client CPU per job "
        f"against {mpgq.per_job_us(mpgq.producer_cpu + mpgq.worker_cpu):,.0f}. Every submit is "
        "a durable commit; jobkeeper announces it in a second, asynchronously committed "
        "transaction, because a durable commit that notifies holds Postgres's database-wide "
        "notify lock through its WAL flush, and submits then commit one at a time (measured "
        "before: 80% of active backend time waiting on that lock). An idle worker "
        f"starts a job {_ms(quantile(claim.samples_ms, 0.5))} ms (p50) after `submit` returns, "
        f"and cancelling a running async handler takes at most "
        f"{_ms(max(cancel.samples_ms, default=math.nan))} ms (feed notification, one strong "
        "read, task cancellation: the handler's 100 ms check loop is not what stops it)."
    )
    return " ".join(text)


US = "\u00b5s"


def _method(plan: Plan) -> list[str]:
    return [
        "- One Postgres server; each system in its own scratch database (jobkeeper migrated with "
        "`jobkeeper.migrate.upgrade`, pgqueuer with `Queries.install`, procrastinate with "
        "`schema_manager.apply_schema_async`), dropped at the end. Tables are truncated (and "
        "`ANALYZE`d after loading) before every measurement. TCP on loopback.",
        f"- Enqueue: one process; after an untimed warm-up, calls are timed one by one "
        f"(`perf_counter_ns`); jobs/s = jobs / wall time; {plan.rounds} round(s), systems in "
        f"rotating order; at most {plan.enqueue_timeout:.0f} s per row and round. "
        f"{PRODUCERS} tasks share a pool of {PRODUCERS} connections (an asyncpg pool for "
        "jobkeeper and pgqueuer, procrastinate's psycopg pool). "
        'Payload `{"n": i}` everywhere. jobkeeper has no batch submit.',
        f"- Drain: no-op jobs enqueued first ({plan.drain_jobs:,} per round; the slow "
        "configurations get a quarter (pgqueuer batch 10) or a tenth (procrastinate) of it; "
        "jobkeeper: one `INSERT` of the rows `submit` writes, jobs and their `submitted` "
        "events; pgqueuer: batched `enqueue`; procrastinate: `batch_defer_async`), then worker "
        "processes (this script with `--role`, started and connected before the clock starts) "
        f"are told to go. Done = no job left queued or running (polled every {POLL * 1000:.0f} "
        "ms), then checked: succeeded rows = jobs (`jobs.status`, `pgqueuer_log.status`, "
        f"`procrastinate_jobs.status`). {plan.rounds} round(s), configurations in rotating "
        f"order; jobs/s = jobs / seconds summed over the rounds; at most "
        f"{plan.drain_timeout:.0f} s per drain. Worker CPU = user + system time of the worker "
        "processes (`/proc/<pid>/stat`); Postgres CPU = the same for the backends connected to "
        "that system's database, read at every poll so that connections opened and closed "
        "during the drain count too (WAL writer, checkpointer and autovacuum not included).",
        f"- jobkeeper workers: `Worker(await JobManager.connect(url, cache_size=0), tasks, "
        f"concurrency={JK_CONCURRENCY})`, otherwise default settings (what `jobkeeper worker` "
        "runs: a worker process keeps no cache), and an async no-op handler; on the standard "
        "asyncio loop like the CLI, and on uvloop. pgqueuer: `QueueManager` on one asyncpg "
        "connection, `run(batch_size=...)`, no task cap, on uvloop as `pgq run` runs it (one "
        f"row on asyncio); batch {PGQ_DEFAULT_BATCH} is its default. Both with 1, 2 (one per "
        "CPU here) and 4 processes. procrastinate: "
        f"`run_worker_async(concurrency={PROC_CONCURRENCY}, wait=False)` on a psycopg pool of "
        f"{PROC_CONCURRENCY + 2}, `listen_notify` on.",
        f"- Worker cycle: from the parent, {plan.cycles} timed cycles (after one untimed) of "
        f"`claim` of {JK_CONCURRENCY} queued jobs then `mark_succeeded` of them, the two calls "
        "`Worker` makes per batch, through `JobManager` (notifications on, with a cache, so "
        "completions return whole rows) and, alternating, through a `JobRepository(notify="
        "False)`. CPU = this thread's CPU time during the call (`thread_time_ns`).",
        f"- Submit + work: {PRODUCERS} producer tasks in the parent process submit one job per "
        "call as fast as they can while the workers run (1, 2 and 4 processes, configured as in "
        f"the drain); after {plan.mixed_warmup:.1f} s of warm-up, jobs submitted "
        f"and jobs succeeded are counted over {plan.mixed_seconds:.0f} s. Backlog = submitted - "
        "succeeded at the end. Client CPU = the parent's process time plus the workers' CPU.",
        f"- Claim latency (jobkeeper): one idle worker process (concurrency 4); "
        f"{plan.latency_jobs} jobs (after 10 untimed), one at a time, 20 ms apart; latency = "
        "`time.monotonic_ns()` at the start of the handler (returned as the job's result) - "
        "`time.monotonic_ns()` when `submit` returned (CLOCK_MONOTONIC is one clock for all "
        "processes). *Bound* counts from before the `submit` call.",
        f"- Cancel latency (jobkeeper): {plan.cancel_jobs} jobs whose async handler loops on "
        "`ctx.raise_if_cancelled()` + `asyncio.sleep(0.1)`; 150 ms after the job is seen "
        "running, `cancel()`; latency = from `cancel()` returning to a strong read (polled every "
        "2 ms) showing `cancelled`.",
        f"- Profile: one jobkeeper worker process (concurrency {JK_CONCURRENCY}) drains "
        f"{plan.profile_jobs:,} jobs under `cProfile` timed by the thread's CPU clock (so "
        "preemption by other processes is not charged to the code; the profiler itself slows "
        "Python code down); shares are of its busy time.",
    ]


def _tables(results: Results) -> list[str]:
    lines = [
        "**Enqueue only**",
        "",
        "| System | Call | Tasks | Jobs | Jobs/s | Call p50 ms | Call p99 ms |",
        "|---|---|--:|--:|--:|--:|--:|",
        *(
            f"| {e.system} | {e.method} | {e.tasks} | {e.jobs:,} | {e.rate:,.0f} "
            f"| {_ms(quantile(e.call_ms, 0.5))} | {_ms(quantile(e.call_ms, 0.99))} |"
            for e in results.enqueue
        ),
        "",
        "**Drain: pre-enqueued no-op jobs, end to end**",
        "",
        f"| System | Workers | Jobs done | Seconds | Jobs/s | Per round | Worker CPU {US}/job "
        f"| Postgres CPU {US}/job |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
        *(
            f"| {d.system} | {d.spec.config} | {d.done:,}{'' if d.finished else ' (timed out)'} "
            f"| {d.seconds:.2f} | **{d.rate:,.0f}** | "
            f"{' / '.join(f'{r:,.0f}' for r in d.round_rates)} "
            f"| {d.per_job_us(d.worker_cpu):,.0f} | {d.per_job_us(d.postgres_cpu):,.0f} |"
            for d in results.drains
        ),
        "",
        "**One jobkeeper worker cycle, call by call** (from the parent, no worker running)",
        "",
        "| Call | Cycles | p50 ms | p99 ms | Python CPU p50 ms |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {s.name} | {len(s.wall_ms)} | {_ms(quantile(s.wall_ms, 0.5))} "
            f"| {_ms(quantile(s.wall_ms, 0.99))} | {_ms(quantile(s.cpu_ms, 0.5))} |"
            for s in results.steps
        ),
        "",
        "**Submit + work: producers and workers at once**",
        "",
        f"| System | Producer ({PRODUCERS} tasks, one job per call) | Workers | Submitted/s "
        f"| Completed/s | Backlog at end | Client CPU {US}/job | Postgres CPU {US}/job |",
        "|---|---|---|--:|--:|--:|--:|--:|",
        *(
            f"| {m.system} | {m.producer} | {m.spec.config} | {m.submit_rate:,.0f} "
            f"| **{m.rate:,.0f}** | {m.backlog:,} "
            f"| {m.per_job_us(m.producer_cpu + m.worker_cpu):,.0f} "
            f"| {m.per_job_us(m.postgres_cpu):,.0f} |"
            for m in results.mixed
        ),
        "",
        "**jobkeeper latencies**",
        "",
        "| Latency | Jobs | p50 ms | p99 ms | max ms | Bound p50 ms | Bound p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    names = {
        "claim": "claim: `submit` returned -> handler started (idle worker)",
        "cancel": "cancel: `cancel()` returned -> `cancelled` read",
    }
    for lat in results.latency:
        lines.append(
            f"| {names[lat.name]} | {len(lat.samples_ms)} | {_ms(quantile(lat.samples_ms, 0.5))} "
            f"| {_ms(quantile(lat.samples_ms, 0.99))} "
            f"| {_ms(max(lat.samples_ms, default=math.nan))} "
            f"| {_ms(quantile(lat.bound_ms, 0.5))} | {_ms(quantile(lat.bound_ms, 0.99))} |"
        )
    return lines


def _profile_tables(prof: Profile) -> list[str]:
    return [
        "",
        f"**Where a jobkeeper worker's time goes** (cProfile on the thread's CPU clock; "
        f"{prof.drain.done:,} jobs, {prof.total:.2f} s busy, {prof.drain.rate:,.0f} jobs/s under "
        "the profiler, which slows pure-Python code more than C code, so Python-heavy paths are "
        "overstated)",
        "",
        "| Own time by package | Share |",
        "|---|--:|",
        *(
            f"| {name} | {100 * t / prof.total:.0f}% |"
            for name, t in prof.groups
            if t / prof.total >= 0.005
        ),
        "",
        "| jobkeeper function (cumulative, awaits excluded) | Calls | Share |",
        "|---|--:|--:|",
        *(
            f"| `{h.name}` | {h.calls:,} | {100 * h.cumtime / prof.total:.0f}% |"
            for h in prof.cumulative
        ),
        "",
        "| Function (top by own time) | Calls | Own share |",
        "|---|--:|--:|",
        *(f"| `{h.name}` | {h.calls:,} | {100 * h.tottime / prof.total:.1f}% |" for h in prof.top),
    ]


def report(results: Results, plan: Plan, server: str, quick: bool) -> tuple[str, bool]:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (`--quick` smoke run: small counts, not for comparison)" if quick else ""
    verdict_lines, passed = verdict(results)
    lines = [
        "### Throughput: jobkeeper vs pgqueuer and procrastinate "
        "(`benchmarks/bench_throughput.py`)",
        "",
        f"Run: {when}{mode}; {results.seconds:.0f} s in all.",
        "",
        "**Machine**",
        "",
        *(f"- {line}" for line in machine_lines(server, results)),
        "",
        "**Method**",
        "",
        *_method(plan),
        "",
        *_tables(results),
        *(_profile_tables(results.profile) if results.profile is not None else []),
        "",
        *verdict_lines,
        "",
        f"**Interpretation.** {interpretation(results)}",
    ]
    return "\n".join(lines) + "\n", passed


# --- entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "small counts: a < 90 s smoke run")
    # worker processes (internal)
    parser.add_argument("--role", choices=("jobkeeper", "pgqueuer", "procrastinate"))
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=JK_CONCURRENCY, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=PGQ_DEFAULT_BATCH, help=argparse.SUPPRESS)
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_role(args)
    plan = QUICK if args.quick else FULL
    with (
        postgres_server() as server,
        tempfile.TemporaryDirectory(prefix="bench_throughput_") as tmp,
    ):
        results = asyncio.run(run(server.url, plan, Path(tmp)))
    section, passed = report(results, plan, server.description, args.quick)
    publish("bench_throughput", section, write=args.write)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
