"""Live watchers benchmark: what ONE ``jobkeeper serve`` process holds with 2,000 Server-Sent Events
streams (``GET /jobs/{id}/events``) over 200 jobs that change 200 times a second, and the same
with ``JobManager.watch()`` in a library process. Targets: delivery p99 < 100 ms from commit, no
query per watcher per change, nothing left behind when the watchers leave.

Method. A scratch database gets 200 running jobs (claimed by this process, which holds their
leases). The server is ``jobkeeper serve`` with its defaults, one process. The clients are ONE
other process (this file as ``--role clients``): plain asyncio sockets, one HTTP/1.1 connection
per stream, parsing only the ``data:`` lines (httpx would cost the load process more than the
server), on uvloop when it is installed. Stream ``i`` watches job ``i mod 200``. This process is
the writer: it reports progress on the jobs in turn at a fixed rate, each report's message
being ``time.time()`` taken just before the write, so a delivery's latency (receive time minus
that stamp, one host's clock) includes the write's own round trip and commit: an upper bound of
"from commit". Each round: connect every stream (each reads its history once), sample the
server, write for the measured window, stop, hang every stream up, wait until the server counts
no watcher and no more asyncio tasks than before, sample again. The library rounds are the same
with this file as ``--role library`` (one process, one ``JobManager``, each ``watch()`` iterator
in a task of its own), and the two take turns, three rounds each: the server's RSS across its
rounds shows whether anything stays behind, and the library's latency in the neighbouring round
is the floor of the machine at the time (the same writer and notifications, no HTTP). Server
samples are ``/metrics`` (``jobkeeper_watchers``, ``jobkeeper_asyncio_tasks``,
``jobkeeper_watch_reads_total``), its RSS (``/proc``) and its CPU time; Postgres transactions of
the database come from ``pg_stat_database.xact_commit``, compared with a window of the writer
alone.

    .venv/bin/python benchmarks/bench_watchers.py            # print the markdown report
    .venv/bin/python benchmarks/bench_watchers.py --write    # ... and update docs/benchmarks.md
    .venv/bin/python benchmarks/bench_watchers.py --quick    # smoke run: 200 watchers, 20 jobs

Exits with status 1 when a target is missed or an event went missing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import asyncpg
import httpx

from bench_http import ApiServer, create_key, start_api, stop_process
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
from jobkeeper.domain.values import Lease, Progress
from jobkeeper.manager import JobManager
from systems.jobkeeper import asyncpg_dsn

SCRIPT = str(Path(__file__).resolve())
TENANT = "bench"  # the tenant of bench_http's create_key
KIND = "bench.watch"
TARGET_P99_MS = 100.0
LINE_TIMEOUT_S = 180.0  # the longest a watcher process may take to answer a command
SETTLE_S = 30.0  # how long the server may take to drop every watcher after the hang-ups
QUANTILES = [q / 200 for q in range(1, 201)]  # the latency distribution a process reports


@dataclass(frozen=True, slots=True)
class Plan:
    jobs: int
    watchers: int
    rate: float  # changes per second, over all jobs
    seconds: float  # the measured window
    rounds: int


FULL = Plan(jobs=200, watchers=2000, rate=200.0, seconds=20.0, rounds=3)
QUICK = Plan(jobs=20, watchers=200, rate=50.0, seconds=4.0, rounds=1)


# --- the watcher processes ---------------------------------------------------------------------


class Latencies:
    """Delivery latencies of progress events stamped after ``since``."""

    def __init__(self) -> None:
        self.since = float("inf")
        self.values: list[float] = []
        self.events = 0  # every event received, history included

    def seen(self, event_type: str, data: Mapping[str, Any], received: float) -> None:
        self.events += 1
        if event_type == "progress":
            stamp = float(data["message"])
            if stamp >= self.since:
                self.values.append(received - stamp)

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.values)
        return {
            "count": len(ordered),
            "quantiles": [nearest_rank(ordered, q) for q in QUANTILES] if ordered else [],
        }


async def _commands() -> Any:
    """The orchestrator's commands, one a line on stdin."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        yield line.strip()


def _say(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


async def _sse(
    host: str, port: int, key: str, job_id: str, latencies: Latencies, started: list[int]
) -> None:
    """One stream: an HTTP/1.1 request, then its ``data:`` lines as they arrive (each SSE event
    is one chunk of the chunked body, so a data line is never split by the chunk framing)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET /jobs/{job_id}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"stream refused: {head[:200]!r}")
        first, buffer = True, b""
        while chunk := await reader.read(65536):
            received = time.time()
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    latencies.seen(event["type"], event["data"], received)
                    if first:
                        first = False
                        started[0] += 1
    finally:
        writer.close()


async def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def clients_main(args: Sequence[Any]) -> None:
    """``--role clients``: hold the streams; READY, then GO (measure), STOP (report), CLOSE."""
    host, port, key, job_ids, count = args
    latencies, started = Latencies(), [0]
    began = time.monotonic()
    streams: list[asyncio.Task[None]] = []

    def connected() -> bool:
        return started[0] >= len(streams) or any(s.done() for s in streams)

    for batch in range(0, count, 100):  # not all at once: the listen backlog is finite
        streams.extend(
            asyncio.create_task(
                _sse(host, port, key, job_ids[i % len(job_ids)], latencies, started)
            )
            for i in range(batch, min(count, batch + 100))
        )
        await _until(connected, 60, "the streams' history")
    failed = [s for s in streams if s.done()]
    if failed:
        raise RuntimeError(f"{len(failed)} streams ended early: {failed[0].exception()!r}")
    _say(f"READY {time.monotonic() - began:.2f}")
    await _serve_commands(latencies, lambda: sum(not s.done() for s in streams), streams)


async def _serve_commands(
    latencies: Latencies, alive: Any, tasks: list[asyncio.Task[None]], extra: Any = None
) -> None:
    async for command in _commands():
        if command.startswith("GO "):  # with the time the writer starts at
            latencies.since = float(command.split()[1])
        elif command == "STOP":
            _say(json.dumps({**latencies.summary(), "alive": alive(), "events": latencies.events}))
        elif command == "CLOSE":
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            _say(json.dumps(await extra() if extra else {}))
            return


def _rss(pid: int) -> int:
    """Resident set size of process ``pid`` in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def library_main(args: Sequence[Any]) -> None:
    """``--role library``: ``count`` watch() iterators on one JobManager, as the clients do."""
    url, job_ids, count = args
    async with await JobManager.connect(url) as manager:
        rss_before, tasks_before = _rss(os.getpid()), len(asyncio.all_tasks())
        reads_before = manager.watch_stats().reads
        latencies, started = Latencies(), [0]

        async def watch(job_id: str) -> None:
            first = True
            async for event in manager.watch(job_id, tenant=TENANT):
                latencies.seen(event.type, event.data, time.time())
                if first:
                    first = False
                    started[0] += 1

        began = time.monotonic()
        tasks = [asyncio.create_task(watch(job_ids[i % len(job_ids)])) for i in range(count)]
        await _until(lambda: started[0] >= count, 120, "the watchers' history")
        _say(f"READY {time.monotonic() - began:.2f}")
        rss_with, tasks_with = _rss(os.getpid()), len(asyncio.all_tasks())

        async def after() -> dict[str, Any]:
            await _until(lambda: manager.watch_stats().watchers == 0, SETTLE_S, "no watcher")
            await _until(
                lambda: len(asyncio.all_tasks()) <= tasks_before, SETTLE_S, "the tasks to end"
            )
            stats = manager.watch_stats()
            return {
                "rss": [rss_before, rss_with, _rss(os.getpid())],
                "tasks": [tasks_before, tasks_with, len(asyncio.all_tasks())],
                "reads": stats.reads - reads_before,
                "gaps": stats.gaps,
            }

        await _serve_commands(latencies, lambda: sum(not t.done() for t in tasks), tasks, after)


# --- the orchestrator --------------------------------------------------------------------------


@dataclass
class Sample:
    rss: int
    tasks: float
    watchers: float
    reads: float
    gaps: float


@dataclass
class Round:
    mode: str  # "SSE" or "watch()"
    connect_s: float
    before: Sample
    with_: Sample
    after: Sample
    quantiles: list[float]  # latency seconds at QUANTILES
    delivered: int
    expected: int
    changes: int
    seconds: float
    xacts: int  # committed transactions in the database during the window
    reads: float  # fan-out reads of the watching process during the window
    cpu_s: float  # the watching process's CPU during the window


async def _metrics(http: httpx.AsyncClient) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        if line.startswith("jobkeeper_") and "{" not in line:
            name, value = line.split()
            found[name] = float(value)
    return found


async def _server_sample(http: httpx.AsyncClient, pid: int) -> Sample:
    m = await _metrics(http)
    return Sample(
        _rss(pid),
        m["jobkeeper_asyncio_tasks"],
        m["jobkeeper_watchers"],
        m["jobkeeper_watch_reads_total"],
        m["jobkeeper_watch_gaps_total"],
    )


async def _xacts(admin: asyncpg.Connection, database: str) -> int:
    """Transactions committed in ``database`` so far (its row appears once a backend there has
    flushed its statistics, within about a second of its first transaction)."""
    for _ in range(100):
        await admin.execute("SELECT pg_stat_clear_snapshot()")
        value = await admin.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", database
        )
        if value is not None:
            return int(value)
        await asyncio.sleep(0.1)
    raise RuntimeError(f"no statistics for database {database}")


async def _write(manager: JobManager, leases: Sequence[Lease], rate: float, seconds: float) -> int:
    """Progress reports on the jobs in turn, ``rate`` a second for ``seconds``; each message is
    the time just before its write. At most 16 in flight; returns how many were written."""
    loop = asyncio.get_running_loop()
    start, written = loop.time(), 0
    slots = asyncio.Semaphore(16)
    pending: set[asyncio.Task[Any]] = set()

    async def one(lease: Lease) -> None:
        async with slots:
            await manager.report_progress(lease, Progress(message=f"{time.time():.6f}"))

    while (elapsed := loop.time() - start) < seconds:
        while written < int(elapsed * rate):
            task = asyncio.create_task(one(leases[written % len(leases)]))
            pending.add(task)
            task.add_done_callback(pending.discard)
            written += 1
        await asyncio.sleep(0.005)
    await asyncio.gather(*pending)
    return written


class Child:
    """A watcher process driven by lines on its stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, role: str, payload: Sequence[Any]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            SCRIPT,
            "--role",
            role,
            "--role-args",
            json.dumps(payload),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        return cls(proc)

    async def line(self) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(LINE_TIMEOUT_S):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"watcher process exited ({await self.proc.wait()})")
        return raw.decode().strip()

    async def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()


@dataclass(frozen=True, slots=True)
class Rig:
    """What every round uses: the plan, the writer (its manager and the jobs' leases), the
    scratch database (its URL and name) and a connection for its statistics."""

    plan: Plan
    url: str
    database: str
    admin: asyncpg.Connection
    manager: JobManager
    leases: Sequence[Lease]

    @property
    def job_ids(self) -> list[str]:
        return [str(lease.job.id) for lease in self.leases]

    async def write(self) -> int:
        return await _write(self.manager, self.leases, self.plan.rate, self.plan.seconds)

    async def xacts(self) -> int:
        return await _xacts(self.admin, self.database)


async def _measure(
    rig: Rig, child: Child, sample: Any, pid: int
) -> tuple[dict[str, Any], int, int, float, float, float]:
    """The measured window: GO, write, let the last deliveries arrive, STOP."""
    await asyncio.sleep(1.0)  # the connect's reads and writes settle
    xacts, before, cpu = await rig.xacts(), await sample(), proc_cpu(pid)
    began = time.monotonic()
    await child.send(f"GO {time.time():.6f}")
    changes = await rig.write()
    await asyncio.sleep(1.0)  # deliveries still in flight
    await child.send("STOP")
    report = json.loads(await child.line())
    seconds = time.monotonic() - began
    cpu = proc_cpu(pid) - cpu
    after = await sample()
    return report, changes, await rig.xacts() - xacts, after - before, cpu, seconds


async def _writer_alone(rig: Rig) -> float:
    """The database's commits per second while the writer writes and nobody watches."""
    before, began = await rig.xacts(), time.monotonic()
    await rig.write()
    await asyncio.sleep(1.0)  # as in a measured window
    return (await rig.xacts() - before) / (time.monotonic() - began)


async def _sse_round(rig: Rig, server: ApiServer, key: str) -> Round:
    pid, plan = server.proc.pid, rig.plan
    host, _, port = server.base.removeprefix("http://").partition(":")
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.base, timeout=30, headers=headers) as http:
        # a first stream starts sse-starlette's one shutdown-watcher task of the process, which
        # stays: open and finish one before the baseline
        done = (await http.post("/jobs", json={"kind": "bench.warm-up"})).json()
        await http.post(f"/jobs/{done['id']}/cancel")
        async with http.stream("GET", f"/jobs/{done['id']}/events") as stream:
            await stream.aread()
        before = await _server_sample(http, pid)
        child = await Child.start("clients", [host, int(port), key, rig.job_ids, plan.watchers])
        try:
            connect_s = float((await child.line()).split()[1])
            with_ = await _server_sample(http, pid)

            async def reads() -> float:
                return (await _server_sample(http, pid)).reads

            report, changes, xacts, read_count, cpu, seconds = await _measure(
                rig, child, reads, pid
            )
            with_.rss = max(with_.rss, _rss(pid))
            await child.send("CLOSE")
            await child.line()
            await child.proc.wait()
        finally:
            await stop_process(child.proc, grace=1.0)
        deadline = time.monotonic() + SETTLE_S
        while True:
            after = await _server_sample(http, pid)
            if after.watchers == 0 and after.tasks <= before.tasks:
                break
            if time.monotonic() > deadline:
                break  # reported as it is: the round then shows what stayed behind
            await asyncio.sleep(0.2)
    expected = changes * plan.watchers // plan.jobs
    return Round(
        "SSE", connect_s, before, with_, after, report["quantiles"], report["count"], expected,
        changes, seconds, xacts, read_count, cpu,
    )  # fmt: skip


async def _library_round(rig: Rig) -> Round:
    plan = rig.plan
    child = await Child.start("library", [rig.url, rig.job_ids, plan.watchers])
    try:
        connect_s = float((await child.line()).split()[1])

        async def nothing() -> float:
            return 0.0

        report, changes, xacts, _, cpu, seconds = await _measure(
            rig, child, nothing, child.proc.pid
        )
        await child.send("CLOSE")
        state = json.loads(await child.line())
        await child.proc.wait()
    finally:
        await stop_process(child.proc, grace=1.0)
    rss, tasks = state["rss"], state["tasks"]
    return Round(
        "watch()",
        connect_s,
        Sample(rss[0], tasks[0], 0, 0, 0),
        Sample(rss[1], tasks[1], plan.watchers, 0, 0),
        Sample(rss[2], tasks[2], 0, state["reads"], state["gaps"]),
        report["quantiles"],
        report["count"],
        changes * plan.watchers // plan.jobs,
        changes,
        seconds,
        xacts,
        state["reads"],
        cpu,
    )


@dataclass(frozen=True, slots=True)
class Results:
    rounds: list[Round]
    alone: float  # the database's commits per second with the writer alone
    load: str
    postgres: str
    date: str


async def run(server_url: str, plan: Plan) -> Results:
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_watchers_") as tmp:
        workdir = Path(tmp)
        async with scratch(server_url, "watchers") as url:
            admin = await asyncpg.connect(asyncpg_dsn(server_url))
            try:
                async with await JobManager.connect(url) as manager:
                    for _ in range(plan.jobs):
                        await manager.submit(TENANT, KIND, {})
                    leases = await manager.claim(
                        uuid4(), kinds=[KIND], limit=plan.jobs, lease_seconds=3600
                    )
                    database = urlsplit(url).path.lstrip("/")
                    rig = Rig(plan, url, database, admin, manager, leases)
                    postgres = str(await admin.fetchval("SHOW server_version"))
                    key = await create_key(url, workdir)
                    server = await start_api(url, workdir)
                    rounds: list[Round] = []
                    try:
                        sys.stderr.write("the writer alone (no watcher)\n")
                        alone = await _writer_alone(rig)
                        for n in range(plan.rounds):  # ABAB: SSE, watch(), SSE, watch(), ...
                            sys.stderr.write(f"round {n + 1}: {plan.watchers} SSE streams\n")
                            rounds.append(await _sse_round(rig, server, key))
                            sys.stderr.write(f"round {n + 1}: {plan.watchers} watch()\n")
                            rounds.append(await _library_round(rig))
                    finally:
                        await stop_process(server.proc)
            finally:
                await admin.close()
    return Results(
        rounds,
        alone,
        load_average(load_before, os.getloadavg()),
        postgres,
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


# --- the report --------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _mib(size: float) -> str:
    return f"{size / 2**20:.1f}"


def _label(n: int, r: Round) -> str:
    """Round ``n`` (from 1) of the run, SSE and watch() taking turns."""
    return f"{(n + 1) // 2}: {r.mode}"


def _quantile(r: Round, q: float) -> float:
    return r.quantiles[min(len(r.quantiles), max(1, round(q * 200))) - 1] if r.quantiles else 0.0


def report(plan: Plan, results: Results, server: str, quick: bool) -> tuple[str, bool]:
    rounds = results.rounds
    ok = all(r.quantiles for r in rounds)
    lines = [
        f"Run: {results.date}{' (quick: smoke run, not for comparison)' if quick else ''}.",
        "",
        *(
            f"- {line}"
            for line in machine(
                server, f"{results.postgres}", ("asyncpg", "uvicorn", "sse-starlette")
            )
        ),
        f"- {results.load}",
        "",
        f"Method: {plan.jobs} running jobs; {plan.watchers} watchers, watcher i on job i mod "
        f"{plan.jobs}; a writer in another process reports progress on the jobs in turn at "
        f"{plan.rate:.0f} changes/s for {plan.seconds:.0f} s per round (each job changes "
        f"{plan.rate / plan.jobs:g} times a second, each change goes to "
        f"{plan.watchers // plan.jobs} watchers). **SSE**: one `jobkeeper serve` process "
        "(defaults: one uvicorn worker, uvloop and httptools), the streams held by one client "
        "process of plain asyncio sockets on uvloop. **watch()**: one library process (asyncio "
        "loop), one `JobManager`, each iterator in a task. "
        "Latency = receive time - a stamp taken just before the write (so it includes the "
        "write's commit). Rounds are consecutive in one run: connect all, measure, hang up, "
        "wait until no watcher and no extra task is left.",
        "",
        "| round | watchers | connect s | delivered / expected | p50 ms | p99 ms | max ms "
        "| CPU µs / delivery | fan-out reads/s | DB commits/s (changes/s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in enumerate(rounds, 1):
        p99 = _quantile(r, 0.99)
        ok = ok and p99 * 1000 < TARGET_P99_MS and r.delivered >= r.expected
        lines.append(
            f"| {_label(n, r)} | {plan.watchers:,} | {r.connect_s:.1f} | {r.delivered:,} / "
            f"{r.expected:,} | {_ms(_quantile(r, 0.5))} | {_ms(p99)} | {_ms(_quantile(r, 1.0))} "
            f"| {r.cpu_s * 1e6 / max(1, r.delivered):.0f} | {r.reads / r.seconds:.1f} | "
            f"{r.xacts / r.seconds:.0f} ({r.changes / r.seconds:.0f}) |"
        )
    lines += [
        "",
        "| round | RSS before MiB | with watchers MiB | after hang-up MiB | KiB / watcher "
        "| tasks before / with / after | watchers after | gaps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n, r in enumerate(rounds, 1):
        per = (r.with_.rss - r.before.rss) / plan.watchers / 1024
        left = r.after.watchers != 0 or r.after.tasks > r.before.tasks
        ok = ok and not left
        lines.append(
            f"| {_label(n, r)} | {_mib(r.before.rss)} | {_mib(r.with_.rss)} | {_mib(r.after.rss)} "
            f"| {per:.1f} | {r.before.tasks:.0f} / {r.with_.tasks:.0f} / {r.after.tasks:.0f} "
            f"| {r.after.watchers:.0f} | {r.after.gaps:.0f} |"
        )
    per_watcher = plan.watchers * plan.rate / plan.jobs
    lines += [
        "",
        f"Target p99 < {TARGET_P99_MS:.0f} ms, every event delivered, no watcher or task left: "
        f"**{'met' if ok else 'MISSED'}**. DB commits/s with the writer alone (the server "
        f"up, nobody watching), the same window just before the rounds: {results.alone:.0f}. "
        f"A query per watcher per change would add {per_watcher:,.0f} reads/s; the fan-out "
        "reads at most once per batch of changes (and once per feed interval besides).",
        "",
        "![Delivery latency percentiles](img/bench-watchers.png)",
        "",
    ]
    return "\n".join(lines), ok


def figure(results: Results) -> Path:
    import plots

    shown = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 1.0]
    series: dict[str, tuple[Sequence[float], Sequence[float]]] = {}
    for n, r in enumerate(results.rounds, 1):
        if r.quantiles:
            series[_label(n, r)] = (
                [q * 100 for q in shown],
                [_quantile(r, q) * 1000 for q in shown],
            )
    return plots.lines(
        "watchers",
        f"Delivery latency from commit, per watcher event (target p99 < {TARGET_P99_MS:.0f} ms)",
        series,
        xlabel="percentile",
        ylabel="ms (log)",
        logy=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = arguments(__doc__, "smoke run: 200 watchers over 20 jobs, 4 s")
    parser.add_argument("--role", choices=["main", "clients", "library"], default="main")
    parser.add_argument("--role-args", default="[]", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "clients":
        # the load generator on uvloop when it is there (as the server is): cheaper per event
        run_loop = asyncio.run
        with contextlib.suppress(ImportError):
            import uvloop

            run_loop = uvloop.run
        run_loop(clients_main(json.loads(args.role_args)))
        return 0
    if args.role == "library":
        asyncio.run(library_main(json.loads(args.role_args)))
        return 0
    plan = QUICK if args.quick else FULL
    with postgres_server() as server:
        results = asyncio.run(run(server.url, plan))
    section, ok = report(plan, results, server.description, args.quick)
    if args.write:
        figure(results)
    publish("bench_watchers", section, write=args.write)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
