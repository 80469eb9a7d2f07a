"""Flat costs under churn: a million jobs through submit -> claim -> complete with retention on,
jobkeeper and pgqueuer in the same run, sampled every 100,000 jobs.

Each system in its own scratch database: a producer in this process keeps a backlog of queued
jobs (lists of ``LIST`` per call: ``JobManager.submit_many``, pgqueuer's ``Queries.enqueue``),
two worker processes (``bench_throughput.py``'s, uvloop) run them, and for jobkeeper a
``Sweeper`` in a process of its own with short TTLs (payload 1 s, job 2 s, tombstone 5 s, a
pass every 0.5 s) deletes jobs about as fast as they finish. A probe process claims ``PROBE``
jobs every ``PROBE_EVERY`` s through jobkeeper's claim statement (and completes them), timed;
pgqueuer's claims happen inside its ``QueueManager``, so it has no claim column. Every
``--jobs`` / 10 jobs done: jobs/s over the window, claim p50/p99, each table's
``pg_total_relation_size`` and each index's ``pg_relation_size``, live and dead tuples
(``pg_stat_user_tables``).

Autovacuum is what keeps these sizes bounded, so the run needs a server where it is on: with
``JOBKEEPER_DATABASE_URL`` pointing at one where it is off, the script uses an embedded Postgres
(pgserver) instead and says so. That server runs Postgres's defaults but one, the setting
docs/operations.md gives a server with this much churn: ``autovacuum_naptime`` = 10 s (the
default, 1 min, lets a minute of churn's dead versions pile up between autovacuum's visits).

    .venv/bin/python benchmarks/bench_churn.py            # print the markdown report
    .venv/bin/python benchmarks/bench_churn.py --write    # ... update docs/benchmarks.md + figure
    .venv/bin/python benchmarks/bench_churn.py --quick    # smoke run: 50,000 jobs
    .venv/bin/python benchmarks/bench_churn.py --jobs 200000  # another count

Exits with status 1 when a target is missed (after printing and writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from common import (
    URL_ENV,
    LoadAverage,
    Server,
    arguments,
    load_average,
    machine,
    nearest_rank,
    publish,
    scratch,
    status,
)
from jobkeeper import JobManager
from systems import TENANT, Config, System, load
from systems.jobkeeper import (
    NOOP,
    Jobkeeper,
    Retention,
    Sweeper,
    asyncpg_dsn,
    embedded_server,
    in_schema,
    open_repository,
)
from throughput.processes import add_role_arguments, go, run_role, workers
from throughput.scenarios import progress

TARGET_DRIFT = 0.2  # jobs/s and claim p99 of every sample within +-20 % of the first
TARGET_GROWTH = 1.2  # total size at the end <= 1.2x the largest of the first half's samples
LIST = 500  # jobs per enqueue call
BACKLOG = 5_000  # queued jobs the producer keeps
PROBE = 10
PROBE_EVERY = 0.02
POLL = 0.05
RETENTION = {"payload_ttl": 1.0, "job_ttl": 2.0, "tombstone_ttl": 5.0}
SWEEP_EVERY = 0.5
PACKAGES = ("jobkeeper", "asyncpg", "pgqueuer")
WORKERS = {"jobkeeper": "jk2uv", "pgqueuer": "pgq2"}


@dataclass(frozen=True, slots=True)
class ChurnPlan:
    jobs: int
    sample: int
    timeout: float  # per system


FULL = ChurnPlan(jobs=1_000_000, sample=100_000, timeout=1_500.0)
QUICK = ChurnPlan(jobs=50_000, sample=10_000, timeout=120.0)


@dataclass(frozen=True, slots=True)
class Relation:
    name: str
    table: bool
    size: int  # tables: pg_total_relation_size (heap, indexes, TOAST); indexes: pg_relation_size
    live: int
    dead: int


@dataclass(frozen=True, slots=True)
class Sample:
    done: int
    seconds: float  # the window's
    jobs: int  # done in the window
    claims_ms: tuple[float, ...]
    relations: tuple[Relation, ...]
    kept: int | None = None  # finished jobs still stored (jobkeeper: retention's backlog)
    deleted: int | None = None  # jobs retention deleted in the window

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def claim(self, q: float) -> float:
        ordered = sorted(self.claims_ms)
        return nearest_rank(ordered, q) if ordered else float("nan")

    @property
    def total(self) -> int:
        return sum(r.size for r in self.relations if r.table)

    @property
    def dead(self) -> int:
        return sum(r.dead for r in self.relations if r.table)


@dataclass(slots=True)
class Churn:
    system: str
    workers: str
    samples: list[Sample] = field(default_factory=list)
    finished: bool = False
    seconds: float = 0.0
    autovacuum_runs: dict[str, int] = field(default_factory=dict)


_RELATIONS = """WITH t AS (
    SELECT c.oid FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
    WHERE n.nspname = $1 AND c.relname = ANY($2::text[]) AND c.relkind = 'r'
), r AS (
    SELECT oid FROM t
    UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid IN (SELECT oid FROM t)
)
SELECT c.relname AS name, c.relkind = 'r' AS is_table,
    CASE WHEN c.relkind = 'r' THEN pg_total_relation_size(c.oid) ELSE pg_relation_size(c.oid) END
        AS size,
    coalesce(s.n_live_tup, 0) AS live, coalesce(s.n_dead_tup, 0) AS dead
FROM r JOIN pg_class AS c ON c.oid = r.oid LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
ORDER BY c.relkind DESC, c.relname"""
_AUTOVACUUMS = """SELECT relname, autovacuum_count + autoanalyze_count AS runs
FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = ANY($2::text[])"""
TABLES = {
    "jobkeeper": ("jobkeeper", ("jobs", "job_events", "job_tombstones")),
    "pgqueuer": ("public", ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")),
}


async def relations(admin: asyncpg.Connection, system: str) -> tuple[Relation, ...]:
    schema, tables = TABLES[system]
    rows = await admin.fetch(_RELATIONS, schema, list(tables))
    return tuple(Relation(r["name"], r["is_table"], r["size"], r["live"], r["dead"]) for r in rows)


# --- the systems' churn: a producer, the pending count, the probe --------------------------------


@dataclass(frozen=True, slots=True)
class Driver:
    submit: Callable[[int], Awaitable[object]]  # LIST jobs
    pending: Callable[[], Awaitable[int]]  # queued or running
    probed: bool = False  # claims timed by a probe process (jobkeeper)
    kept: Callable[[], Awaitable[int]] | None = None  # finished jobs stored (retention's backlog)


async def probe_loop(url: str) -> None:
    """The probe process: claim ``PROBE`` jobs through jobkeeper's claim statement every
    ``PROBE_EVERY`` s, complete them, and print each claim's milliseconds (its own process, so
    the producer's and the sweeper's Python work in the parent does not time it)."""
    repo = open_repository(url, notify=False)
    worker_id = uuid.uuid4()
    try:
        while True:
            t0 = time.perf_counter_ns()
            leases = await repo.leases.claim(
                worker_id, kinds=[NOOP], limit=PROBE, lease_seconds=30.0
            )
            ms = (time.perf_counter_ns() - t0) / 1e6
            if leases:
                sys.stdout.write(f"{ms:.3f}\n")
                sys.stdout.flush()
                await repo.leases.complete(
                    [(lease.job.id, lease.token, "null", None) for lease in leases]
                )
            await asyncio.sleep(PROBE_EVERY)
    finally:
        await repo.close()


async def sweep_loop(url: str) -> None:
    """The sweeper process: jobkeeper's ``Sweeper`` with the short TTLs, a pass every
    ``SWEEP_EVERY`` s (a process of its own, as in a worker or API process)."""
    async with await JobManager.connect(url) as manager:
        await Sweeper(manager, interval=SWEEP_EVERY, retention=Retention(**RETENTION)).run()


@asynccontextmanager
async def side_process(*args: str) -> AsyncIterator[list[float]]:
    """This script started again with ``args`` (``--probe`` or ``--sweep``); the numbers it
    prints, one a line, are appended to the list yielded. Terminated on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdout=asyncio.subprocess.PIPE
    )
    numbers: list[float] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            numbers.append(float(line))

    reading = asyncio.create_task(read())
    try:
        yield numbers
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)


@asynccontextmanager
async def jobkeeper_driver(system: System) -> AsyncIterator[Driver]:
    async with AsyncExitStack() as stack:
        manager = await stack.enter_async_context(await JobManager.connect(system.url))
        await stack.enter_async_context(side_process("--sweep", system.url))
        pending_sql = in_schema("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
        kept_sql = in_schema("SELECT count(*) FROM jobs WHERE finished_at IS NOT NULL")

        async def submit(i: int) -> object:
            items = [{"kind": NOOP, "payload": {"n": i + k}} for k in range(LIST)]
            return await manager.submit_many(TENANT, items)

        async def pending() -> int:
            return int(await system.admin.fetchval(pending_sql))

        async def kept() -> int:
            return int(await system.admin.fetchval(kept_sql))

        yield Driver(submit, pending, probed=True, kept=kept)


@asynccontextmanager
async def pgqueuer_driver(system: System) -> AsyncIterator[Driver]:
    async with system.producer(LIST) as producer:
        assert producer.batched is not None
        _, batched = producer.batched

        async def pending() -> int:
            return int(await system.admin.fetchval("SELECT count(*) FROM pgqueuer"))

        yield Driver(batched, pending)


DRIVERS = {"jobkeeper": jobkeeper_driver, "pgqueuer": pgqueuer_driver}


async def churn(system: System, config: Config, plan: ChurnPlan, logs: Path) -> Churn:
    """Run ``plan.jobs`` through ``system`` with its workers running all along; a sample every
    ``plan.sample`` jobs done."""
    result = Churn(system.name, config.label)
    async with AsyncExitStack() as stack:
        driver = await stack.enter_async_context(DRIVERS[system.name](system))
        children = await stack.enter_async_context(workers(system.name, config, system.url, logs))
        claims = (
            await stack.enter_async_context(side_process("--probe", system.url))
            if driver.probed
            else []
        )
        submitted = 0
        stop = asyncio.Event()

        async def produce() -> None:
            nonlocal submitted
            while submitted < plan.jobs and not stop.is_set():
                if submitted - done < BACKLOG:
                    await driver.submit(submitted)
                    submitted += LIST
                else:
                    await asyncio.sleep(0.005)

        done = 0
        await go(children)
        began = window = time.monotonic()
        window_done = window_gone = 0
        tasks = [asyncio.create_task(produce())]
        try:
            while time.monotonic() - began < plan.timeout:
                await asyncio.sleep(POLL)
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                done = submitted - await driver.pending()
                if done - window_done >= plan.sample or done >= plan.jobs:
                    now = time.monotonic()
                    kept = None if driver.kept is None else await driver.kept()
                    gone = None if kept is None else done - kept  # deleted so far
                    sample = Sample(
                        done,
                        now - window,
                        done - window_done,
                        tuple(claims),
                        await relations(system.admin, system.name),
                        kept,
                        None if gone is None else gone - window_gone,
                    )
                    result.samples.append(sample)
                    progress(
                        f"churn {system.name}: {done:,} done, {sample.rate:,.0f} jobs/s, "
                        f"claim p99 {sample.claim(0.99):.2f} ms, {sample.total / 2**20:,.1f} MiB"
                        + ("" if kept is None else f", {kept:,} finished stored")
                    )
                    claims.clear()
                    window, window_done, window_gone = now, done, gone or 0
                    if done >= plan.jobs:
                        result.finished = True
                        break
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        result.seconds = time.monotonic() - began
    schema, tables = TABLES[system.name]
    rows = await system.admin.fetch(_AUTOVACUUMS, schema, list(tables))
    result.autovacuum_runs = {r["relname"]: r["runs"] for r in rows}
    return result


# --- the run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    churns: list[Churn] = field(default_factory=list)
    postgres: str = ""
    autovacuum: str = ""
    load_start: LoadAverage = (0.0, 0.0, 0.0)
    load_end: LoadAverage = (0.0, 0.0, 0.0)
    seconds: float = 0.0


async def _autovacuum_on(url: str) -> bool:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return bool(await conn.fetchval("SELECT current_setting('autovacuum') = 'on'"))
    finally:
        await conn.close()


NAPTIME = "10s"  # docs/operations.md, "Vacuum and storage settings"


async def _churn_settings(url: str) -> None:
    """The embedded server as docs/operations.md sets up a server with churn (a reload applies
    it: the setting needs no restart)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute(f"ALTER SYSTEM SET autovacuum_naptime = '{NAPTIME}'")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@contextmanager
def churn_server() -> Iterator[Server]:
    """``JOBKEEPER_DATABASE_URL`` if set and autovacuum is on there, else an embedded
    Postgres."""
    configured = os.environ.get(URL_ENV)
    if configured and asyncio.run(_autovacuum_on(configured)):
        yield Server(configured, f"configured (`{URL_ENV}`)")
        return
    why = f" (`{URL_ENV}`'s server runs with autovacuum off)" if configured else ""
    with embedded_server("bench-churn-pg") as url:
        asyncio.run(_churn_settings(url))
        yield Server(
            url,
            f"embedded (pgserver, Unix socket; defaults but autovacuum_naptime = {NAPTIME}){why}",
        )


async def run(server_url: str, plan: ChurnPlan, logs: Path) -> Results:
    results = Results(load_start=os.getloadavg())
    began = time.monotonic()
    for name in ("jobkeeper", "pgqueuer"):
        async with AsyncExitStack() as stack:
            url = await stack.enter_async_context(scratch(server_url, name, migrate=False))
            admin = await asyncpg.connect(asyncpg_dsn(url))
            stack.push_async_callback(admin.close)
            system = load(name)(url, admin)
            await stack.enter_async_context(system.installed())
            if isinstance(system, Jobkeeper):
                results.postgres = str(await admin.fetchval("SELECT version()"))
                settings = await admin.fetch(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('autovacuum', "
                    "'autovacuum_naptime', 'autovacuum_vacuum_cost_delay', 'shared_buffers')"
                )
                results.autovacuum = ", ".join(f"{r['name']} = {r['setting']}" for r in settings)
            config = next(c for c in system.configurations if c.key == WORKERS[name])
            progress(f"churn {name}: {plan.jobs:,} jobs")
            results.churns.append(await churn(system, config, plan, logs))
    results.load_end = os.getloadavg()
    results.seconds = time.monotonic() - began
    return results


# --- the report --------------------------------------------------------------------------------


def _within(value: float, first: float) -> bool:
    return abs(value - first) <= TARGET_DRIFT * first


def verdict(results: Results) -> tuple[list[str], bool]:
    jk = next(c for c in results.churns if c.system == "jobkeeper")
    samples = jk.samples
    if not samples:
        return ["- jobkeeper produced no sample: **FAIL**"], False
    first = samples[0]
    rates = [s.rate / first.rate for s in samples]
    p99s = [s.claim(0.99) / first.claim(0.99) for s in samples]
    rate_ok = all(_within(s.rate, first.rate) for s in samples)
    p99_ok = all(_within(s.claim(0.99), first.claim(0.99)) for s in samples)
    half = samples[: max(1, len(samples) // 2)]
    growth = samples[-1].total / max(s.total for s in half)
    size_ok = growth <= TARGET_GROWTH
    lines = [
        f"- Jobs/s of each sample against the first: {min(rates):.2f}-{max(rates):.2f}; "
        f"target within +-{TARGET_DRIFT:.0%}: {status(rate_ok)}",
        f"- Claim p99 of each sample against the first: {min(p99s):.2f}-{max(p99s):.2f}; "
        f"target within +-{TARGET_DRIFT:.0%}: {status(p99_ok)}",
        f"- Size of the tables at the end against the largest of the first half: {growth:.2f}x; "
        f"target <= {TARGET_GROWTH}x: {status(size_ok)}",
        f"- All {jk.samples[-1].done:,} jobs done within the time limit: {status(jk.finished)}",
    ]
    return lines, rate_ok and p99_ok and size_ok and jk.finished


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f}"


def _sample_rows(c: Churn) -> list[str]:
    tables = [r.name for r in c.samples[0].relations if r.table] if c.samples else []
    head = " | ".join(f"{t} MiB (dead)" for t in tables)
    rows = [
        "| Jobs done | Jobs/s | Deleted/s | Finished, stored | Claim p50 ms | Claim p99 ms | "
        f"{head} |",
        "|--:|--:|--:|--:|--:|--:|" + "--:|" * len(tables),
    ]
    for s in c.samples:
        by = {r.name: r for r in s.relations}
        cells = " | ".join(f"{_mib(by[t].size)} ({by[t].dead:,})" for t in tables)
        p50, p99 = s.claim(0.5), s.claim(0.99)
        claim = "- | -" if not s.claims_ms else f"{p50:.2f} | {p99:.2f}"
        swept = (
            "- | -"
            if s.kept is None or s.deleted is None
            else f"{s.deleted / s.seconds:,.0f} | {s.kept:,}"
        )
        rows.append(f"| {s.done:,} | {s.rate:,.0f} | {swept} | {claim} | {cells} |")
    return rows


def _index_rows(c: Churn) -> list[str]:
    if not c.samples:
        return []
    first, last = c.samples[0], c.samples[-1]
    end = {r.name: r.size for r in last.relations}
    rows = [
        f"| Relation | After {first.done:,} jobs, MiB | After {last.done:,} jobs, MiB |",
        "|---|--:|--:|",
    ]
    for r in first.relations:
        label = r.name if r.table else f"index {r.name}"
        rows.append(f"| {label} | {_mib(r.size)} | {_mib(end.get(r.name, 0))} |")
    return rows


def report(
    results: Results, plan: ChurnPlan, server: str, quick: bool, figure: str | None
) -> tuple[str, bool]:
    checks, passed = verdict(results)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### Flat costs under churn{' (quick run)' if quick else ''}",
        "",
        f"Run {stamp}, {results.seconds:.0f} s.",
        "",
        *(f"- {line}" for line in machine(server, results.postgres, PACKAGES)),
        f"- Server settings: {results.autovacuum}",
        f"- {load_average(results.load_start, results.load_end)}",
        "",
        "Method:",
        "",
        f"- {plan.jobs:,} no-op jobs through each system, one system after the other, each in "
        f"its own scratch database. A producer task in this process keeps about {BACKLOG:,} "
        f"jobs queued, {LIST} per call (`JobManager.submit_many`; pgqueuer `Queries.enqueue` "
        "with lists); two worker processes run them from the start (jobkeeper: 2 processes, "
        "concurrency 100 each, uvloop; pgqueuer: 2 processes, batch 100, uvloop).",
        f"- jobkeeper's retention is on, with short TTLs so that jobs are deleted about as fast "
        f"as they finish: a `Sweeper` in a process of its own, a pass every {SWEEP_EVERY} s, "
        "payload TTL "
        f"{RETENTION['payload_ttl']:.0f} s, job TTL {RETENTION['job_ttl']:.0f} s, tombstone "
        f"TTL {RETENTION['tombstone_ttl']:.0f} s. pgqueuer deletes a job's queue row when it "
        "ends and keeps a row per job and status in `pgqueuer_log` (as installed, without its "
        "optional `optimize_autovacuum` settings).",
        f"- Claim latency (jobkeeper): a probe process of its own claims {PROBE} jobs through "
        f"jobkeeper's claim statement every {PROBE_EVERY * 1000:.0f} ms (and completes them), "
        "timed; pgqueuer's claims run inside its `QueueManager`, so it has none.",
        f"- A sample every {plan.sample:,} jobs done (done = submitted - queued or running): "
        "jobs/s over the window; jobkeeper: jobs deleted by retention per second over the window "
        "(done - finished jobs stored, `count(*)` of `finished_at IS NOT NULL`) and the finished "
        "jobs still stored (retention's backlog; a 2 s job TTL keeps a few thousand); claim "
        "p50/p99 of the window's probes; each table's "
        "`pg_total_relation_size` (heap, indexes, TOAST) and dead tuples "
        "(`pg_stat_user_tables.n_dead_tup`); each index's `pg_relation_size` below.",
        "",
    ]
    for c in results.churns:
        state = "" if c.finished else f" (stopped after {plan.timeout:.0f} s)"
        runs = ", ".join(f"{k} {v}" for k, v in sorted(c.autovacuum_runs.items()))
        lines += [
            f"**{c.system}** ({c.workers}), {c.seconds:.0f} s{state}; autovacuum and "
            f"autoanalyze runs: {runs or 'none'}",
            "",
            *_sample_rows(c),
            "",
            *_index_rows(c),
            "",
        ]
    lines += ["**Targets (jobkeeper)**", "", *checks, ""]
    if figure:
        lines += [f"![Churn samples]({figure})", ""]
    return "\n".join(lines), passed


def draw(results: Results) -> str:
    from plots import lines as plot_lines

    series: dict[str, tuple[list[float], list[float]]] = {}
    for c in results.churns:
        xs = [s.done / 1000 for s in c.samples]
        series[f"{c.system} jobs/s / 100"] = (xs, [s.rate / 100 for s in c.samples])
        series[f"{c.system} tables MiB"] = (xs, [s.total / 2**20 for s in c.samples])
        if all(s.deleted is not None for s in c.samples):
            series[f"{c.system} deleted/s / 100"] = (
                xs,
                [(s.deleted or 0) / s.seconds / 100 for s in c.samples],
            )
        if any(s.claims_ms for s in c.samples):
            series[f"{c.system} claim p99 ms x10"] = (xs, [s.claim(0.99) * 10 for s in c.samples])
    path = plot_lines(
        "churn",
        "Churn: throughput, claim p99 and table sizes over jobs processed",
        series,
        xlabel="jobs done (thousands)",
        ylabel="jobs/s / 100; MiB; ms x 10",
    )
    return f"img/{path.name}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "50,000 jobs: a smoke run")
    add_role_arguments(parser)
    parser.add_argument("--jobs", type=int, help="jobs per system (a sample every tenth)")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_role(args)
    if args.probe or args.sweep:
        loop = probe_loop(args.probe) if args.probe else sweep_loop(args.sweep)
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(loop)
        return 0
    plan = QUICK if args.quick else FULL
    if args.jobs:
        plan = ChurnPlan(args.jobs, max(1, args.jobs // 10), plan.timeout)
    with churn_server() as server, tempfile.TemporaryDirectory(prefix="bench_churn_") as tmp:
        results = asyncio.run(run(server.url, plan, Path(tmp)))
    figure = draw(results) if args.write else None
    section, passed = report(results, plan, server.description, args.quick, figure)
    publish("bench_churn", section, write=args.write)
    return 0 if passed else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
