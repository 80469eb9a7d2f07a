"""The throughput benchmark's report section: machine, method, tables and the targets' verdict.
What the numbers mean is written by hand in ``docs/benchmarks.md``, below the section."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from common import LoadAverage, load_average, machine, status
from systems import PRODUCERS, System
from systems.jobkeeper import CONCURRENCY, Step
from throughput.profile import Profile
from throughput.scenarios import (
    LATENCY_WARM_UP,
    POLL,
    Drain,
    Enqueue,
    Latency,
    Mixed,
    Plan,
    quantile,
)

TARGET_CLAIM_P50_MS = 5.0
TARGET_CANCEL_MS = 2_000.0
PACKAGES = ("jobkeeper", "asyncpg", "SQLAlchemy", "pgqueuer", "procrastinate", "psycopg")
US = "\u00b5s"


@dataclass(slots=True)
class Results:
    systems: Sequence[System] = ()
    enqueue: list[Enqueue] = field(default_factory=list)
    drains: list[Drain] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    mixed: list[Mixed] = field(default_factory=list)
    latency: list[Latency] = field(default_factory=list)
    profile: Profile | None = None
    postgres: str = ""
    load_start: LoadAverage = (0.0, 0.0, 0.0)
    load_end: LoadAverage = (0.0, 0.0, 0.0)
    seconds: float = 0.0


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.2f}"


def best(rows: Sequence[Drain], system: str) -> Drain:
    """The configuration of ``system`` with the highest drain rate (finished drains first)."""
    mine = [r for r in rows if r.system == system]
    return max(mine, key=lambda r: (r.finished, r.rate))


def best_mixed(rows: Sequence[Mixed], system: str) -> Mixed:
    return max((r for r in rows if r.system == system), key=lambda r: r.rate)


def verdict(results: Results) -> tuple[list[str], bool]:
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
        f"- Drain: jobkeeper's best ({jk.spec.label}) {jk.rate:,.0f} jobs/s vs pgqueuer's "
        f"best ({pgq.spec.label}) {pgq.rate:,.0f} jobs/s = {jk.rate / pgq.rate:.2f}x; "
        f"target >= 1x: {status(drain_ok)}",
        f"- Submit + work: jobkeeper's best ({mjk.spec.label}) {mjk.rate:,.0f} completed "
        f"jobs/s vs pgqueuer's best ({mpgq.spec.label}) {mpgq.rate:,.0f} = "
        f"{mjk.rate / mpgq.rate:.2f}x; target >= 1x: {status(mixed_ok)}",
        f"- Claim latency p50 = {_ms(claim_p50)} ms (p99 {_ms(quantile(claim.samples_ms, 0.99))} "
        f"ms, {claim.timeouts} lost); target < {TARGET_CLAIM_P50_MS:.0f} ms: {status(claim_ok)}",
        f"- Cancel latency max = {_ms(cancel_max)} ms over {len(cancel.samples_ms)} jobs; "
        f"target < {TARGET_CANCEL_MS:,.0f} ms: {status(cancel_ok)}",
    ]
    return lines, drain_ok and mixed_ok and claim_ok and cancel_ok


def _method(plan: Plan, systems: Sequence[System]) -> list[str]:
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
        "- "
        + " ".join(system.workers_method for system in systems)
        + " jobkeeper and pgqueuer with 1, 2 (one per CPU here) and 4 processes.",
        f"- Worker cycle: from the parent, {plan.cycles} timed cycles (after one untimed) of "
        f"`claim` of {CONCURRENCY} queued jobs then `mark_succeeded` of them, the two calls "
        "`Worker` makes per batch, through `JobManager` (notifications on, with a cache, so "
        "completions return whole rows) and, alternating, through a `Postgres(notify="
        "False)`. CPU = this thread's CPU time during the call (`thread_time_ns`).",
        f"- Submit + work: {PRODUCERS} producer tasks in the parent process submit one job per "
        "call as fast as they can while the workers run (1, 2 and 4 processes, configured as in "
        f"the drain); after {plan.mixed_warmup:.1f} s of warm-up, jobs submitted "
        f"and jobs succeeded are counted over {plan.mixed_seconds:.0f} s. Backlog = submitted - "
        "succeeded at the end. Client CPU = the parent's process time plus the workers' CPU.",
        f"- Claim latency (jobkeeper): one idle worker process (concurrency 4); "
        f"{plan.latency_jobs} jobs (after {LATENCY_WARM_UP} untimed), one at a time, 20 ms apart; "
        "latency = `time.monotonic_ns()` at the start of the handler (returned as the job's "
        "result) - `time.monotonic_ns()` when `submit` returned (CLOCK_MONOTONIC is one clock for "
        "all processes). *Bound* counts from before the `submit` call.",
        f"- Cancel latency (jobkeeper): {plan.cancel_jobs} jobs whose async handler loops on "
        "`ctx.raise_if_cancelled()` + `asyncio.sleep(0.1)`; 150 ms after the job is seen "
        "running, `cancel()`; latency = from `cancel()` returning to a strong read (polled every "
        "2 ms) showing `cancelled`.",
        f"- Profile: one jobkeeper worker process (concurrency {CONCURRENCY}) drains "
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
            f"| {d.system} | {d.spec.label} | {d.done:,}{'' if d.finished else ' (timed out)'} "
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
            f"| {m.system} | {m.producer} | {m.spec.label} | {m.submit_rate:,.0f} "
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
    """The markdown section, and whether every target passed."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (`--quick` smoke run: small counts, not for comparison)" if quick else ""
    load = load_average(results.load_start, results.load_end)
    verdict_lines, passed = verdict(results)
    lines = [
        "### Throughput: jobkeeper vs pgqueuer and procrastinate "
        "(`benchmarks/bench_throughput.py`)",
        "",
        f"Run: {when}{mode}; {results.seconds:.0f} s in all.",
        "",
        "**Machine**",
        "",
        *(f"- {line}" for line in machine(server, results.postgres, PACKAGES)),
        f"- {load}; the machine is shared with other work, and the workers, the parent and "
        "Postgres all share its CPUs",
        "",
        "**Method**",
        "",
        *_method(plan, results.systems),
        "",
        *_tables(results),
        *(_profile_tables(results.profile) if results.profile is not None else []),
        "",
        *verdict_lines,
    ]
    return "\n".join(lines) + "\n", passed
