"""Coherence benchmark: invalidation lag across processes, NOTIFY's cost to writers, replica memory.

One run, one scratch database, real OS processes. The server is ``JOBKEEPER_DATABASE_URL`` when
set (its user must be allowed to ``CREATE DATABASE``), else an embedded Postgres (pgserver); the
scratch database is created, migrated and dropped (``common.scratch``), even on error. Three
phases:

1. **Invalidation lag**: a writer process commits ``repository.progress`` changes on an absolute
   schedule (100 and 1,000 changes/s); two replica processes (``JobManager``, notify mode) record
   when each ``(job, version)`` reaches their change listener. Lag = arrival - commit return, both
   ``time.monotonic_ns()`` (CLOCK_MONOTONIC is one clock for every process on the machine).
2. **Writer throughput**: one process commits changes as fast as it can with
   ``Postgres.create(url, notify=True)`` and ``notify=False``, sequentially and from 4 tasks.
3. **Replica memory**: with 1,000,000 rows in ``jobs``, a replica with a 10,000-entry cache reads
   100,000 random jobs through ``get``; its RSS after connecting and after the reads.

    .venv/bin/python benchmarks/bench_coherence.py            # print the markdown report
    .venv/bin/python benchmarks/bench_coherence.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_coherence.py --quick    # smoke run, small counts

The same file is each child process (``--role replica|writer|throughput|memory``); children import
only jobkeeper, never the harness (importing ``common.py`` and ``systems/jobkeeper.py`` loads
nothing more), so a replica's memory is a replica's. Every loop is bounded in time and count, and
every child is killed on the way out. Exits with status 1 when the lag target is missed or a
change is lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from common import arguments, load_average, machine, nearest_rank, postgres_server, publish, scratch
from jobkeeper import JobManager, Progress
from systems.jobkeeper import (
    CHANNEL,
    Postgres,
    asyncpg_dsn,
    in_schema,
    move_to_running,
    open_repository,
)

SCRIPT = Path(__file__).resolve()
CHILD_URL_ENV = "BENCH_COHERENCE_URL"  # children get the URL here, not on their command line

STREAM_TENANT = "bench-stream"
MEMORY_TENANT = "bench-memory"
STREAM_JOBS = 200
REPLICAS = 2
WRITER_TASKS = 4  # the paced writer's tasks; also the concurrent row of the throughput phase
READ_TASKS = 8
CACHE_SIZE = 10_000
LAG_TARGET_MS = 10.0
TARGET_RATE = 1_000  # the rate the lag target applies to
RATE_TOLERANCE = 0.95  # a run whose writer fell further behind the schedule proves nothing
WARM_UP_CHANGES = 50
SETTLE_S = 1.5  # after the writer stops: more than one catch-up interval (1 s by default)
START_TIMEOUT_S = 60.0
CHILD_GRACE_S = 60.0  # how long past its planned duration a child may take before it is killed
MAX_THROUGHPUT_CHANGES = 200_000  # per timed block; a count bound on top of the time bound
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Plan:
    lag_seconds: float
    rates: tuple[int, ...]
    throughput_seconds: float  # per configuration, split over the rounds
    throughput_rounds: int
    memory_rows: int
    memory_reads: int


FULL = Plan(10.0, (100, TARGET_RATE), 5.0, 5, 1_000_000, 100_000)
QUICK = Plan(5.0, (100, TARGET_RATE), 2.0, 2, 100_000, 20_000)


@dataclass(frozen=True, slots=True)
class ChildArgs:
    """What a child process is told, as JSON on its command line (the URL is in its env)."""

    ids_file: str
    seconds: float = 0.0
    rate: int = 0
    tasks: int = 1
    rounds: int = 1


def rss_mib() -> dict[str, float]:
    """``ru_maxrss`` and, from ``/proc/self/status``, this image's peak (``VmHWM``) and current
    (``VmRSS``) RSS, in MiB.

    Linux carries the pre-``exec`` peak into ``ru_maxrss``: in a child spawned by a big parent it
    starts at the parent's RSS. ``VmHWM`` belongs to the process image alone.
    """
    sizes = {"ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            sizes[name] = int(value.split()[0]) / 1024
    return sizes


# --- the change stream, shared by the paced writer and the throughput phase ------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One ``progress`` call: slot number, committed version, and its times (monotonic ns)."""

    slot: int
    version: int
    due_ns: int
    sent_ns: int
    returned_ns: int


async def stream(
    repo: Postgres,
    ids: Sequence[UUID],
    *,
    tasks: int,
    total: int,
    seconds: float,
    rate: float | None = None,
) -> list[Call]:
    """Commit up to ``total`` progress changes from ``tasks`` tasks, for at most ``seconds``.

    Slot ``i`` writes job ``ids[i % len(ids)]`` from task ``i % tasks``; as ``len(ids)`` is a
    multiple of ``tasks``, each job is written by one task only, so its versions are in order and
    no two tasks wait on one row lock. With a ``rate``, slot ``i`` is due at ``start + i / rate``
    (an absolute schedule: a late slot is sent at once, never skipped); without, as fast as it can.
    """
    if len(ids) % tasks:
        raise ValueError("the number of jobs must be a multiple of the number of tasks")
    start = time.monotonic_ns() + 20_000_000
    deadline = start + int(seconds * 1e9)
    calls: list[Call] = []

    async def task(first: int) -> None:
        for slot in range(first, total, tasks):
            due = start if rate is None else start + int(slot * 1e9 / rate)
            now = time.monotonic_ns()
            if max(now, due) >= deadline:
                return
            if due > now:
                await asyncio.sleep((due - now) / 1e9)
            sent = time.monotonic_ns()
            job = await repo.jobs.progress(ids[slot % len(ids)], STREAM_TENANT, Progress(None, "b"))
            assert job is not None
            calls.append(Call(slot, job.version, due, sent, time.monotonic_ns()))

    await asyncio.gather(*(task(k) for k in range(tasks)))
    return calls


def read_ids(path: str) -> list[UUID]:
    return [UUID(each) for each in json.loads(Path(path).read_text())]


def child_repository(*, notify: bool) -> Postgres:
    return open_repository(os.environ[CHILD_URL_ENV], notify=notify)


# --- child processes -----------------------------------------------------------------------------


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def wait_for_stop(within: float) -> None:
    """Until the parent writes a line on stdin or closes it (it died), at most ``within`` s."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.readline(), within)
    finally:
        transport.close()


async def replica_role(args: ChildArgs) -> dict[str, Any]:
    """Warm the cache with the stream's jobs, then note when each change reaches a listener."""
    heard: list[tuple[UUID, int, int, bool]] = []

    def listener(job_id: UUID, version: int, status: str | None) -> None:
        # subscribed after the manager's own cache listener: the entry is already dropped
        heard.append((job_id, version, time.monotonic_ns(), status is None))

    async with await JobManager.connect(
        os.environ[CHILD_URL_ENV], cache_size=CACHE_SIZE
    ) as manager:
        for job_id in read_ids(args.ids_file):
            await manager.get(job_id, tenant=STREAM_TENANT)
        manager.subscribe(listener)
        emit({"ready": True})
        await wait_for_stop(args.seconds)
        return {
            "heard": [[str(job_id), v, at, catch_up] for job_id, v, at, catch_up in heard],
            "feed": dataclasses.asdict(manager.feed_status()),
        }


async def warm_up(repo: Postgres, ids: Sequence[UUID]) -> None:
    """Untimed changes first: pool connections opened, statements prepared."""
    await stream(repo, ids, tasks=1, total=WARM_UP_CHANGES, seconds=30.0)


async def writer_role(args: ChildArgs) -> dict[str, Any]:
    """Commit changes at ``args.rate`` per second for ``args.seconds`` (notify on)."""
    ids = read_ids(args.ids_file)
    repo = child_repository(notify=True)
    try:
        await warm_up(repo, ids)
        total = int(args.rate * args.seconds)
        calls = await stream(
            repo, ids, tasks=args.tasks, total=total, seconds=args.seconds + 5.0, rate=args.rate
        )
    finally:
        await repo.close()
    return {
        "commits": [
            [str(ids[c.slot % len(ids)]), c.version, c.sent_ns, c.returned_ns] for c in calls
        ],
        "start_ns": min(c.due_ns for c in calls),
        "slips_ns": sorted(c.sent_ns - c.due_ns for c in calls),
    }


async def throughput_role(args: ChildArgs) -> dict[str, Any]:
    """Sequential and concurrent change streams with notifications on and off, interleaved."""
    ids = read_ids(args.ids_file)
    configs = [(notify, tasks) for tasks in (1, args.tasks) for notify in (True, False)]
    repos = {notify: child_repository(notify=notify) for notify in (True, False)}
    results: dict[str, dict[str, Any]] = {}
    notified = 0
    try:
        for repo in repos.values():
            await warm_up(repo, ids)
        notified += WARM_UP_CHANGES
        for r in range(args.rounds):
            for notify, tasks in configs[r % len(configs) :] + configs[: r % len(configs)]:
                calls = await stream(
                    repos[notify],
                    ids,
                    tasks=tasks,
                    total=MAX_THROUGHPUT_CHANGES,
                    seconds=args.seconds / args.rounds,
                )
                wall = max(c.returned_ns for c in calls) - calls[0].due_ns  # due: the start
                entry = results.setdefault(
                    f"{notify}/{tasks}",
                    {"notify": notify, "tasks": tasks, "wall_ns": 0, "latencies_ns": []},
                )
                entry["wall_ns"] += wall
                entry["latencies_ns"] += [c.returned_ns - c.sent_ns for c in calls]
                notified += len(calls) if notify else 0
    finally:
        for repo in repos.values():
            await repo.close()
    return {"configs": list(results.values()), "notified": notified}


async def memory_role(args: ChildArgs) -> dict[str, Any]:
    """RSS after imports, after connecting, and after ``get`` of every id in the file."""
    stages = {"imported": rss_mib()}
    async with await JobManager.connect(
        os.environ[CHILD_URL_ENV], cache_size=CACHE_SIZE
    ) as manager:
        stages["connected"] = rss_mib()
        # 16 bytes per id: no list of 100,000 objects to weigh on the measurement
        packed = await asyncio.to_thread(Path(args.ids_file).read_bytes)
        pending = iter(range(len(packed) // 16))
        deadline = time.monotonic() + args.seconds
        largest = 0

        async def reader() -> None:
            nonlocal largest
            for i in pending:
                if time.monotonic() > deadline:
                    return
                await manager.get(UUID(bytes=packed[16 * i : 16 * i + 16]), tenant=MEMORY_TENANT)
                if i % 1000 == 0:
                    largest = max(largest, manager.cache_stats().size)

        began = time.monotonic()
        await asyncio.gather(*(reader() for _ in range(args.tasks)))
        elapsed = time.monotonic() - began
        stages["after reads"] = rss_mib()
        stats = manager.cache_stats()
        return {
            "stages": stages,
            "cache": dataclasses.asdict(stats),
            "largest_size": max(largest, stats.size),
            "reads_per_s": (stats.hits + stats.misses) / elapsed,
        }


ROLES = {
    "replica": replica_role,
    "writer": writer_role,
    "throughput": throughput_role,
    "memory": memory_role,
}


def run_child(role: str, config: str) -> int:
    result = asyncio.run(ROLES[role](ChildArgs(**json.loads(config))))
    emit({"result": result})
    return 0


# --- the parent: children ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Child:
    role: str
    proc: asyncio.subprocess.Process

    def _pipes(self) -> tuple[asyncio.StreamWriter, asyncio.StreamReader]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        return self.proc.stdin, self.proc.stdout

    async def ready(self) -> None:
        line = await asyncio.wait_for(self._pipes()[1].readline(), START_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"{self.role} exited before it was ready: {await self.proc.wait()}")

    def stop(self) -> None:
        self._pipes()[0].write(b"stop\n")

    async def result(self, within: float) -> dict[str, Any]:
        out = await asyncio.wait_for(self._pipes()[1].read(), within)
        code = await asyncio.wait_for(self.proc.wait(), within)
        if code != 0 or not out:
            raise RuntimeError(f"{self.role} failed with status {code} (its stderr is above)")
        result: dict[str, Any] = json.loads(out.splitlines()[-1])["result"]
        return result


@asynccontextmanager
async def spawn(role: str, url: str, args: ChildArgs) -> AsyncIterator[Child]:
    """This file run as ``role``; killed on the way out unless it has exited."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "--role",
        role,
        "--config",
        json.dumps(dataclasses.asdict(args)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, CHILD_URL_ENV: url},
    )
    try:
        yield Child(role, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- phase 1: invalidation lag -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LagResult:
    rate: int
    commits: int
    achieved: float
    slip_p99_ms: float
    lags_ms: tuple[float, ...]  # arrival - commit returned, sorted, over both replicas
    bounds_ms: tuple[float, ...]  # arrival - statement sent: an upper bound of the true lag
    missed: tuple[int, ...]  # per replica
    via_catch_up: tuple[int, ...]
    reconnects: tuple[int, ...]


def first_arrivals(heard: Iterable[list[Any]]) -> dict[tuple[str, int], tuple[int, bool]]:
    """The earliest arrival of each ``(job, version)`` and whether a catch-up brought it."""
    first: dict[tuple[str, int], tuple[int, bool]] = {}
    for job_id, version, at, catch_up in heard:
        key = (job_id, version)
        if key not in first or at < first[key][0]:
            first[key] = (at, catch_up)
    return first


def lag_result(rate: int, writer: dict[str, Any], replicas: Sequence[dict[str, Any]]) -> LagResult:
    committed = {
        (job_id, version): (sent, back) for job_id, version, sent, back in writer["commits"]
    }
    lags: list[float] = []
    bounds: list[float] = []
    missed, via_catch_up = [], []
    for replica in replicas:
        first = first_arrivals(replica["heard"])
        seen = [(first[key], times) for key, times in committed.items() if key in first]
        lags += [(arrived - back) / 1e6 for (arrived, _), (_, back) in seen]
        bounds += [(arrived - sent) / 1e6 for (arrived, _), (sent, _) in seen]
        missed.append(len(committed) - len(seen))
        via_catch_up.append(sum(catch_up for (_, catch_up), _ in seen))
    last = max(back for _, back in committed.values())
    return LagResult(
        rate=rate,
        commits=len(committed),
        achieved=len(committed) * 1e9 / (last - writer["start_ns"]),
        slip_p99_ms=nearest_rank(writer["slips_ns"], 0.99) / 1e6,
        lags_ms=tuple(sorted(lags)),
        bounds_ms=tuple(sorted(bounds)),
        missed=tuple(missed),
        via_catch_up=tuple(via_catch_up),
        reconnects=tuple(r["feed"]["reconnects"] for r in replicas),
    )


async def lag_phase(url: str, ids_file: str, rate: int, plan: Plan) -> LagResult:
    sys.stderr.write(f"lag: {REPLICAS} replicas, writer at {rate}/s for {plan.lag_seconds} s\n")
    limit = plan.lag_seconds + SETTLE_S + CHILD_GRACE_S
    async with AsyncExitStack() as stack:
        replica_args = ChildArgs(ids_file, seconds=limit)
        replicas = [
            await stack.enter_async_context(spawn("replica", url, replica_args))
            for _ in range(REPLICAS)
        ]
        for replica in replicas:
            await replica.ready()
        writer_args = ChildArgs(ids_file, seconds=plan.lag_seconds, rate=rate, tasks=WRITER_TASKS)
        writer = await stack.enter_async_context(spawn("writer", url, writer_args))
        written = await writer.result(limit)
        await asyncio.sleep(SETTLE_S)
        for replica in replicas:
            replica.stop()
        heard = [await replica.result(CHILD_GRACE_S) for replica in replicas]
    return lag_result(rate, written, heard)


# --- phase 2: writer throughput ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ThroughputResult:
    notify: bool
    tasks: int
    changes: int
    per_s: float
    p50_ms: float
    p99_ms: float


@asynccontextmanager
async def listening(url: str) -> AsyncIterator[Callable[[], int]]:
    """A LISTEN connection, as a replica would hold; yields a count of the changes announced to
    it (a notification carries every change a process committed meanwhile)."""
    received = 0

    def count(*args: object) -> None:
        nonlocal received
        received += len(json.loads(str(args[-1])))

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.add_listener(CHANNEL, count)
        yield lambda: received
    finally:
        await conn.close()


async def throughput_phase(
    url: str, ids_file: str, plan: Plan
) -> tuple[list[ThroughputResult], int, int]:
    """The results, the changes announced to a listener, and how many it should have heard."""
    sys.stderr.write(f"throughput: 4 configurations x {plan.throughput_seconds} s\n")
    args = ChildArgs(
        ids_file,
        seconds=plan.throughput_seconds,
        tasks=WRITER_TASKS,
        rounds=plan.throughput_rounds,
    )
    async with listening(url) as received, spawn("throughput", url, args) as child:
        out = await child.result(4 * plan.throughput_seconds + CHILD_GRACE_S)
        await asyncio.sleep(0.5)  # let the last notifications arrive
        got = received()
    results = []
    for config in out["configs"]:
        latencies = sorted(config["latencies_ns"])
        results.append(
            ThroughputResult(
                notify=config["notify"],
                tasks=config["tasks"],
                changes=len(latencies),
                per_s=len(latencies) * 1e9 / config["wall_ns"],
                p50_ms=nearest_rank(latencies, 0.50) / 1e6,
                p99_ms=nearest_rank(latencies, 0.99) / 1e6,
            )
        )
    results.sort(key=lambda r: (r.tasks, not r.notify))
    return results, got, out["notified"]


# --- phase 3: replica memory ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryResult:
    rows: int
    insert_s: float
    reads: int
    reads_per_s: float
    stages: dict[str, dict[str, float]]
    cache: dict[str, int]
    largest_size: int


# sorted ids: every index takes its entries in order, several times faster than random inserts
BULK_INSERT = in_schema("""
INSERT INTO jobs (id, tenant, kind, payload)
SELECT id, $2, 'bench.k', '{}'::jsonb
FROM (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) AS g ORDER BY id
""")
RANDOM_IDS = in_schema("SELECT id FROM jobs WHERE tenant = $1 ORDER BY random() LIMIT $2")


async def bulk_load(admin: asyncpg.Connection, plan: Plan, ids_file: Path) -> float:
    """Insert the rows, pick the ids to read; returns the insert's duration in seconds."""
    began = time.monotonic()
    await admin.execute(BULK_INSERT, plan.memory_rows, MEMORY_TENANT, timeout=600)
    took = time.monotonic() - began
    await admin.execute("ANALYZE jobs", timeout=600)
    rows = await admin.fetch(RANDOM_IDS, MEMORY_TENANT, plan.memory_reads, timeout=600)
    await asyncio.to_thread(ids_file.write_bytes, b"".join(row["id"].bytes for row in rows))
    return took


async def memory_phase(
    url: str, admin: asyncpg.Connection, plan: Plan, workdir: Path
) -> MemoryResult:
    sys.stderr.write(f"memory: inserting {plan.memory_rows:,} rows\n")
    ids_file = workdir / "memory-ids.bin"
    insert_s = await bulk_load(admin, plan, ids_file)
    sys.stderr.write(f"memory: replica reads {plan.memory_reads:,} random jobs\n")
    args = ChildArgs(str(ids_file), seconds=120.0, tasks=READ_TASKS)
    async with spawn("memory", url, args) as child:
        out = await child.result(args.seconds + CHILD_GRACE_S)
    cache = out["cache"]
    return MemoryResult(
        rows=plan.memory_rows,
        insert_s=insert_s,
        reads=cache["hits"] + cache["misses"],
        reads_per_s=out["reads_per_s"],
        stages=out["stages"],
        cache=cache,
        largest_size=out["largest_size"],
    )


# --- the run -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Results:
    lags: list[LagResult]
    throughput: list[ThroughputResult]
    notifications: tuple[int, int]  # changes announced to the listener, expected
    memory: MemoryResult
    postgres: str
    load: tuple[tuple[float, float, float], tuple[float, float, float]]  # at start, at end


async def seed_stream(url: str, ids_file: Path) -> None:
    """The stream's jobs, submitted and moved to running (progress needs a running job)."""
    async with await JobManager.connect(url) as manager:
        ids = []
        for i in range(STREAM_JOBS):
            job = await manager.submit(STREAM_TENANT, "bench.stream", {"n": i})
            await move_to_running(manager, job.id, STREAM_TENANT)
            ids.append(str(job.id))
    await asyncio.to_thread(ids_file.write_text, json.dumps(ids))


async def run(server_url: str, plan: Plan) -> Results:
    load_before = os.getloadavg()
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(scratch(server_url, "coherence"))
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-coh-")))
        admin = await asyncpg.connect(asyncpg_dsn(url))
        stack.push_async_callback(admin.close)
        ids_file = workdir / "stream-ids.json"
        await seed_stream(url, ids_file)
        lags = [await lag_phase(url, str(ids_file), rate, plan) for rate in plan.rates]
        throughput, received, expected = await throughput_phase(url, str(ids_file), plan)
        memory = await memory_phase(url, admin, plan, workdir)
        postgres = str(await admin.fetchval("SELECT version()"))
    return Results(
        lags, throughput, (received, expected), memory, postgres, (load_before, os.getloadavg())
    )


# --- the report ----------------------------------------------------------------------------------


def status(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def target_lag(results: Results) -> LagResult:
    return next(r for r in results.lags if r.rate == TARGET_RATE)


def checks(results: Results) -> list[tuple[str, bool]]:
    """Each check's sentence and whether it passed; the run fails if any does."""
    lag, m = target_lag(results), results.memory
    p99 = nearest_rank(lag.lags_ms, 0.99)
    lost = sum(sum(r.missed) for r in results.lags)
    received, expected = results.notifications
    return [
        (
            f"Target: invalidation lag p99 < {LAG_TARGET_MS:.0f} ms at {TARGET_RATE:,} changes/s: "
            f"p99 = {p99:,.2f} ms at an achieved {lag.achieved:,.0f} changes/s (at least "
            f"{RATE_TOLERANCE:.0%} of the target rate required)",
            p99 < LAG_TARGET_MS and lag.achieved >= RATE_TOLERANCE * TARGET_RATE,
        ),
        (f"Changes never heard by a replica: {lost} (expected 0)", lost == 0),
        (
            f"Cache bound: largest cache size seen {m.largest_size:,} (limit {CACHE_SIZE:,})",
            m.largest_size <= CACHE_SIZE,
        ),
        (
            f"Changes announced to the throughput phase's listener: {received:,} "
            f"(expected {expected:,}, every change written with notify on)",
            received == expected,
        ),
    ]


def _ms(values: Sequence[float], *qs: float) -> str:
    return " | ".join(f"{nearest_rank(values, q):,.2f}" for q in qs)


def _each(values: Iterable[int]) -> str:
    return " / ".join(f"{v:,}" for v in values)


def lag_table(lags: Sequence[LagResult]) -> list[str]:
    rows = [
        "| Target changes/s | Achieved changes/s | Commits | Writer slip p99 ms "
        "| Lag p50 ms | Lag p99 ms | Lag max ms | Lag min ms | Bound p50 ms | Bound p99 ms "
        "| Missed (per replica) | Heard first by catch-up | Feed reconnects |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in lags:
        rows.append(
            f"| {r.rate:,} | {r.achieved:,.0f} | {r.commits:,} | {r.slip_p99_ms:,.2f} "
            f"| {_ms(r.lags_ms, 0.5, 0.99, 1.0)} | {r.lags_ms[0]:,.2f} "
            f"| {_ms(r.bounds_ms, 0.5, 0.99)} | {_each(r.missed)} | {_each(r.via_catch_up)} "
            f"| {_each(r.reconnects)} |"
        )
    return rows


def throughput_table(results: Sequence[ThroughputResult]) -> list[str]:
    rows = [
        "| Writer | `notify` | Changes | Changes/s | Call p50 ms | Call p99 ms |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for r in results:
        who = "sequential (1 task)" if r.tasks == 1 else f"{r.tasks} concurrent tasks"
        rows.append(
            f"| {who} | `{r.notify}` | {r.changes:,} | {r.per_s:,.0f} "
            f"| {r.p50_ms:,.2f} | {r.p99_ms:,.2f} |"
        )
    return rows


def memory_table(m: MemoryResult) -> list[str]:
    rows = [
        "| Replica process, stage | Peak RSS MiB (`VmHWM`) | Current RSS MiB (`VmRSS`) "
        "| `ru_maxrss` MiB (see method) |",
        "|---|--:|--:|--:|",
    ]
    labels = {
        "imported": "started (jobkeeper imported)",
        "connected": "after `JobManager.connect` only",
        "after reads": f"after {m.reads:,} random `get`s",
    }
    for stage, label in labels.items():
        rss = m.stages[stage]
        rows.append(
            f"| {label} | {rss['VmHWM']:,.1f} | {rss['VmRSS']:,.1f} | {rss['ru_maxrss']:,.1f} |"
        )
    return rows


def notify_cost(results: Sequence[ThroughputResult], tasks: int) -> float:
    """Throughput lost to notifications, as a fraction of the notify-off rate."""
    on, off = (
        next(r for r in results if r.tasks == tasks and r.notify is n) for n in (True, False)
    )
    return 1 - on.per_s / off.per_s


def machine_lines(results: Results, server: str) -> list[str]:
    return [
        *machine(server, results.postgres),
        f"{load_average(*results.load)} (other work may share the machine)",
    ]


def method_lines(plan: Plan, results: Results) -> list[str]:
    m = results.memory
    return [
        "- Real OS processes on one machine: this script (the parent) creates the scratch "
        "database and the data and starts each child as `bench_coherence.py --role ...` with the "
        "same interpreter; children import only jobkeeper. TCP to the server on loopback (a Unix "
        "socket with the embedded server). Every child is killed on the way out.",
        f"- Lag: {STREAM_JOBS} jobs submitted and moved to running. {REPLICAS} replica processes "
        f"each `JobManager.connect(url, cache_size={CACHE_SIZE:,})` (notify mode, catch-up every "
        f"1 s), read all {STREAM_JOBS} jobs into their cache, then `subscribe` a listener. One "
        f"writer process: `Postgres.create(url, notify=True)`, {WARM_UP_CHANGES} untimed "
        f"changes, then `repository.progress` from {WRITER_TASKS} tasks on an absolute schedule: "
        "change *i* is due at start + *i*/rate (a late one is sent at once, never skipped; "
        f"slip = sent - due) and goes to job *i* mod {STREAM_JOBS}, so each job is written by "
        f"one task and its versions arrive in order. {plan.lag_seconds:.0f} s per rate, fresh "
        "replicas per rate. Achieved rate = commits / (last commit - scheduled start).",
        "- Lag of one change = `time.monotonic_ns()` in the replica's listener when the "
        "`(job, version)` arrives (the manager's cache listener runs just before it, so this is "
        "when the replica stops serving the old version) - `time.monotonic_ns()` in the writer "
        "when `progress` returned (the commit is acknowledged; the writer's announcer task then "
        "sends the notification, with whatever else committed meanwhile). CLOCK_MONOTONIC is one "
        "clock for all processes. A lag can still be slightly negative when the announcer runs "
        "before the writing task resumes. *Bound* = arrival - when "
        "the statement was sent, which can only overstate the lag (the commit lies between the "
        "two). Quantiles are nearest-rank over both replicas; the first arrival of each version "
        "counts. Missed = committed versions a replica never heard, by notification or catch-up, "
        f"{SETTLE_S} s after the writer ended.",
        f"- Throughput: one process, `Postgres.create(url, notify=...)` (pool of 10), "
        f"{WARM_UP_CHANGES} untimed changes each, then `progress` as fast as it returns from 1 "
        f"and from {WRITER_TASKS} tasks (each on its own jobs: no row lock is shared) on the same "
        f"{STREAM_JOBS} running jobs; {plan.throughput_seconds:.0f} s per configuration in "
        f"{plan.throughput_rounds} interleaved round(s), rotating order. Changes/s = changes / "
        "wall time. The parent holds a LISTEN connection meanwhile, as a replica would.",
        f"- Memory: {m.rows:,} rows inserted by one `INSERT ... SELECT gen_random_uuid() ... "
        f"FROM generate_series` (ids sorted before insertion) in {m.insert_s:,.1f} s, then "
        f"`ANALYZE`. {plan.memory_reads:,} distinct ids picked with `ORDER BY random()` reach the "
        f"replica as a packed file (16 bytes each, "
        f"~{plan.memory_reads * 16 / MIB:.1f} MiB in the process); it "
        f"`JobManager.connect(url, cache_size={CACHE_SIZE:,})` and reads each id once with `get` "
        f"from {READ_TASKS} tasks (every read a miss that fills the cache and evicts). RSS from "
        "`/proc/self/status`: `VmHWM` (peak) and `VmRSS` (current); cache size sampled every "
        "1,000 reads. `resource.getrusage(RUSAGE_SELF).ru_maxrss` is shown too but is not this "
        "process's own peak: Linux carries the peak RSS of the image before `exec` into it, so "
        "a child spawned by a large parent starts at the parent's RSS.",
    ]


def report(results: Results, plan: Plan, server: str, quick: bool) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = " (`--quick` smoke run: small counts, not for comparison)" if quick else ""
    m = results.memory
    c = m.cache
    lines = [
        "### Coherence: invalidation lag, NOTIFY cost, replica memory "
        "(`benchmarks/bench_coherence.py`)",
        "",
        f"Run: {when}{mode}.",
        "",
        "**Machine**",
        "",
        *(f"- {line}" for line in machine_lines(results, server)),
        "",
        "**Method**",
        "",
        *method_lines(plan, results),
        "",
        "**Invalidation lag, writer process -> 2 replica processes**",
        "",
        *lag_table(results.lags),
        "",
        "**Writer throughput, notifications on vs off**",
        "",
        *throughput_table(results.throughput),
        "",
        f"**Replica memory, {m.rows:,} jobs in the table, cache of {CACHE_SIZE:,}**",
        "",
        *memory_table(m),
        "",
        f"Cache after the reads: size {c['size']:,} of {c['maxsize']:,}, {c['misses']:,} misses, "
        f"{c['hits']:,} hits, {c['evictions']:,} evictions, {c['refused_stores']:,} refused "
        f"stores; {m.reads_per_s:,.0f} reads/s.",
        "",
        *(f"- {line}: {status(ok)}." for line, ok in checks(results)),
        f"- Notifications cost the writer {100 * notify_cost(results.throughput, 1):.0f}% of its "
        f"throughput sequentially and {100 * notify_cost(results.throughput, WRITER_TASKS):.0f}% "
        f"with {WRITER_TASKS} concurrent tasks (1 - changes/s with `notify` on / off).",
    ]
    return "\n".join(lines) + "\n"


# --- entry point ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "small counts: a smoke run")
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.role:
        return run_child(args.role, args.config)
    plan = QUICK if args.quick else FULL
    with postgres_server() as server:
        results = asyncio.run(run(server.url, plan))
    section = report(results, plan, server.description, args.quick)
    publish("bench_coherence", section, write=args.write)
    return 0 if all(ok for _, ok in checks(results)) else 1


if __name__ == "__main__":
    sys.exit(main())
