"""The throughput benchmark's scenarios, the same for every system: enqueue only, drain, submit +
work; and jobkeeper's latencies (claim, cancel). Each returns what it measured, unformatted."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from common import nearest_rank
from jobkeeper import JobManager, JobStatus
from systems import PRODUCERS, TENANT, Call, Config, System, WorkerArgs
from systems.jobkeeper import LOOP, STAMP
from throughput.processes import CpuMeter, go, workers

MAX_SUBMITS = 1_000_000  # a bound on the submit + work producers besides their time
POLL = 0.025  # seconds between the parent's "is the queue empty yet?" checks
IDLE_WORKER = Config("idle", "1 process, concurrency 4", 1, WorkerArgs(concurrency=4))
LATENCY_WARM_UP = 10  # untimed claim-latency jobs first


@dataclass(frozen=True, slots=True)
class Plan:
    drain_jobs: int  # per round, for the fast configurations (see Config.share)
    rounds: int  # enqueue and drain rounds, interleaved: every row once per round
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


_BEGAN = time.monotonic()


def progress(message: str) -> None:
    sys.stderr.write(f"[{time.monotonic() - _BEGAN:6.1f} s] {message}\n")


def quantile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of unsorted samples (nan when empty)."""
    return nearest_rank(sorted(samples), q) if samples else math.nan


# --- enqueue only ------------------------------------------------------------------------------


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
    op: Call,
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


async def enqueue(system: System, plan: Plan) -> list[Enqueue]:
    """One round of a system's enqueue rows: its one-job call sequentially and from
    ``PRODUCERS`` tasks, and its batch call (``plan.batch`` jobs per call) sequentially when it
    has one; then its tables are emptied."""
    async with system.producer(plan.batch) as producer:
        name, call = producer.single
        out = [
            await time_calls(
                system.name,
                f"{name}, sequential",
                call,
                plan.enqueue_single // plan.rounds,
                limit_s=plan.enqueue_timeout,
            ),
            await time_calls(
                system.name,
                f"{name}, {PRODUCERS} tasks",
                call,
                plan.enqueue_concurrent // plan.rounds,
                tasks=PRODUCERS,
                limit_s=plan.enqueue_timeout,
            ),
        ]
        if producer.batched is not None:
            name, call = producer.batched
            out.append(
                await time_calls(
                    system.name,
                    f"{name}, sequential",
                    call,
                    plan.enqueue_batched // plan.batch // plan.rounds,
                    per_call=plan.batch,
                    limit_s=plan.enqueue_timeout,
                )
            )
    await system.reset()
    return out


# --- drain -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """One of a system's worker configurations."""

    system: System
    config: Config

    @property
    def label(self) -> str:
        return self.config.label


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


async def drain(
    spec: WorkerSpec,
    plan: Plan,
    logs: Path,
    *,
    jobs: int | None = None,
    profile: Path | None = None,
) -> Drain:
    """Pre-enqueue no-op jobs, start the workers, and time them until none is left."""
    system, config = spec.system, spec.config
    n = plan.drain_jobs // config.share if jobs is None else jobs
    await system.reset()
    await system.preload(n)
    await system.analyze()
    async with workers(
        system.name, config, system.url, logs, drain=True, profile=profile
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
        raise RuntimeError(f"{spec.label}: queue empty but {done} of {n} jobs succeeded")
    progress(f"drain {system.name}, {spec.label}: {done:,} jobs in {seconds:.2f} s")
    return Drain(spec, n, done, seconds, worker_cpu, postgres_cpu, finished, (done / seconds,))


# --- submit + work -----------------------------------------------------------------------------


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


async def mixed(spec: WorkerSpec, producer: tuple[str, Call], plan: Plan, logs: Path) -> Mixed:
    """``PRODUCERS`` tasks submit one job per call as fast as they can while the workers run;
    after a warm-up, completions and submissions are counted over ``plan.mixed_seconds``."""
    system = spec.system
    name, submit = producer
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

    async with workers(system.name, spec.config, system.url, logs) as children:
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
        name,
        t1 - t0,
        sub1 - sub0,
        done1 - done0,
        sub1 - done1,
        worker_cpu,
        producer_cpu,
        postgres_cpu,
    )


# --- jobkeeper latencies -----------------------------------------------------------------------


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


async def latencies(system: System, plan: Plan, logs: Path) -> list[Latency]:
    """An idle jobkeeper worker (one process, concurrency 4, the default); jobs one at a time."""
    await system.reset()
    claim: list[float] = []
    bound: list[float] = []
    cancel: list[float] = []
    misses = 0
    async with (
        await JobManager.connect(system.url) as manager,
        workers(system.name, IDLE_WORKER, system.url, logs) as children,
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
            for i in range(LATENCY_WARM_UP + plan.latency_jobs):
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
                if i >= LATENCY_WARM_UP:
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
