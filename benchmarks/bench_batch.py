"""Batch submit benchmark: jobkeeper's ``JobManager.submit_many`` against pgqueuer's batched
``Queries.enqueue``, lists of 100 and of 1,000 jobs, measured in the same run, beside the plain
statement that writes the same rows (the limit any implementation of ``submit_many`` has).

Each system sits in its own scratch database on one Postgres server (created, migrated or
installed, and dropped at the end, even on error). One producer calls its batch call
sequentially, one list at a time; rows rotate their order every round, and tables are truncated
before every row. jobkeeper runs twice: as an API process runs it by default (a hot cache, which
keeps the jobs it writes and hears the change feed announce them) and with ``cache_size=0`` (a
producer that serves no reads). The limit row is one ``INSERT ... SELECT FROM unnest`` of ids
and payloads into a copy of jobkeeper's ``jobs`` table (``LIKE jobs INCLUDING ALL``: every
column, default, constraint and index) on a plain asyncpg connection, with no event rows, no
validation and no result: what writing jobkeeper's rows costs Postgres and a client that does
nothing else. The target: jobkeeper (default) at least 1.5x pgqueuer's jobs/s at both sizes.

    .venv/bin/python benchmarks/bench_batch.py            # print the markdown report
    .venv/bin/python benchmarks/bench_batch.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_batch.py --quick    # smoke run (< 30 s)

The server is ``JOBKEEPER_DATABASE_URL`` when set (its user must be allowed to ``CREATE
DATABASE``), else an embedded Postgres (pgserver). pgqueuer is a benchmark-only extra
(``jobkeeper[bench]``). Exits with status 1 when the target is missed (after the report).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from uuid_utils.compat import uuid7

from bench_limit import CREATE_TABLE as CREATE_LIMIT_TABLE
from bench_limit import INSERT as LIMIT_INSERT
from bench_limit import TABLE as LIMIT_TABLE
from common import (
    LoadAverage,
    arguments,
    load_average,
    machine,
    nearest_rank,
    postgres_server,
    publish,
    scratch,
)
from jobkeeper import JobManager, JobSpec
from plots import bars
from systems import PEER_TASK, TENANT, System, load
from systems.jobkeeper import NOOP, asyncpg_dsn
from throughput.processes import CpuMeter

SIZES = (100, 1_000)
TARGET = 1.5
WARM_CALLS = 3
PACKAGES = ("asyncpg", "pgqueuer")

Batch = Callable[[int], Awaitable[object]]  # call ``i`` submits list ``i``
LABELS = {
    "jk": "jobkeeper `submit_many` (API process: cache on)",
    "jk0": "jobkeeper `submit_many`, `cache_size=0`",
    "pgq": "pgqueuer `Queries.enqueue`",
    "limit": "limit: plain `INSERT ... unnest` into a copy of `jobs`",
}


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    jobs: int  # per row and round
    timeout: float  # seconds per row and round


FULL = Plan(rounds=3, jobs=30_000, timeout=10.0)
QUICK = Plan(rounds=1, jobs=3_000, timeout=3.0)


@dataclass(frozen=True, slots=True)
class Producer:
    """One way of submitting lists: the system it writes to, and its calls."""

    key: str
    system: System
    open: Callable[[int], AbstractAsyncContextManager[Batch]]  # a call for lists of a size
    reset: Callable[[], Awaitable[None]]  # empties what the calls filled


@dataclass(frozen=True, slots=True)
class Row:
    key: str
    size: int
    jobs: int
    seconds: float
    call_ms: tuple[float, ...]
    client_cpu: float
    postgres_cpu: float

    def __add__(self, other: Row) -> Row:
        return Row(
            self.key,
            self.size,
            self.jobs + other.jobs,
            self.seconds + other.seconds,
            self.call_ms + other.call_ms,
            self.client_cpu + other.client_cpu,
            self.postgres_cpu + other.postgres_cpu,
        )

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds


def _jobkeeper(url: str, **options: int) -> Callable[[int], AbstractAsyncContextManager[Batch]]:
    @asynccontextmanager
    async def open_calls(size: int) -> AsyncIterator[Batch]:
        async with await JobManager.connect(url, **options) as manager:

            def call(i: int) -> Awaitable[object]:
                items = [JobSpec(NOOP, {"n": i * size + k}) for k in range(size)]
                return manager.submit_many(TENANT, items)

            yield call

    return open_calls


def _limit(url: str) -> Callable[[int], AbstractAsyncContextManager[Batch]]:
    @asynccontextmanager
    async def open_calls(size: int) -> AsyncIterator[Batch]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:

            def call(i: int) -> Awaitable[object]:
                ids = [uuid7() for _ in range(size)]
                payloads = [json.dumps({"n": i * size + k}) for k in range(size)]
                return conn.execute(LIMIT_INSERT, ids, payloads, TENANT, NOOP)

            yield call
        finally:
            await conn.close()

    return open_calls


def _pgqueuer(url: str) -> Callable[[int], AbstractAsyncContextManager[Batch]]:
    from pgqueuer.queries import Queries

    @asynccontextmanager
    async def open_calls(size: int) -> AsyncIterator[Batch]:
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            queries = Queries.from_asyncpg_connection(conn)

            def call(i: int) -> Awaitable[object]:
                return queries.enqueue(
                    [PEER_TASK] * size,
                    [json.dumps({"n": i * size + k}).encode() for k in range(size)],
                    [0] * size,
                )

            yield call
        finally:
            await conn.close()

    return open_calls


async def measure(producer: Producer, size: int, plan: Plan) -> Row:
    """``plan.jobs`` jobs in lists of ``size`` (fewer if ``plan.timeout`` passes first), after
    untimed warm-up lists; the tables are emptied afterwards."""
    async with producer.open(size) as call:
        for i in range(WARM_CALLS):
            await call(-1 - i)
        meter = CpuMeter([os.getpid()], producer.system.admin)
        await meter.start()
        durations: list[float] = []
        deadline = time.monotonic() + plan.timeout
        start = time.perf_counter()
        for i in range(plan.jobs // size):
            if time.monotonic() > deadline:
                break
            t0 = time.perf_counter_ns()
            await call(i)
            durations.append((time.perf_counter_ns() - t0) / 1e6)
        seconds = time.perf_counter() - start
        client, backends = await meter.stop()
    await producer.reset()
    jobs = len(durations) * size
    return Row(producer.key, size, jobs, seconds, tuple(durations), client, backends)


async def run(server_url: str, plan: Plan) -> tuple[list[Row], str, LoadAverage, LoadAverage]:
    load_start = os.getloadavg()
    async with AsyncExitStack() as stack:
        systems: dict[str, System] = {}
        for name in ("jobkeeper", "pgqueuer"):
            url = await stack.enter_async_context(scratch(server_url, name, migrate=False))
            admin = await asyncpg.connect(asyncpg_dsn(url))
            stack.push_async_callback(admin.close)
            system = load(name)(url, admin)
            await stack.enter_async_context(system.installed())
            systems[name] = system
        jk, pgq = systems["jobkeeper"], systems["pgqueuer"]
        postgres = str(await jk.admin.fetchval("SELECT version()"))
        await jk.admin.execute(CREATE_LIMIT_TABLE)

        async def empty_limit() -> None:
            await jk.admin.execute(f"TRUNCATE {LIMIT_TABLE}")

        producers = [
            Producer("jk", jk, _jobkeeper(jk.url), jk.reset),
            Producer("jk0", jk, _jobkeeper(jk.url, cache_size=0), jk.reset),
            Producer("pgq", pgq, _pgqueuer(pgq.url), pgq.reset),
            Producer("limit", jk, _limit(jk.url), empty_limit),
        ]
        merged: dict[tuple[str, int], Row] = {}
        for r in range(plan.rounds):
            for size in SIZES:
                shift = r % len(producers)
                for producer in producers[shift:] + producers[:shift]:  # rotate the order
                    sys.stderr.write(f"round {r + 1}, lists of {size}: {producer.key}\n")
                    row = await measure(producer, size, plan)
                    key = (producer.key, size)
                    merged[key] = merged[key] + row if key in merged else row
    rows = [merged[(p.key, size)] for size in SIZES for p in producers]
    return rows, postgres, load_start, os.getloadavg()


def report(
    rows: Sequence[Row],
    plan: Plan,
    server: str,
    postgres: str,
    loads: tuple[LoadAverage, LoadAverage],
    quick: bool,
) -> tuple[str, bool]:
    by = {(row.key, row.size): row for row in rows}
    table = [
        "| List | Producer | Jobs | Jobs/s | p50 / p99 per list (ms) | Client CPU µs/job "
        "| Postgres CPU µs/job |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ordered = sorted(row.call_ms)
        table.append(
            f"| {row.size:,} | {LABELS[row.key]} | {row.jobs:,} | **{row.rate:,.0f}** | "
            f"{nearest_rank(ordered, 0.5):.1f} / {nearest_rank(ordered, 0.99):.1f} | "
            f"{row.client_cpu / row.jobs * 1e6:.1f} | {row.postgres_cpu / row.jobs * 1e6:.1f} |"
        )
    verdicts = []
    passed = True
    for size in SIZES:
        jk, jk0, pgq = by[("jk", size)], by[("jk0", size)], by[("pgq", size)]
        bound = by[("limit", size)]
        ratio = jk.rate / pgq.rate
        ok = ratio >= TARGET
        passed = passed and ok
        verdicts.append(
            f"- Lists of {size:,}: jobkeeper {jk.rate:,.0f} jobs/s ({jk0.rate:,.0f} without a "
            f"cache) vs pgqueuer {pgq.rate:,.0f} = **{ratio:.2f}x** ({jk0.rate / pgq.rate:.2f}x); "
            f"target >= {TARGET}x: {'met' if ok else 'MISSED'}. The limit (the rows alone) "
            f"{bound.rate:,.0f} jobs/s = {bound.rate / pgq.rate:.2f}x pgqueuer; jobkeeper "
            f"{jk.rate / bound.rate:.2f} of it"
        )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Batch submit against pgqueuer",
        "",
        f"Measured {stamp}{' (quick run: small counts, not a result)' if quick else ''}.",
        "",
        *(f"- {line}" for line in machine(server, postgres, PACKAGES)),
        f"- {load_average(*loads)} (two cores shared with other work: compare "
        "rows of this run, not runs)",
        "",
        "**Result**",
        "",
        *verdicts,
        "",
        "**Lists, one at a time**",
        "",
        *table,
        "",
        "![Batch submit: jobs/s per producer and list size](img/bench-batch.png)",
        "",
        "**Method**",
        "",
        f"- One producer in this process submits one list at a time ({plan.jobs:,} jobs per "
        f"row and round, at most {plan.timeout:.0f} s), after {WARM_CALLS} untimed lists; "
        f"{plan.rounds} round(s), rows in rotating order; tables truncated after every row. "
        'Payload `{"n": i}` everywhere; jobs/s = jobs / wall time.',
        "- jobkeeper: `JobManager.connect(url)` (its defaults: a cache, the change feed) and "
        "`JobManager.connect(url, cache_size=0)`; `submit_many(tenant, [JobSpec(kind, "
        "payload), ...])`: one statement (the rows as arrays, `unnest`, each job with its "
        "`submitted` event), its notifications sent by the announcer. pgqueuer: "
        "`Queries.enqueue(entrypoints, payloads, priorities)` on one asyncpg connection: one "
        "statement (its queue rows and their log rows). The limit: "
        f"`CREATE TABLE {LIMIT_TABLE} (LIKE jobs INCLUDING ALL)` in jobkeeper's database, one "
        "`INSERT ... SELECT FROM unnest($ids, $payloads)` per list on one asyncpg connection "
        "(ids by `uuid7()`, payloads by `json.dumps`, as pgqueuer's row gets them): no event "
        "row, no validation, no result.",
        "- Client CPU = this process's CPU time (user + system) over the row, so jobkeeper's "
        "change feed and announcer count; Postgres CPU = the same for the backends connected to "
        "that system's database (`/proc/<pid>/stat`).",
        "",
    ]
    return "\n".join(lines), passed


SHORT = {
    "jk": "jobkeeper",
    "jk0": "jobkeeper,\ncache_size=0",
    "pgq": "pgqueuer",
    "limit": "limit:\nplain INSERT",
}


def draw(rows: Sequence[Row]) -> None:
    """The figure: jobs/s of every producer at every list size, in the table's order."""
    bars(
        "batch",
        "Batch submit, one list at a time (higher is better)",
        {f"{SHORT[row.key]}\nlists of {row.size:,}": row.rate for row in rows},
        ylabel="jobs/s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(__doc__, "small counts: a < 30 s smoke run").parse_args(argv)
    plan = QUICK if args.quick else FULL
    with postgres_server() as server:
        rows, postgres, start, end = asyncio.run(run(server.url, plan))
    section, passed = report(rows, plan, server.description, postgres, (start, end), args.quick)
    publish("bench_batch", section, write=args.write)
    if args.write:
        draw(rows)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
