"""Read-path benchmark: ``JobManager.get`` from the hot cache against Postgres, plus submits.

One run, one asyncio loop, one scratch database. The server is ``JOBKEEPER_DATABASE_URL`` when set
(its user must be allowed to ``CREATE DATABASE``), else an embedded Postgres (pgserver) that is
stopped at the end. A fresh database is created, migrated with ``jobkeeper.migrate.upgrade``, seeded
with ``JobManager.submit`` and dropped at the end, even on error.

Every call is timed on its own with ``time.perf_counter_ns`` after an untimed warm-up. The peer
(a raw asyncpg primary-key ``SELECT`` on one connection) is measured in the same run, so the ratio
compares like with like.

    .venv/bin/python benchmarks/bench_read_path.py            # print the markdown report
    .venv/bin/python benchmarks/bench_read_path.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_read_path.py --quick    # smoke run, small counts (~10 s)

Exits with status 1 when a target is missed (after printing and writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import sqlalchemy as sa
from cachetools import TTLCache
from sqlalchemy.ext.asyncio import create_async_engine

from common import arguments, machine, nearest_rank, postgres_server, publish, scratch
from jobkeeper import CacheStats, Job, JobManager
from systems.jobkeeper import asyncpg_dsn, in_schema, jobs, repository_of, sqlalchemy_url

TENANT = "bench"
KIND = "bench.job"
CACHE_TTL = 3600.0  # far longer than a run: nothing expires while it is measured
PK_SELECT = in_schema("SELECT * FROM jobs WHERE id = $1 AND tenant = $2")
US = "\u00b5s"

HIT = "`JobManager.get` cache hit"
PEER = "asyncpg PK `SELECT`, one raw connection (peer)"
POOL = "SQLAlchemy pool checkout + return only (no query)"
CORE_PREBUILT = "SQLAlchemy Core, statement built once, held connection"
CORE_PER_CALL = "SQLAlchemy Core, statement built per call, held connection"
REPOSITORY = "`JobStatements.get` (pool checkout, query, row to `Job`)"
MISS = "`JobManager.get` miss (cold cache, reads Postgres then warms)"

TARGET_RATIO = 50.0  # hit p50 must be at least this many times below the PK SELECT p50
AIM_RATIO = 100.0
TARGET_HIT_P99_US = 10.0

Op = Callable[[int], Awaitable[object]]
# the primary-key select in SQLAlchemy Core, built once with bind parameters
PREBUILT_GET = sa.select(jobs).where(
    jobs.c.id == sa.bindparam("id"), jobs.c.tenant == sa.bindparam("tenant")
)


@dataclass(frozen=True, slots=True)
class Plan:
    """Iteration counts. Reads are timed in ``rounds`` interleaved blocks (see ``compare``)."""

    jobs: int
    hits: int
    reads: int
    submits: int
    concurrent_submits: int
    concurrency: int
    rounds: int

    @staticmethod
    def warmup(calls: int) -> int:
        """Untimed calls before each timed block: a tenth of it, at least 50."""
        return max(50, calls // 10)


FULL = Plan(
    jobs=2_000,
    hits=200_000,
    reads=5_000,
    submits=2_000,
    concurrent_submits=8_000,
    concurrency=16,
    rounds=10,
)
QUICK = Plan(
    jobs=300,
    hits=20_000,
    reads=500,
    submits=300,
    concurrent_submits=800,
    concurrency=16,
    rounds=2,
)


@dataclass(frozen=True, slots=True)
class Result:
    """One measurement: every call's duration (sorted, ns), and the wall time and this thread's
    CPU time of the timed calls as a whole."""

    name: str
    concurrency: int
    wall_ns: int
    cpu_ns: int
    samples: tuple[int, ...]

    def __add__(self, other: Result) -> Result:
        """The same measurement over both runs' calls."""
        return Result(
            self.name,
            self.concurrency,
            self.wall_ns + other.wall_ns,
            self.cpu_ns + other.cpu_ns,
            tuple(sorted(self.samples + other.samples)),
        )

    @property
    def calls(self) -> int:
        return len(self.samples)

    @property
    def ops_per_s(self) -> float:
        return self.calls * 1e9 / self.wall_ns

    @property
    def cpu_us(self) -> float:
        """This process's (one thread's) CPU time per call, event loop and syscalls included."""
        return self.cpu_ns / self.calls / 1000

    def quantile_us(self, q: float) -> float:
        """Nearest-rank quantile in microseconds."""
        return nearest_rank(self.samples, q) / 1000

    @property
    def p50_us(self) -> float:
        return self.quantile_us(0.50)

    @property
    def p99_us(self) -> float:
        return self.quantile_us(0.99)

    @property
    def max_us(self) -> float:
        return self.samples[-1] / 1000


# --- measuring ---------------------------------------------------------------------------------


async def _drive(op: Op, indices: range, concurrency: int) -> list[int]:
    """Run ``op(i)`` for each index from ``concurrency`` tasks; each call's duration in ns."""
    pending = iter(indices)  # shared by the tasks: each index runs exactly once
    samples: list[int] = []
    clock = time.perf_counter_ns

    async def worker() -> None:
        for i in pending:
            start = clock()
            await op(i)
            samples.append(clock() - start)

    if concurrency == 1:
        await worker()
    else:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def measure(name: str, op: Op, calls: int, *, concurrency: int = 1, first: int = 0) -> Result:
    """Warm up (untimed), then time each of ``op(first) .. op(first + calls - 1)`` alone."""
    await _drive(op, range(first, first + Plan.warmup(calls)), concurrency)
    gc.collect()
    # a cache hit never suspends: let due background work (the managers' change feeds, whose
    # last catch-up must stay recent for the cache to be used) run between blocks, untimed
    await asyncio.sleep(0)
    cpu, start = time.thread_time_ns(), time.perf_counter_ns()
    samples = await _drive(op, range(first, first + calls), concurrency)
    wall, cpu = time.perf_counter_ns() - start, time.thread_time_ns() - cpu
    return Result(name, concurrency, wall, cpu, tuple(sorted(samples)))


def _progress(results: Sequence[Result]) -> list[Result]:
    for r in results:
        sys.stderr.write(f"  {r.name}: p50 {r.p50_us:,.1f} {US}, {r.ops_per_s:,.0f} ops/s\n")
    return list(results)


async def compare(ops: Sequence[tuple[str, Op]], calls: int, rounds: int) -> list[Result]:
    """``measure`` each op for ``calls`` calls, in ``rounds`` interleaved blocks.

    The order rotates every round, so a burst of noise from the machine lands on every op alike
    and the differences between rows stay meaningful; each op's blocks are merged into one row.
    """
    block = calls // rounds
    merged: dict[str, Result] = {}
    for r in range(rounds):
        shift = r % len(ops)
        for name, op in [*ops[shift:], *ops[:shift]]:
            result = await measure(name, op, block, first=r * block)
            merged[name] = merged[name] + result if name in merged else result
    return _progress([merged[name] for name, _ in ops])


def cycle(ids: Sequence[UUID]) -> Callable[[int], UUID]:
    """Call ``i`` reads job ``ids[i % len(ids)]``: every job in turn."""
    return lambda i: ids[i % len(ids)]


def check_cache(
    name: str, before: CacheStats, after: CacheStats, *, hits: int, misses: int
) -> None:
    """Fail the run unless the cache counted at least ``hits`` hits and ``misses`` misses, and
    nothing of the other kind (a hit row must not fall through to Postgres, nor a miss row hit)."""
    hit, missed = after.hits - before.hits, after.misses - before.misses
    if hit < hits or missed < misses or (hits and missed) or (misses and hit):
        raise RuntimeError(f"{name}: expected {hits=} {misses=} at least, got {hit=} {missed=}")


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Everything the measurements share."""

    plan: Plan
    url: str
    ids: Sequence[UUID]
    manager: JobManager
    raw: asyncpg.Connection


async def seed(manager: JobManager, plan: Plan) -> list[UUID]:
    created: list[Job] = []

    async def submit(i: int) -> None:
        created.append(await manager.submit(TENANT, KIND, {"seed": i}))

    await _drive(submit, range(plan.jobs), plan.concurrency)
    return [job.id for job in created]


async def bench_hits(ctx: Context) -> list[Result]:
    """The floor, a bare cachetools hit and ``JobManager.get`` hits, over the seeded jobs."""
    job_id = cycle(ctx.ids)
    table: TTLCache[UUID, Job] = TTLCache(maxsize=len(ctx.ids), ttl=CACHE_TTL)
    for each in ctx.ids:
        table[each] = await ctx.manager.get(each, tenant=TENANT)

    async def nothing(i: int) -> None:
        return None

    async def ttl_hit(i: int) -> Job:
        return table[job_id(i)]

    def manager_hit(i: int) -> Awaitable[Job]:
        return ctx.manager.get(job_id(i), tenant=TENANT)

    before = ctx.manager.cache_stats()
    results = await compare(
        [
            ("floor: empty coroutine (timer + call + await)", nothing),
            ("cachetools `TTLCache[k]` hit (in a coroutine)", ttl_hit),
            (HIT, manager_hit),
        ],
        ctx.plan.hits,
        ctx.plan.rounds,
    )
    check_cache("cache hit", before, ctx.manager.cache_stats(), hits=ctx.plan.hits, misses=0)
    return results


async def bench_postgres_reads(ctx: Context) -> list[Result]:
    """The raw asyncpg peer, the SQLAlchemy layers in between, and ``get`` misses."""
    job_id = cycle(ctx.ids)
    async with AsyncExitStack() as stack:
        # cache_size=1: cycling through the jobs, every read misses
        cold = await JobManager.connect(ctx.url, cache_size=1, cache_ttl=CACHE_TTL)
        stack.push_async_callback(cold.close)
        # reference rows: SQLAlchemy Core on its own engine, configured like a repository's
        engine = create_async_engine(
            sqlalchemy_url(ctx.url), isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=0
        )
        stack.push_async_callback(engine.dispose)
        held = await stack.enter_async_context(engine.connect())

        def raw_select(i: int) -> Awaitable[object]:
            return ctx.raw.fetchrow(PK_SELECT, job_id(i), TENANT)

        async def pool_checkout(i: int) -> object:
            async with engine.connect() as conn:
                return (await conn.get_raw_connection()).driver_connection

        async def core_prebuilt(i: int) -> object:
            return (await held.execute(PREBUILT_GET, {"id": job_id(i), "tenant": TENANT})).first()

        async def core_per_call(i: int) -> object:
            query = sa.select(jobs).where(jobs.c.id == job_id(i), jobs.c.tenant == TENANT)
            return (await held.execute(query)).first()

        repository = repository_of(cold)

        def repository_get(i: int) -> Awaitable[Job | None]:
            return repository.jobs.get(job_id(i), TENANT)

        def cold_get(i: int) -> Awaitable[Job]:
            return cold.get(job_id(i), tenant=TENANT)

        def strong_get(i: int) -> Awaitable[Job]:
            return ctx.manager.get(job_id(i), tenant=TENANT, consistency="strong")

        before = cold.cache_stats()
        results = await compare(
            [
                (PEER, raw_select),
                (POOL, pool_checkout),
                (CORE_PREBUILT, core_prebuilt),
                (CORE_PER_CALL, core_per_call),
                (REPOSITORY, repository_get),
                (MISS, cold_get),
                ('`JobManager.get` strong read (`consistency="strong"`)', strong_get),
            ],
            ctx.plan.reads,
            ctx.plan.rounds,
        )
        check_cache("cache miss", before, cold.cache_stats(), hits=0, misses=ctx.plan.reads)
    return results


async def bench_submits(ctx: Context) -> list[Result]:
    def submit(i: int) -> Awaitable[Job]:
        return ctx.manager.submit(TENANT, KIND, {"n": i})

    plan = ctx.plan
    name = f"`JobManager.submit`, {plan.concurrency} concurrent tasks"
    return _progress(
        [
            await measure("`JobManager.submit`, sequential", submit, plan.submits),
            await measure(name, submit, plan.concurrent_submits, concurrency=plan.concurrency),
        ]
    )


async def run(server_url: str, server: str, plan: Plan, quick: bool) -> tuple[str, bool]:
    """Set up, measure everything, tear down; the markdown section and whether targets pass."""
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(scratch(server_url, "read_path"))
        manager = await JobManager.connect(
            url, cache_ttl=CACHE_TTL, pool_size=max(16, plan.concurrency)
        )
        stack.push_async_callback(manager.close)
        raw = await asyncpg.connect(asyncpg_dsn(url))
        stack.push_async_callback(raw.close)
        sys.stderr.write(f"seeding {plan.jobs} jobs, then measuring:\n")
        ctx = Context(plan, url, await seed(manager, plan), manager, raw)
        results = [
            *await bench_hits(ctx),
            *await bench_postgres_reads(ctx),
            *await bench_submits(ctx),
        ]
        postgres = str(await raw.fetchval("SELECT version()"))
        loop = type(asyncio.get_running_loop()).__name__
    verdict_lines, passed = verdict(results)
    return report(results, verdict_lines, plan, machine(server, postgres), loop, quick), passed


# --- the report --------------------------------------------------------------------------------


def _row(r: Result) -> str:
    return (
        f"| {r.name} | {r.calls:,} | {r.concurrency} | {r.ops_per_s:,.0f} "
        f"| {r.p50_us:,.1f} | {r.p99_us:,.1f} | {r.max_us:,.1f} | {r.cpu_us:,.1f} |"
    )


def verdict(results: Sequence[Result]) -> tuple[list[str], bool]:
    """The targets' verdict and where the miss path's time goes; whether both targets pass."""
    row = {r.name: r for r in results}
    hit, peer, miss = row[HIT], row[PEER], row[MISS]
    ratio = peer.p50_us / hit.p50_us
    ratio_ok, p99_ok = ratio >= TARGET_RATIO, hit.p99_us < TARGET_HIT_P99_US

    def status(ok: bool) -> str:
        return "**PASS**" if ok else "**FAIL**"

    def part(upper: str, lower: str | None) -> str:
        spent = row[upper].p50_us - (0.0 if lower is None else row[lower].p50_us)
        return f"{spent:,.0f} {US} ({100 * spent / miss.p50_us:.0f}%)"

    lines = [
        f"- Ratio = asyncpg PK `SELECT` p50 / `JobManager.get` hit p50 = "
        f"{peer.p50_us:,.1f} / {hit.p50_us:,.2f} = **{ratio:,.0f}x**; target >= "
        f"{TARGET_RATIO:.0f}x (aim {AIM_RATIO:.0f}x): {status(ratio_ok)}",
        f"- Cache hit p99 = {hit.p99_us:,.2f} {US}; target < {TARGET_HIT_P99_US:.0f} {US}: "
        f"{status(p99_ok)}",
        f"- Miss p50 {miss.p50_us:,.0f} {US}, split by p50 differences: Postgres round trip "
        f"with raw asyncpg {part(PEER, None)}; the data layer on top of it (pool checkout, "
        f"query, row to `Job`) {part(REPOSITORY, PEER)}; `JobManager` and cache bookkeeping "
        f"{part(MISS, REPOSITORY)}.",
        f"- A bare SQLAlchemy pool checkout + return (`engine.connect()`, "
        f"`get_raw_connection()`, close) costs {row[POOL].p50_us:,.0f} {US} p50 by itself. "
        f"For reference, SQLAlchemy Core's own cost over raw asyncpg: execute and result "
        f"machinery {row[CORE_PREBUILT].p50_us - peer.p50_us:,.0f} {US}; building the `select` "
        f"and its cache key on every call another "
        f"{row[CORE_PER_CALL].p50_us - row[CORE_PREBUILT].p50_us:,.0f} {US}.",
    ]
    return lines, ratio_ok and p99_ok


def report(
    results: Sequence[Result],
    verdict_lines: Sequence[str],
    plan: Plan,
    machine_lines: Sequence[str],
    loop: str,
    quick: bool,
) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (`--quick` smoke run: small counts, not for comparison)" if quick else ""
    lines = [
        "### Read path: `JobManager.get` hit vs Postgres (`benchmarks/bench_read_path.py`)",
        "",
        f"Run: {when}{mode}.",
        "",
        "**Machine**",
        "",
        *(f"- {line}" for line in machine_lines),
        "",
        "**Method**",
        "",
        f"- One asyncio loop ({loop}), one process; a fresh database migrated to head, seeded with "
        f'{plan.jobs:,} jobs by `JobManager.submit` (one tenant, payload `{{"seed": i}}`).',
        "- Every call is timed alone with `time.perf_counter_ns` (call + await, timer "
        "included), after an untimed warm-up and `gc.collect()`. ops/s = calls / wall time of "
        f"the timed calls; p50/p99 nearest-rank; times in {US}. CPU/call: this process's CPU "
        "time (`time.thread_time_ns`, one thread, event loop and syscalls included) over the "
        "timed calls, divided by their number; unlike wall times it barely moves when other "
        "processes load the machine, and Postgres's own CPU is not in it.",
        f"- Reads are timed in {plan.rounds} interleaved rounds (rotating order; each block "
        "warmed up with a tenth of its calls, at least 50), merged per row, so machine noise "
        f"hits every row alike. They cycle through all {plan.jobs:,} seeded jobs.",
        f"- Hit: the manager that submitted the jobs (cache 10,000 entries, TTL {CACHE_TTL:.0f} s) "
        "holds every job; checked: zero misses. Miss: a manager with `cache_size=1`, so each "
        "read goes to Postgres and then warms; checked: zero hits. Strong: "
        '`consistency="strong"` on the first manager always reads Postgres.',
        f"- Peer: `{PK_SELECT}` with `fetchrow` on one raw asyncpg connection (statement "
        "prepared once by asyncpg's cache). `JobStatements.get` is timed on the miss row's "
        "manager. Reference rows, on a separate autocommit engine: a pool checkout and return "
        "with no query (`engine.connect()`, `get_raw_connection()`, close); the same select in "
        "SQLAlchemy Core (`sa.select(jobs).where(...)`) on one held `AsyncConnection`, built "
        "once with bind parameters, and built per call.",
        "- Managers run as in production, with their change feed (notify mode: one LISTEN "
        "connection, catch-up every second); the loop is yielded to once before each timed "
        "block, since a cache hit never suspends and the feed must stay in sync for the cache "
        "to be used.",
        "- Floor: an empty coroutine, the cost of the timer and of one call + await. "
        "`TTLCache[k]` is a bare cachetools lookup wrapped in a coroutine, like `get`.",
        f"- Submits: sequential, then {plan.concurrency} tasks sharing one manager "
        f"(pool of {max(16, plan.concurrency)} connections); latency per call includes waiting "
        "for the event loop.",
        "",
        f"| Measurement | Calls | Tasks | ops/s | p50 {US} | p99 {US} | max {US} | CPU {US}/call |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
        *(_row(r) for r in results),
        "",
        *verdict_lines,
    ]
    return "\n".join(lines) + "\n"


# --- entry point -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return arguments(__doc__, "small counts: a ~10 s smoke run").parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    with postgres_server() as server:
        section, passed = asyncio.run(run(server.url, server.description, plan, args.quick))
    publish("bench_read_path", section, write=args.write)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
