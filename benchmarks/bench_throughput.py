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

This file runs the scenarios in order; the harness is ``throughput/`` (scenarios, worker
processes, profile, report) and each system is an adapter in ``systems/``, so the same timing
code measures all three. The server is ``JOBKEEPER_DATABASE_URL`` when set (its user must be
allowed to ``CREATE DATABASE``), else an embedded Postgres (pgserver). Worker processes are this
script started with ``--role ...``; every one is killed on the way out. Peers are benchmark-only
extras (``pip install pgqueuer procrastinate``, or ``jobkeeper[bench]``).

    .venv/bin/python benchmarks/bench_throughput.py            # print the markdown report
    .venv/bin/python benchmarks/bench_throughput.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_throughput.py --quick    # smoke run, small counts (< 90 s)

Exits with status 1 when a target is missed (after printing and writing the report).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path

import asyncpg

from common import arguments, postgres_server, publish, scratch
from systems import NAMES, Config, System, WorkerArgs, load
from systems.jobkeeper import CONCURRENCY, Jobkeeper, asyncpg_dsn
from throughput.processes import add_role_arguments, run_role
from throughput.profile import read_profile
from throughput.report import Results, report
from throughput.scenarios import (
    Drain,
    Enqueue,
    Plan,
    WorkerSpec,
    drain,
    enqueue,
    latencies,
    mixed,
    progress,
)

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
MIXED = ("jk1", "jk2uv", "jk4", "pgq1", "pgq2", "pgq4", "proc1")  # submit + work configurations
PROFILED_WORKER = Config(
    "profile",
    f"1 process, concurrency {CONCURRENCY}, under cProfile",
    1,
    WorkerArgs(concurrency=CONCURRENCY),
)


async def run(server_url: str, plan: Plan, logs: Path) -> Results:
    results = Results(load_start=os.getloadavg())
    began = time.monotonic()
    async with AsyncExitStack() as stack:
        systems: list[System] = []
        for name in NAMES:
            url = await stack.enter_async_context(scratch(server_url, name, migrate=False))
            admin = await asyncpg.connect(asyncpg_dsn(url))
            stack.push_async_callback(admin.close)
            system = load(name)(url, admin)
            await stack.enter_async_context(system.installed())
            systems.append(system)
        jk = systems[0]
        assert isinstance(jk, Jobkeeper)
        results.systems = systems
        results.postgres = str(await jk.admin.fetchval("SELECT version()"))

        merged: dict[tuple[str, str], Enqueue] = {}
        for r in range(plan.rounds):
            progress(f"enqueue only, round {r + 1} of {plan.rounds}")
            shift = r % len(systems)
            for system in systems[shift:] + systems[:shift]:  # rotate the order
                for row in await enqueue(system, plan):
                    pair = (row.system, row.method)
                    merged[pair] = merged[pair] + row if pair in merged else row
        results.enqueue = list(merged.values())

        specs = {c.key: WorkerSpec(s, c) for s in systems for c in s.configurations}
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
        results.steps = await jk.worker_cycle(plan.cycles)

        progress("submit + work")
        async with AsyncExitStack() as producers:
            single = {
                s.name: (await producers.enter_async_context(s.producer(plan.batch))).single
                for s in systems
            }
            for key in MIXED:
                spec = specs[key]
                results.mixed.append(await mixed(spec, single[spec.system.name], plan, logs))

        progress("jobkeeper latencies")
        results.latency = await latencies(jk, plan, logs)

        progress("a jobkeeper worker under cProfile")
        stats = logs / "worker.pstats"
        profiled = WorkerSpec(jk, PROFILED_WORKER)
        profiled_run = await drain(profiled, plan, logs, jobs=plan.profile_jobs, profile=stats)
        if stats.exists():
            results.profile = read_profile(stats, profiled_run)
    results.load_end = os.getloadavg()
    results.seconds = time.monotonic() - began
    progress("done")
    return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "small counts: a < 90 s smoke run")
    add_role_arguments(parser)
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
