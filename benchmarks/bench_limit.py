"""The distance to the limit: jobkeeper's drain against Postgres's own limit for the same work,
and against pgqueuer's drain, all in one run.

The limit is a plain asyncpg loop on a table with the same columns, constraints and indexes as
jobkeeper's ``jobs`` (``CREATE TABLE ... (LIKE jobs INCLUDING ALL)``, so it follows every
migration): each of 1, 2 or 4 connections claims 100 queued rows (``FOR UPDATE SKIP LOCKED``, in
claim order) and marks them succeeded, with no event rows, no notifications and no Python per
job beyond the ids. Two shapes: *drain* (rows inserted first, untimed, as the drains below) and
*cycle* (each connection inserts 100, claims 100, completes them, and again). jobkeeper's and
pgqueuer's drains are ``bench_throughput.py``'s (same worker processes, same code), in rotating
order with the limit's rows, every round.

Where Postgres's time goes per job: each statement once more under ``EXPLAIN (ANALYZE, BUFFERS,
WAL)`` (executor time, WAL records and bytes, buffers touched, per job), for jobkeeper's submit
rows, claim and completion and for the limit's three statements.

    .venv/bin/python benchmarks/bench_limit.py            # print the markdown report
    .venv/bin/python benchmarks/bench_limit.py --write    # ... update docs/benchmarks.md + figure
    .venv/bin/python benchmarks/bench_limit.py --quick    # smoke run, small counts

Exits with status 1 when a target is missed (after printing and writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from uuid_utils.compat import uuid7

from common import (
    LoadAverage,
    arguments,
    load_average,
    machine,
    postgres_server,
    publish,
    scratch,
    status,
)
from systems import TENANT, System, load
from systems.jobkeeper import NOOP, Jobkeeper, asyncpg_dsn, in_schema, lease_statements
from throughput.processes import CpuMeter, add_role_arguments, run_role
from throughput.scenarios import Drain, Plan, WorkerSpec, drain, progress

TARGET_FRACTION = 0.5  # jobkeeper's best drain / the limit's best drain
TARGET_PEER = 1.5  # jobkeeper's best drain / pgqueuer's best drain
BATCH = 100
CONNECTIONS = (1, 2, 4)
DRAINS = ("jk1uv", "jk2uv", "jk4uv", "pgq1", "pgq2", "pgq4")
PACKAGES = ("jobkeeper", "asyncpg", "pgqueuer")
US = "\u00b5s"


@dataclass(frozen=True, slots=True)
class LimitPlan:
    jobs: int  # per drain and limit row, per round
    rounds: int
    timeout: float
    explain_jobs: int  # jobs per statement under EXPLAIN

    def drain_plan(self) -> Plan:
        return Plan(
            drain_jobs=self.jobs,
            rounds=self.rounds,
            drain_timeout=self.timeout,
            enqueue_single=0,
            enqueue_concurrent=0,
            enqueue_batched=0,
            batch=BATCH,
            enqueue_timeout=0.0,
            cycles=0,
            mixed_seconds=0.0,
            mixed_warmup=0.0,
            latency_jobs=0,
            cancel_jobs=0,
            profile_jobs=0,
        )


FULL = LimitPlan(jobs=40_000, rounds=3, timeout=40.0, explain_jobs=5_000)
QUICK = LimitPlan(jobs=5_000, rounds=1, timeout=15.0, explain_jobs=1_000)

# --- the limit: plain statements on a copy of the jobs table ------------------------------------

TABLE = "public.limit_jobs"
CREATE_TABLE = in_schema(f"CREATE TABLE {TABLE} (LIKE jobs INCLUDING ALL)")
INSERT = f"""INSERT INTO {TABLE} (id, tenant, kind, payload)
SELECT t.id, $3, $4, t.payload::jsonb FROM unnest($1::uuid[], $2::text[]) AS t(id, payload)"""
_CLAIM = f"""UPDATE {TABLE} SET status = 'running', attempts = attempts + 1,
    lease_token = gen_random_uuid(), lease_expires_at = now() + interval '30 seconds',
    worker_id = $1, started_at = now(), version = version + 1, updated_at = now()
WHERE id IN (SELECT id FROM {TABLE} WHERE status = 'queued' AND run_after <= now()
             ORDER BY priority DESC, run_after, id LIMIT {BATCH} FOR UPDATE SKIP LOCKED)
RETURNING id, lease_token"""
_COMPLETE = f"""UPDATE {TABLE} SET status = 'succeeded', result = 'null', finished_at = now(),
    lease_token = NULL, lease_expires_at = NULL, worker_id = NULL, version = version + 1,
    updated_at = now()
FROM unnest($1::uuid[], $2::uuid[]) AS d(id, token)
WHERE {TABLE}.id = ANY($1::uuid[]) AND {TABLE}.id = d.id AND {TABLE}.lease_token = d.token"""


def _rows(n: int) -> tuple[list[uuid.UUID], list[str]]:
    return [uuid7() for _ in range(n)], [json.dumps({"n": i}) for i in range(n)]


async def _insert(conn: asyncpg.Connection, n: int) -> None:
    ids, payloads = _rows(n)
    await conn.execute(INSERT, ids, payloads, TENANT, NOOP)


async def _claim_complete(conn: asyncpg.Connection, worker: uuid.UUID) -> int:
    rows = await conn.fetch(_CLAIM, worker)
    if rows:
        await conn.execute(_COMPLETE, [r["id"] for r in rows], [r["lease_token"] for r in rows])
    return len(rows)


@dataclass(frozen=True, slots=True)
class Limit:
    shape: str  # "drain" or "cycle"
    connections: int
    jobs: int
    seconds: float
    client_cpu: float
    postgres_cpu: float

    @property
    def label(self) -> str:
        plural = "s" if self.connections > 1 else ""
        return f"limit ({self.shape}), {self.connections} connection{plural}"

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def __add__(self, other: Limit) -> Limit:
        return Limit(
            self.shape,
            self.connections,
            self.jobs + other.jobs,
            self.seconds + other.seconds,
            self.client_cpu + other.client_cpu,
            self.postgres_cpu + other.postgres_cpu,
        )


async def limit(admin: asyncpg.Connection, url: str, shape: str, k: int, jobs: int) -> Limit:
    """One limit row: ``k`` connections drain ``jobs`` pre-inserted rows (``drain``) or each
    insert, claim and complete batches of ``BATCH`` (``cycle``) until ``jobs`` are done."""
    await admin.execute(f"TRUNCATE {TABLE}")
    if shape == "drain":
        await _insert(admin, jobs)
    await admin.execute(f"ANALYZE {TABLE}")
    conns = [await asyncpg.connect(asyncpg_dsn(url)) for _ in range(k)]
    try:
        meter = CpuMeter([], admin)
        await meter.start()
        cpu0, start = time.process_time(), time.monotonic()
        per_conn = jobs // BATCH // k

        async def drain_loop(conn: asyncpg.Connection) -> int:
            worker, done = uuid.uuid4(), 0
            while n := await _claim_complete(conn, worker):
                done += n
            return done

        async def cycle_loop(conn: asyncpg.Connection) -> int:
            worker, done = uuid.uuid4(), 0
            for _ in range(per_conn):
                await _insert(conn, BATCH)
                done += await _claim_complete(conn, worker)
            return done + await drain_loop(conn)  # rows another connection left behind

        loop = drain_loop if shape == "drain" else cycle_loop
        done = sum(await asyncio.gather(*(loop(c) for c in conns)))
        seconds = time.monotonic() - start
        client_cpu = time.process_time() - cpu0
        _, postgres_cpu = await meter.stop()
    finally:
        for conn in conns:
            await conn.close()
    left = await admin.fetchval(f"SELECT count(*) FROM {TABLE} WHERE status <> 'succeeded'")
    if left:
        raise RuntimeError(f"limit {shape} x{k}: {left} rows not succeeded")
    progress(f"limit {shape}, {k} connection(s): {done:,} jobs in {seconds:.2f} s")
    return Limit(shape, k, done, seconds, client_cpu, postgres_cpu)


# --- where Postgres's time goes: EXPLAIN (ANALYZE, BUFFERS, WAL) per statement -------------------


@dataclass(frozen=True, slots=True)
class Cost:
    statement: str
    jobs: int
    ms: float
    wal_records: float
    wal_bytes: float
    hit: float
    dirtied: float

    def per_job(self, value: float) -> float:
        return value / max(1, self.jobs)


@dataclass(slots=True)
class _Tally:
    jobs: int = 0
    totals: dict[str, float] = field(default_factory=dict)

    def add(self, plan_json: str, jobs: int) -> None:
        top = json.loads(plan_json)[0]
        self.jobs += jobs
        self.totals["ms"] = self.totals.get("ms", 0.0) + top["Execution Time"]
        for node in _counted(top["Plan"]):
            values = {
                "wal_records": node.get("WAL Records", 0),
                "wal_bytes": node.get("WAL Bytes", 0),
                "hit": node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0),
                "dirtied": node.get("Shared Dirtied Blocks", 0),
            }
            for key, value in values.items():
                self.totals[key] = self.totals.get(key, 0.0) + value

    def cost(self, statement: str) -> Cost:
        return Cost(statement, self.jobs, **self.totals)


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _nodes(child)


def _counted(top: dict[str, Any]) -> list[dict[str, Any]]:
    """The plan nodes whose counters add up to the statement's: the top node (its counters
    include its children's) and every data-modifying CTE no node reads (Postgres runs those
    after the main plan, outside the top node's counters: ``with_event``'s ``recorded``)."""
    read = {n["CTE Name"] for n in _nodes(top) if "CTE Name" in n}
    unread = [
        n
        for n in _nodes(top)
        if n.get("Subplan Name", "").startswith("CTE ") and n["Subplan Name"][4:] not in read
    ]
    return [top, *unread]


_EXPLAIN = "EXPLAIN (ANALYZE, BUFFERS, WAL, FORMAT JSON) "


async def costs(jk: Jobkeeper, n: int) -> list[Cost]:
    """jobkeeper's submit rows (as ``preload`` writes them), claims and completions of
    ``BATCH`` jobs, and the limit's three statements, each under EXPLAIN ANALYZE."""
    admin = jk.admin
    leases = lease_statements()
    tallies: dict[str, _Tally] = {}

    def tally(name: str) -> _Tally:
        return tallies.setdefault(name, _Tally())

    await jk.reset()
    ids, payloads = _rows(n)
    tally("jobkeeper: submit rows (job + `submitted` event)").add(
        await admin.fetchval(_EXPLAIN + jk.preload_sql, ids, payloads, TENANT, NOOP), n
    )
    await jk.analyze()
    worker = uuid.uuid4()
    running = in_schema("SELECT id, lease_token FROM jobs WHERE status = 'running'")
    for _ in range(n // BATCH):
        claim = leases.claim_sql
        args = claim.args(
            {"worker_id": worker, "kinds": [NOOP], "limit": BATCH, "lease_seconds": 30.0}
        )
        tally(f"jobkeeper: claim, {BATCH} jobs").add(
            await admin.fetchval(_EXPLAIN + in_schema(claim.text), *args), BATCH
        )
        rows = await admin.fetch(running)
        complete = leases.complete_sql
        args = complete.args(
            {
                "ids": [r["id"] for r in rows],
                "tokens": [r["lease_token"] for r in rows],
                "results": ["null"] * len(rows),
                "fractions": [None] * len(rows),
                "messages": [None] * len(rows),
            }
        )
        tally(f"jobkeeper: complete, {BATCH} jobs").add(
            await admin.fetchval(_EXPLAIN + in_schema(complete.text), *args), len(rows)
        )
    await jk.reset()

    await admin.execute(f"TRUNCATE {TABLE}")
    tally("limit: insert").add(
        await admin.fetchval(_EXPLAIN + INSERT, ids, payloads, TENANT, NOOP), n
    )
    await admin.execute(f"ANALYZE {TABLE}")
    claimed = f"SELECT id, lease_token FROM {TABLE} WHERE status = 'running'"
    for _ in range(n // BATCH):
        tally(f"limit: claim, {BATCH} jobs").add(
            await admin.fetchval(_EXPLAIN + _CLAIM, worker), BATCH
        )
        rows = await admin.fetch(claimed)
        ids_, tokens = [r["id"] for r in rows], [r["lease_token"] for r in rows]
        tally(f"limit: complete, {BATCH} jobs").add(
            await admin.fetchval(_EXPLAIN + _COMPLETE, ids_, tokens), len(rows)
        )
    await admin.execute(f"TRUNCATE {TABLE}")
    return [t.cost(name) for name, t in tallies.items()]


# --- the run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Results:
    drains: list[Drain] = field(default_factory=list)
    limits: list[Limit] = field(default_factory=list)
    costs: list[Cost] = field(default_factory=list)
    postgres: str = ""
    load_start: LoadAverage = (0.0, 0.0, 0.0)
    load_end: LoadAverage = (0.0, 0.0, 0.0)
    seconds: float = 0.0


async def run(server_url: str, plan: LimitPlan, logs: Path) -> Results:
    results = Results(load_start=os.getloadavg())
    began = time.monotonic()
    async with AsyncExitStack() as stack:
        systems: list[System] = []
        for name in ("jobkeeper", "pgqueuer"):
            url = await stack.enter_async_context(scratch(server_url, name, migrate=False))
            admin = await asyncpg.connect(asyncpg_dsn(url))
            stack.push_async_callback(admin.close)
            system = load(name)(url, admin)
            await stack.enter_async_context(system.installed())
            systems.append(system)
        jk = systems[0]
        assert isinstance(jk, Jobkeeper)
        results.postgres = str(await jk.admin.fetchval("SELECT version()"))
        await jk.admin.execute(CREATE_TABLE)
        # LIKE copies no storage parameters: the limit's table gets those of jobs (fillfactor)
        options = await jk.admin.fetchval(
            "SELECT reloptions FROM pg_class WHERE oid = to_regclass($1)", in_schema("jobs")
        )
        if options:
            await jk.admin.execute(f"ALTER TABLE {TABLE} SET ({', '.join(options)})")

        progress("statements under EXPLAIN ANALYZE")
        results.costs = await costs(jk, plan.explain_jobs)

        specs = {c.key: WorkerSpec(s, c) for s in systems for c in s.configurations}
        rows: list[str] = [*DRAINS, *(f"{s}{k}" for s in ("drain", "cycle") for k in CONNECTIONS)]
        drains: dict[str, Drain] = {}
        limits: dict[str, Limit] = {}
        drain_plan = plan.drain_plan()
        for r in range(plan.rounds):
            progress(f"round {r + 1} of {plan.rounds}")
            shift = r * len(rows) // max(1, plan.rounds)
            for key in rows[shift:] + rows[:shift]:  # rotate the order
                if key in specs:
                    one = await drain(specs[key], drain_plan, logs)
                    drains[key] = drains[key] + one if key in drains else one
                else:
                    shape, k = key[:5], int(key[5:])
                    got = await limit(jk.admin, jk.url, shape, k, plan.jobs)
                    limits[key] = limits[key] + got if key in limits else got
        results.drains = [drains[key] for key in DRAINS]
        results.limits = [limits[key] for key in rows if key in limits]
    results.load_end = os.getloadavg()
    results.seconds = time.monotonic() - began
    progress("done")
    return results


# --- the report --------------------------------------------------------------------------------


def _best(drains: Sequence[Drain], system: str) -> Drain:
    return max((d for d in drains if d.system == system), key=lambda d: (d.finished, d.rate))


def verdict(results: Results) -> tuple[list[str], bool]:
    jk, pgq = _best(results.drains, "jobkeeper"), _best(results.drains, "pgqueuer")
    top = max((x for x in results.limits if x.shape == "drain"), key=lambda x: x.rate)
    fraction, peer = jk.rate / top.rate, jk.rate / pgq.rate
    ok_fraction = jk.finished and fraction >= TARGET_FRACTION
    ok_peer = jk.finished and peer >= TARGET_PEER
    lines = [
        f"- jobkeeper's best drain ({jk.spec.label}) {jk.rate:,.0f} jobs/s = **{fraction:.2f}** "
        f"of the limit's best drain ({top.label}, {top.rate:,.0f} jobs/s); target >= "
        f"{TARGET_FRACTION}: {status(ok_fraction)}",
        f"- against pgqueuer's best ({pgq.spec.label}, {pgq.rate:,.0f} jobs/s): "
        f"**{peer:.2f}x**; target >= {TARGET_PEER}x: {status(ok_peer)}",
    ]
    return lines, ok_fraction and ok_peer


def _cost_rows(results: Results) -> list[str]:
    rows = [
        f"| Statement | Jobs | Executor {US}/job | WAL records/job | WAL bytes/job "
        "| Buffers/job | Dirtied/job |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for c in results.costs:
        rows.append(
            f"| {c.statement} | {c.jobs:,} | {c.per_job(c.ms) * 1000:.1f} "
            f"| {c.per_job(c.wal_records):.2f} | {c.per_job(c.wal_bytes):,.0f} "
            f"| {c.per_job(c.hit):.2f} | {c.per_job(c.dirtied):.3f} |"
        )
    return rows


def _rate_rows(results: Results) -> list[str]:
    top = max((x for x in results.limits if x.shape == "drain"), key=lambda x: x.rate)
    rows = [
        f"| Row | Jobs | Seconds | Jobs/s | Of the limit | Client CPU {US}/job "
        f"| Postgres CPU {US}/job |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for d in results.drains:
        label = f"{d.system}: {d.spec.label}" + ("" if d.finished else " (timed out)")
        rows.append(
            f"| {label} | {d.done:,} | {d.seconds:.2f} | **{d.rate:,.0f}** "
            f"| {d.rate / top.rate:.2f} | {d.per_job_us(d.worker_cpu):.0f} "
            f"| {d.per_job_us(d.postgres_cpu):.0f} |"
        )
    for x in results.limits:
        per = 1e6 / max(1, x.jobs)
        rows.append(
            f"| {x.label} | {x.jobs:,} | {x.seconds:.2f} | **{x.rate:,.0f}** "
            f"| {x.rate / top.rate:.2f} | {x.client_cpu * per:.0f} | {x.postgres_cpu * per:.0f} |"
        )
    return rows


def report(
    results: Results, plan: LimitPlan, server: str, quick: bool, figure: str | None
) -> tuple[str, bool]:
    checks, passed = verdict(results)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"### The distance to the limit{' (quick run)' if quick else ''}",
        "",
        f"Run {stamp}, {results.seconds:.0f} s.",
        "",
        *(f"- {line}" for line in machine(server, results.postgres, PACKAGES)),
        f"- {load_average(results.load_start, results.load_end)}",
        "",
        "Method:",
        "",
        f"- The limit: a table made with `CREATE TABLE limit_jobs (LIKE jobs INCLUDING ALL)` "
        "(jobkeeper's columns, defaults, constraints and every index, partial ones included; "
        "its storage parameters, such as the fillfactor, copied after) in "
        f"jobkeeper's scratch database; 1, 2 or 4 asyncpg connections in this process each loop "
        f"over one `UPDATE ... WHERE id IN (SELECT ... WHERE status = 'queued' ORDER BY "
        f"priority DESC, run_after, id LIMIT {BATCH} FOR UPDATE SKIP LOCKED) RETURNING id, "
        "lease_token` (the claim: status, attempts, a lease token, lease expiry, worker, "
        "started_at, version) and one `UPDATE` of those rows to `succeeded` (result, finished_at, "
        "lease cleared, version), checked by token; no event rows, no notifications. *drain*: "
        f"{plan.jobs:,} rows inserted first (untimed), as the drains below; *cycle*: each "
        f"connection inserts {BATCH} rows (one `INSERT ... SELECT FROM unnest`), claims "
        f"{BATCH}, completes them, until {plan.jobs:,} are done. Client CPU = this process; "
        "Postgres CPU = the backends of the database (`/proc/<pid>/stat`).",
        f"- Drains: `bench_throughput.py`'s (its worker processes and adapters), {plan.jobs:,} "
        "no-op jobs per round inserted first. Every row once per round, "
        f"{plan.rounds} round(s), in rotating order; jobs/s = jobs / seconds summed over the "
        "rounds; *of the limit* = jobs/s / the limit's best *drain* row.",
        f"- Per statement: {plan.explain_jobs:,} jobs through each statement under `EXPLAIN "
        "(ANALYZE, BUFFERS, WAL)` on one connection, before the rounds (jobkeeper: the rows "
        f"`submit` writes, in one statement; its claim and completion of {BATCH}, the worker's "
        "statements; the limit's three statements): executor time, WAL records and bytes, "
        "shared buffers touched and dirtied, per job.",
        "",
        "**Drains and the limit, jobs/s**",
        "",
        *_rate_rows(results),
        "",
        "**Postgres's work per job, statement by statement**",
        "",
        *_cost_rows(results),
        "",
        "**Targets**",
        "",
        *checks,
        "",
    ]
    if figure:
        lines += [f"![Drains against the limit]({figure})", ""]
    return "\n".join(lines), passed


def draw(results: Results) -> str:
    """Bars of thousands of jobs/s: every drain and the limit's drain rows (the *cycle* rows,
    which also insert, are in the table only)."""
    from plots import bars

    values: dict[str, float] = {}
    for d in results.drains:
        name = "jk" if d.system == "jobkeeper" else "pgq"
        values[f"{name} {d.spec.config.processes}p"] = d.rate / 1000
    for x in results.limits:
        if x.shape == "drain":
            values[f"limit {x.connections}c"] = x.rate / 1000
    top = max((x for x in results.limits if x.shape == "drain"), key=lambda x: x.rate)
    path = bars(
        "limit",
        "Drain: jobkeeper and pgqueuer against the plain-SQL limit",
        values,
        ylabel="thousand jobs/s",
        target=(f"{TARGET_FRACTION} of the limit", TARGET_FRACTION * top.rate / 1000),
    )
    return f"img/{path.name}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "small counts: a smoke run")
    add_role_arguments(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_role(args)
    plan = QUICK if args.quick else FULL
    with postgres_server() as server, tempfile.TemporaryDirectory(prefix="bench_limit_") as tmp:
        results = asyncio.run(run(server.url, plan, Path(tmp)))
    figure = draw(results) if args.write else None
    section, passed = report(results, plan, server.description, args.quick, figure)
    publish("bench_limit", section, write=args.write)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
