"""The worker against a real Postgres: claims, retries, exclusivity, cancel, shutdown and leases.

Every test has its own tenant and its own job kinds (the module shares one database, and workers
claim by kind across tenants), runs its workers in-process and always stops them in a ``finally``.
Handlers are steered with events, never with sleeps; state is polled with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import os
import socket
import threading
import time
import traceback
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job, JobEvent, Lease, Progress
from jobkeeper.errors import (
    InvalidRequest,
    JobFinished,
    LifespanFailed,
    PermanentFailure,
    QueueFull,
    Retry,
)
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import data_layer
from jobkeeper.worker import JobContext, TaskRegistry, Worker
from support import eventually, make_worker

DEADLINE = 15.0
STOP_TIMEOUT = 20.0
TERMINAL_EVENTS = {"succeeded", "failed", "cancelled"}


# --- helpers -------------------------------------------------------------------------------------


def new_kind() -> str:
    return f"t.{uuid4().hex[:8]}"


@pytest.fixture
def kind() -> str:
    """A job kind no other test uses, so this test's workers never take another test's jobs."""
    return new_kind()


async def _stop(workers: Sequence[Worker], tasks: Sequence[asyncio.Task[None]]) -> list[str]:
    for worker in workers:
        worker.stop()
        worker.stop()  # a second stop releases at once: tests do not wait for the grace
    problems: list[str] = []
    if not tasks:
        return problems
    _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for task in pending:
        task.cancel()
        problems.append(f"worker {task.get_name()} did not stop within {STOP_TIMEOUT} s")
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task not in pending and not task.cancelled() and task.exception() is not None:
            trace = "".join(traceback.format_exception(task.exception()))
            problems.append(f"worker {task.get_name()} crashed: {trace}")
    return problems


@contextlib.asynccontextmanager
async def running(*workers: Worker) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run ``workers`` in-process; stop them (and check they stopped cleanly) on the way out."""
    tasks = [asyncio.create_task(w.run(), name=f"worker-{w.id}") for w in workers]
    try:
        yield tasks
    except BaseException as failure:
        for problem in await _stop(workers, tasks):
            failure.add_note(problem)  # a crashed worker often explains the failure
        raise
    problems = await _stop(workers, tasks)
    if problems:
        pytest.fail("; ".join(problems))


async def fresh(manager: JobManager, job: Job | UUID, tenant: str) -> Job:
    job_id = job.id if isinstance(job, Job) else job
    return await manager.get(job_id, tenant=tenant, consistency="strong")


async def wait_status(
    manager: JobManager, job: Job, tenant: str, *statuses: JobStatus, within: float = DEADLINE
) -> Job:
    async def reached() -> Job | None:
        current = await fresh(manager, job, tenant)
        return current if current.status in statuses else None

    return await eventually(
        reached, timeout=within, what=f"job {job.id} to become one of {statuses}"
    )


async def wait_all(
    manager: JobManager, jobs: Sequence[Job], tenant: str, *statuses: JobStatus
) -> list[Job]:
    return [await wait_status(manager, job, tenant, *statuses) for job in jobs]


async def history(manager: JobManager, job: Job, tenant: str) -> tuple[JobEvent, ...]:
    return await manager.events(job.id, tenant=tenant)


async def types_of(manager: JobManager, job: Job, tenant: str) -> list[str]:
    return [e.type for e in await history(manager, job, tenant)]


def non_progress(types: Sequence[str]) -> list[str]:
    return [t for t in types if t != "progress"]


async def sql(manager: JobManager, query: str, *params: Any) -> list[Any]:
    async with data_layer(manager).database.connection() as conn:
        return list(await conn.fetch(query, *params))


def run_after_delay(event: JobEvent) -> float:
    """Seconds from an event to the ``run_after`` it scheduled (both from the same ``now()``)."""
    run_after = datetime.fromisoformat(event.data["run_after"])
    return (run_after - event.at).total_seconds()


# --- 1. success ----------------------------------------------------------------------------------


async def test_async_and_sync_handlers_succeed_with_result_and_last_progress(
    job_manager: JobManager, tenant: str
) -> None:
    async_kind, sync_kind = new_kind(), new_kind()
    seen: dict[str, tuple[int, Any, UUID]] = {}
    async_go_on = asyncio.Event()
    sync_go_on = threading.Event()
    tasks = TaskRegistry()

    # Each handler reports, waits until that report is in Postgres, then reports once more and
    # returns at once: that last report is still pending (the interval is long), so it is the
    # completion that must record it.
    @tasks.task(async_kind)
    async def async_handler(ctx: JobContext, payload: Any) -> Any:
        seen["async"] = (ctx.job.attempts, payload, ctx.job.id)
        ctx.progress(0.5, "half")
        await asyncio.wait_for(async_go_on.wait(), DEADLINE)
        ctx.progress(1.0, "async done")
        return {"doubled": payload["n"] * 2}

    @tasks.task(sync_kind)
    def sync_handler(ctx: JobContext, payload: Any) -> Any:
        assert threading.current_thread() is not threading.main_thread()
        seen["sync"] = (ctx.job.attempts, payload, ctx.job.id)
        ctx.progress(0.25, "quarter")
        sync_go_on.wait(DEADLINE)
        ctx.progress(0.9, "sync done")
        return ["ok", payload["n"]]

    async def reported(job: Job, expected: Progress) -> None:
        async def shows_it() -> bool:
            return (await fresh(job_manager, job, tenant)).progress == expected

        await eventually(shows_it, timeout=DEADLINE, what=f"progress {expected} to be written")

    worker = make_worker(job_manager, tasks, kinds=[async_kind, sync_kind], progress_interval=5.0)
    async with running(worker):
        a = await job_manager.submit(tenant, async_kind, {"n": 21})
        s = await job_manager.submit(tenant, sync_kind, {"n": 7})
        await reported(a, Progress(0.5, "half"))
        await reported(s, Progress(0.25, "quarter"))
        async_go_on.set()
        sync_go_on.set()
        a_done, s_done = await wait_all(
            job_manager, [a, s], tenant, JobStatus.SUCCEEDED, JobStatus.FAILED
        )

    assert a_done.status == JobStatus.SUCCEEDED and s_done.status == JobStatus.SUCCEEDED
    assert a_done.result == {"doubled": 42}
    assert list(s_done.result) == ["ok", 7]
    assert a_done.progress == Progress(1.0, "async done")
    assert s_done.progress == Progress(0.9, "sync done")
    assert seen["async"] == (1, {"n": 21}, a.id)
    assert seen["sync"] == (1, {"n": 7}, s.id)
    for done in (a_done, s_done):
        assert done.attempts == 1
        assert done.error is None
        assert done.started_at is not None and done.finished_at is not None
        assert done.created_at <= done.started_at <= done.finished_at
        events = await history(job_manager, done, tenant)
        assert [e.type for e in events] == ["submitted", "claimed", "progress", "succeeded"]
        claimed = events[1]
        assert claimed.data["attempt"] == 1
        assert UUID(claimed.data["worker"]) == worker.id


async def test_last_progress_survives_a_progress_write_that_lands_after_the_completion(
    job_manager: JobManager, tenant: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flushing = threading.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    def report_then_return(ctx: JobContext, payload: Any) -> Any:
        ctx.progress(0.9, "last")
        flushing.wait(DEADLINE)  # the flush has taken the report and is writing it
        return {"ok": True}

    real_report = job_manager.report_progress

    async def slow_report(lease: Lease, progress: Progress) -> Job | None:
        # the write is slow on the wire (a real Postgres write, only later): the completion,
        # sent after it, commits first
        flushing.set()
        end = time.monotonic() + 5.0
        while time.monotonic() < end:
            if (await fresh(job_manager, lease.job.id, tenant)).terminal:
                break
            await asyncio.sleep(0.01)
        return await real_report(lease, progress)

    monkeypatch.setattr(job_manager, "report_progress", slow_report)
    worker = make_worker(job_manager, tasks, kinds=[kind])
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {})
        done = await wait_status(job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED)

    assert done.status == JobStatus.SUCCEEDED and flushing.is_set()
    # the handler's last report before returning must be on the finished job
    assert done.progress == Progress(0.9, "last")


# --- 2. order ------------------------------------------------------------------------------------


async def test_single_slot_runs_jobs_by_priority_then_run_after(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    order: list[str] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def record(ctx: JobContext, payload: Any) -> None:
        order.append(payload["name"])

    base = datetime.now(UTC) - timedelta(minutes=5)
    specs = [
        ("a", 0, base + timedelta(seconds=1)),
        ("b", 5, base + timedelta(seconds=3)),
        ("c", 1, base),
        ("d", 5, base + timedelta(seconds=2)),
        ("e", 3, base + timedelta(seconds=4)),
        ("f", 5, base + timedelta(seconds=2.5)),
    ]
    jobs = [
        await job_manager.submit(tenant, kind, {"name": name}, priority=prio, run_after=when)
        for name, prio, when in specs
    ]
    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=1)
    async with running(worker):
        await wait_all(job_manager, jobs, tenant, JobStatus.SUCCEEDED)

    expected = [name for name, _, _ in sorted(specs, key=lambda s: (-s[1], s[2]))]
    assert expected == ["d", "f", "b", "e", "c", "a"]
    assert order == expected


async def test_job_is_not_claimed_before_its_run_after(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started: dict[str, datetime] = {}
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def record(ctx: JobContext, payload: Any) -> None:
        started[payload["name"]] = datetime.now(UTC)

    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=2)
    async with running(worker):
        run_after = datetime.now(UTC) + timedelta(seconds=1.5)
        later = await job_manager.submit(tenant, kind, {"name": "later"}, run_after=run_after)
        now = await job_manager.submit(tenant, kind, {"name": "now"})
        await wait_status(job_manager, now, tenant, JobStatus.SUCCEEDED)
        waiting = await fresh(job_manager, later, tenant)
        if datetime.now(UTC) < run_after - timedelta(seconds=0.2):  # unless the box crawled
            assert waiting.status == JobStatus.QUEUED
        await wait_status(job_manager, later, tenant, JobStatus.SUCCEEDED)

    assert started["now"] < started["later"]
    assert started["later"] >= run_after
    claimed = [e for e in await history(job_manager, later, tenant) if e.type == "claimed"]
    assert len(claimed) == 1 and claimed[0].at >= run_after


# --- 3. retries and failures ---------------------------------------------------------------------


async def test_failing_handler_is_retried_with_backoff_then_fails(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    calls: list[int] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def always_fails(ctx: JobContext, payload: Any) -> None:
        calls.append(ctx.job.attempts)
        raise RuntimeError(f"boom on attempt {ctx.job.attempts}")

    base, cap = 0.05, 0.2
    worker = make_worker(job_manager, tasks, kinds=[kind], backoff_base=base, backoff_max=cap)
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {}, max_attempts=5)
        done = await wait_status(job_manager, job, tenant, JobStatus.FAILED, JobStatus.SUCCEEDED)

    assert done.status == JobStatus.FAILED
    assert done.attempts == 5 and calls == [1, 2, 3, 4, 5]
    assert done.finished_at is not None
    assert done.error["code"] == "handler_error"
    assert done.error["type"] == "RuntimeError"
    assert done.error["message"] == "boom on attempt 5"
    trace = done.error["traceback"]
    assert trace.startswith("Traceback (most recent call last)")
    assert "always_fails" in trace and "boom on attempt 5" in trace
    assert len(trace) <= 8_100

    events = await history(job_manager, done, tenant)
    assert [e.type for e in events] == [
        "submitted",
        *["claimed", "retried"] * 4,
        "claimed",
        "failed",
    ]
    retried = [e for e in events if e.type == "retried"]
    for attempt, event in enumerate(retried, start=1):
        assert event.data["error"]["code"] == "handler_error"
        ceiling = min(cap, base * 2 ** (attempt - 1))
        delay = run_after_delay(event)
        assert ceiling * 0.5 - 1e-3 <= delay <= ceiling + 1e-3, (attempt, delay)
    # each retry is claimed no earlier than the run_after it was given
    for event, next_claim in zip(
        retried, [e for e in events if e.type == "claimed"][1:], strict=True
    ):
        assert next_claim.at >= datetime.fromisoformat(event.data["run_after"])


async def test_long_traceback_is_bounded(job_manager: JobManager, tenant: str, kind: str) -> None:
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def huge(ctx: JobContext, payload: Any) -> None:
        raise ValueError("x" * 50_000 + " the end")

    worker = make_worker(job_manager, tasks, kinds=[kind])
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {}, max_attempts=1)
        done = await wait_status(job_manager, job, tenant, JobStatus.FAILED, JobStatus.SUCCEEDED)

    assert done.status == JobStatus.FAILED and done.error["code"] == "handler_error"
    trace = done.error["traceback"]
    assert len(trace) <= 8_000 + len("...\n")
    assert trace.startswith("...\n")
    assert trace.rstrip().endswith("the end")  # the tail (the exception itself) is kept


async def test_retry_with_delay_requeues_after_that_delay(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def retry_once(ctx: JobContext, payload: Any) -> Any:
        if ctx.job.attempts == 1:
            raise Retry("not yet", delay=0.3)
        return {"attempt": ctx.job.attempts}

    worker = make_worker(job_manager, tasks, kinds=[kind], backoff_base=5.0, backoff_max=10.0)
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {}, max_attempts=3)
        done = await wait_status(job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED)

    assert done.status == JobStatus.SUCCEEDED and done.result == {"attempt": 2}
    assert done.attempts == 2
    events = await history(job_manager, done, tenant)
    assert [e.type for e in events] == ["submitted", "claimed", "retried", "claimed", "succeeded"]
    retried = events[2]
    assert retried.data["error"]["code"] == "retry_requested"
    assert retried.data["error"]["message"] == "not yet"
    assert run_after_delay(retried) == pytest.approx(0.3, abs=0.005)  # not the 5 s backoff
    assert events[3].at >= datetime.fromisoformat(retried.data["run_after"])


async def test_permanent_failure_fails_at_once(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    calls: list[int] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    def give_up(ctx: JobContext, payload: Any) -> None:
        calls.append(ctx.job.attempts)
        raise PermanentFailure("cannot ever work")

    worker = make_worker(job_manager, tasks, kinds=[kind])
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {}, max_attempts=5)
        done = await wait_status(job_manager, job, tenant, JobStatus.FAILED, JobStatus.SUCCEEDED)

    assert done.status == JobStatus.FAILED and done.attempts == 1 and calls == [1]
    assert done.error["code"] == "permanent_failure"
    assert done.error["message"] == "cannot ever work"
    assert await types_of(job_manager, done, tenant) == ["submitted", "claimed", "failed"]


async def test_a_started_worker_puts_what_lives_at_start_out_of_the_collectors_sight(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    """The worker's ``gc.freeze()``: the long-lived objects of the process are not scanned again
    by the collections its jobs trigger (docs/workers.md)."""
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def noop(ctx: JobContext, payload: Any) -> None:
        return None

    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    worker = make_worker(job_manager, tasks, kinds=[kind])
    try:
        async with running(worker):
            job = await job_manager.submit(tenant, kind, {})
            done = await wait_status(job_manager, job, tenant, JobStatus.SUCCEEDED)
            frozen = gc.get_freeze_count()
    finally:
        gc.unfreeze()
    assert done.status == JobStatus.SUCCEEDED
    assert frozen > 1_000  # modules, classes, the registry: far more than a few objects


@pytest.mark.parametrize("result", [{"x": object()}, float("nan"), {"s": "nul \x00"}])
async def test_non_json_result_fails_with_invalid_result(
    job_manager: JobManager, tenant: str, kind: str, result: Any
) -> None:
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def bad_result(ctx: JobContext, payload: Any) -> Any:
        return result

    worker = make_worker(job_manager, tasks, kinds=[kind])
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {}, max_attempts=3)
        done = await wait_status(job_manager, job, tenant, JobStatus.FAILED, JobStatus.SUCCEEDED)

    assert done.status == JobStatus.FAILED and done.attempts == 1
    assert done.error["code"] == "invalid_result"
    assert done.result is None
    assert await types_of(job_manager, done, tenant) == ["submitted", "claimed", "failed"]


# --- 4. concurrency keys -------------------------------------------------------------------------


async def test_one_concurrency_key_never_runs_twice_at_once_across_workers(
    database_url: str, job_manager: JobManager, tenant: str, kind: str
) -> None:
    intervals: list[tuple[float, float]] = []
    calls: Counter[int] = Counter()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def exclusive(ctx: JobContext, payload: Any) -> None:
        start = time.monotonic()
        calls[payload["n"]] += 1
        await asyncio.sleep(0.02)  # the work: long enough for a second claim to overlap it
        intervals.append((start, time.monotonic()))

    async with contextlib.AsyncExitStack() as stack:
        managers = [
            await stack.enter_async_context(await JobManager.connect(database_url))
            for _ in range(4)
        ]
        workers = [make_worker(m, tasks, kinds=[kind], concurrency=3) for m in managers]
        jobs = [
            await job_manager.submit(tenant, kind, {"n": n}, concurrency_key="the-key")
            for n in range(20)
        ]
        async with running(*workers):
            await wait_all(job_manager, jobs, tenant, JobStatus.SUCCEEDED)

    assert len(intervals) == 20 and sorted(calls) == list(range(20))
    assert set(calls.values()) == {1}
    intervals.sort()
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, "two jobs of one concurrency key overlapped"
    rows = await sql(
        job_manager,
        "SELECT j.id, count(*) FILTER (WHERE e.type = 'succeeded') AS ok,"
        " count(*) FILTER (WHERE e.type = 'claimed') AS claims"
        " FROM jobs j JOIN job_events e ON e.job_id = j.id WHERE j.tenant = $1"
        " GROUP BY j.id",
        tenant,
    )
    assert len(rows) == 20
    assert all(row["ok"] == 1 and row["claims"] == 1 for row in rows)


async def test_different_concurrency_keys_run_in_parallel(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    inside = 0
    all_inside = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def meet(ctx: JobContext, payload: Any) -> None:
        nonlocal inside
        inside += 1
        if inside == 4:
            all_inside.set()
        # only returns once all four run at the same time; fails the job otherwise
        await asyncio.wait_for(all_inside.wait(), DEADLINE)

    def submit(n: int) -> Awaitable[Job]:
        return job_manager.submit(tenant, kind, {}, concurrency_key=f"key-{n}", max_attempts=1)

    # two are claimed in one batch; the other two later, while those already run
    jobs = [await submit(0), await submit(1)]
    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=4)
    async with running(worker):
        await wait_all(job_manager, jobs, tenant, JobStatus.RUNNING)
        for n in (2, 3):
            jobs.append(await submit(n))
            # the fourth completes the meeting, so it may finish before a poll sees it running
            await wait_status(
                job_manager,
                jobs[-1],
                tenant,
                JobStatus.RUNNING,
                JobStatus.SUCCEEDED,
                JobStatus.FAILED,
            )
        done = await wait_all(job_manager, jobs, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED)

    assert [j.status for j in done] == [JobStatus.SUCCEEDED] * 4


# --- 5. exactly once -----------------------------------------------------------------------------


async def test_three_workers_run_three_hundred_jobs_exactly_once(
    database_url: str, job_manager: JobManager, tenant: str, kind: str
) -> None:
    calls: Counter[int] = Counter()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def noop(ctx: JobContext, payload: Any) -> None:
        calls[payload["n"]] += 1

    total = 300
    async with contextlib.AsyncExitStack() as stack:
        managers = [
            await stack.enter_async_context(await JobManager.connect(database_url))
            for _ in range(3)
        ]
        workers = [
            make_worker(m, tasks, kinds=[kind], concurrency=10, lease_seconds=10.0)
            for m in managers
        ]
        async with running(*workers):
            for first in range(0, total, 50):
                await asyncio.gather(
                    *(job_manager.submit(tenant, kind, {"n": n}) for n in range(first, first + 50))
                )

            async def all_succeeded() -> bool:
                rows = await sql(
                    job_manager,
                    "SELECT count(*) AS n FROM jobs WHERE tenant = $1 AND status = 'succeeded'",
                    tenant,
                )
                return int(rows[0]["n"]) == total

            await eventually(all_succeeded, timeout=60, what=f"{total} jobs to succeed")

    rows = await sql(
        job_manager,
        "SELECT j.id, j.status,"
        " count(*) FILTER (WHERE e.type = 'succeeded') AS ok,"
        " count(*) FILTER (WHERE e.type = 'claimed') AS claims,"
        " count(*) FILTER (WHERE e.type IN ('failed', 'cancelled')) AS bad"
        " FROM jobs j JOIN job_events e ON e.job_id = j.id WHERE j.tenant = $1"
        " GROUP BY j.id, j.status",
        tenant,
    )
    assert len(rows) == total
    assert all(r["status"] == "succeeded" and r["ok"] == 1 and r["claims"] >= 1 for r in rows)
    assert all(r["bad"] == 0 for r in rows)
    assert sorted(calls) == list(range(total))
    assert all(count >= 1 for count in calls.values())


# --- 6. cancel -----------------------------------------------------------------------------------


async def test_cancel_stops_a_running_async_handler(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def forever(ctx: JobContext, payload: Any) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            saw_cancel.set()
            raise

    worker = make_worker(
        job_manager, tasks, kinds=[kind], lease_seconds=30.0
    )  # no heartbeat needed
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {})
        await asyncio.wait_for(started.wait(), DEADLINE)
        requested = time.monotonic()
        flagged = await job_manager.cancel(job.id, tenant=tenant)
        assert flagged.status == JobStatus.RUNNING and flagged.cancel_requested
        done = await wait_status(job_manager, job, tenant, JobStatus.CANCELLED, within=10.0)
        took = time.monotonic() - requested

        async def slot_freed() -> bool:
            return job.id not in worker.running_jobs

        await eventually(
            slot_freed, timeout=DEADLINE, what="the worker to free the cancelled job's slot"
        )

    assert saw_cancel.is_set()
    assert done.finished_at is not None and done.result is None
    assert took < 10.0  # via the change feed this is milliseconds; the lease here is 30 s
    assert await types_of(job_manager, done, tenant) == [
        "submitted",
        "claimed",
        "cancel_requested",
        "cancelled",
    ]


async def test_cancel_stops_a_sync_handler_that_checks_for_it(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started = threading.Event()
    exited = threading.Event()
    rounds: list[int] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    def crunch(ctx: JobContext, payload: Any) -> Any:
        started.set()
        try:
            end = time.monotonic() + 30  # a bound, so a broken cancel cannot leak the thread
            while time.monotonic() < end:
                ctx.raise_if_cancelled()
                sum(i * i for i in range(20_000))
                rounds.append(1)
                time.sleep(0.05)
            return {"finished": True}
        finally:
            exited.set()

    worker = make_worker(job_manager, tasks, kinds=[kind])
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {})
        await eventually(started.is_set, timeout=DEADLINE, what="the sync handler to start")
        await job_manager.cancel(job.id, tenant=tenant)
        done = await wait_status(job_manager, job, tenant, JobStatus.CANCELLED, within=10.0)
        await eventually(exited.is_set, timeout=DEADLINE, what="the handler's thread to stop")

    assert done.result is None
    assert await types_of(job_manager, done, tenant) == [
        "submitted",
        "claimed",
        "cancel_requested",
        "cancelled",
    ]


async def test_cancel_reaches_the_handler_by_heartbeat_without_the_change_feed(
    database_url: str, job_manager: JobManager, tenant: str, kind: str
) -> None:
    started = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def forever(ctx: JobContext, payload: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    # poll mode with no periodic catch-up: this worker never hears of the cancel request
    async with await JobManager.connect(database_url, feed_mode="poll", feed_interval=3600) as deaf:
        worker = make_worker(deaf, tasks, kinds=[kind], lease_seconds=1.5)
        async with running(worker):
            job = await job_manager.submit(tenant, kind, {})
            await asyncio.wait_for(started.wait(), DEADLINE)
            await job_manager.cancel(job.id, tenant=tenant)
            done = await wait_status(job_manager, job, tenant, JobStatus.CANCELLED, within=10.0)

    assert non_progress(await types_of(job_manager, done, tenant))[-1] == "cancelled"


async def test_cancel_of_a_queued_job_is_immediate_and_it_is_never_claimed(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    ran: list[str] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def record(ctx: JobContext, payload: Any) -> None:
        ran.append(payload["name"])

    doomed = await job_manager.submit(tenant, kind, {"name": "doomed"})
    cancelled = await job_manager.cancel(doomed.id, tenant=tenant)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.finished_at is not None

    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=1)
    async with running(worker):
        marker = await job_manager.submit(tenant, kind, {"name": "marker"})
        await wait_status(job_manager, marker, tenant, JobStatus.SUCCEEDED)

    assert ran == ["marker"]
    assert await types_of(job_manager, doomed, tenant) == ["submitted", "cancelled"]
    assert (await fresh(job_manager, doomed, tenant)).attempts == 0


# --- 7. cancel racing completion -----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_cancel_racing_completion_ends_in_exactly_one_consistent_outcome(
    job_manager: JobManager, tenant: str, kind: str, mode: str
) -> None:
    rounds = 12
    started = [threading.Event() for _ in range(rounds)]
    async_gates = [asyncio.Event() for _ in range(rounds)]
    sync_gates = [threading.Event() for _ in range(rounds)]
    tasks = TaskRegistry()

    if mode == "async":

        @tasks.task(kind)
        async def finish_async(ctx: JobContext, payload: Any) -> Any:
            n = payload["round"]
            started[n].set()
            await asyncio.wait_for(async_gates[n].wait(), DEADLINE)
            return {"round": n}

    else:

        @tasks.task(kind)
        def finish_sync(ctx: JobContext, payload: Any) -> Any:
            n = payload["round"]
            started[n].set()
            sync_gates[n].wait(DEADLINE)
            ctx.raise_if_cancelled()
            return {"round": n}

    def open_gate(n: int) -> None:
        async_gates[n].set()
        sync_gates[n].set()

    async def cancel(job: Job) -> None:
        with contextlib.suppress(JobFinished):  # it may finish first: that is one of the outcomes
            await job_manager.cancel(job.id, tenant=tenant)

    outcomes: Counter[str] = Counter()
    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=2)
    async with running(worker):
        for n in range(rounds):
            job = await job_manager.submit(tenant, kind, {"round": n})
            await eventually(started[n].is_set, timeout=DEADLINE, what=f"round {n} to start")
            variant = n % 4
            if variant == 0:
                open_gate(n)
                await cancel(job)
            elif variant == 1:
                pending = asyncio.create_task(cancel(job))
                open_gate(n)
                await pending
            elif variant == 2:
                await cancel(job)
                open_gate(n)
            else:
                open_gate(n)
                await asyncio.sleep(0)
                await cancel(job)
            done = await wait_status(
                job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.CANCELLED, JobStatus.FAILED
            )
            types = non_progress(await types_of(job_manager, job, tenant))
            terminal = [t for t in types if t in TERMINAL_EVENTS]
            assert terminal == [done.status.value], (n, types)
            assert done.status in (JobStatus.SUCCEEDED, JobStatus.CANCELLED), (n, types)
            assert types.count("claimed") == 1 and "retried" not in types, (n, types)
            assert "released" not in types, (n, types)
            assert done.result == ({"round": n} if done.status == JobStatus.SUCCEEDED else None)
            assert done.finished_at is not None
            outcomes[done.status.value] += 1

    assert sum(outcomes.values()) == rounds


# --- 8. backpressure -----------------------------------------------------------------------------


async def test_queue_limit_admits_exactly_the_limit_under_concurrent_submits(
    database_url: str, job_manager: JobManager, tenant: str, kind: str
) -> None:
    async with await JobManager.connect(database_url, max_queued=20) as limited:
        results = await asyncio.gather(
            *(limited.submit(tenant, kind, {"n": n}, idempotency_key=f"k{n}") for n in range(50)),
            return_exceptions=True,
        )
        admitted = [r for r in results if isinstance(r, Job)]
        refused = [r for r in results if isinstance(r, QueueFull)]
        assert len(admitted) == 20 and len(refused) == 30, results
        for exc in refused:
            assert exc.code == "queue_full" and exc.retry_after > 0 and exc.limit == 20

        rows = await sql(
            job_manager,
            "SELECT (SELECT count(*) FROM jobs WHERE tenant = $1) AS jobs,"
            " (SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id"
            "  WHERE j.tenant = $1) AS events",
            tenant,
        )
        assert (rows[0]["jobs"], rows[0]["events"]) == (20, 20)

        # a replay of an admitted key returns its job even though the queue is full
        first = admitted[0]
        replay = await limited.submit(
            tenant, kind, dict(first.payload), idempotency_key=first.idempotency_key
        )
        assert replay.id == first.id
        # a refused key is still refused
        refused_key = next(
            f"k{n}" for n in range(50) if f"k{n}" not in {j.idempotency_key for j in admitted}
        )
        with pytest.raises(QueueFull):
            await limited.submit(tenant, kind, {"n": -1}, idempotency_key=refused_key)

        # one job leaves the queue: exactly one more is admitted
        await limited.cancel(admitted[1].id, tenant=tenant)
        extra = await limited.submit(tenant, kind, {"extra": 1})
        assert extra.status == JobStatus.QUEUED
        with pytest.raises(QueueFull):
            await limited.submit(tenant, kind, {"extra": 2})

        # another tenant has its own queue
        other = await limited.submit(f"{tenant}-other", kind, {})
        assert other.status == JobStatus.QUEUED


async def test_a_running_job_frees_its_queue_slot(
    database_url: str, tenant: str, kind: str
) -> None:
    release = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def hold(ctx: JobContext, payload: Any) -> None:
        await asyncio.wait_for(release.wait(), DEADLINE)

    async with await JobManager.connect(database_url, max_queued=2) as limited:
        jobs = [await limited.submit(tenant, kind, {"n": n}) for n in range(2)]
        with pytest.raises(QueueFull):
            await limited.submit(tenant, kind, {"n": 2})
        worker = make_worker(limited, tasks, kinds=[kind], concurrency=1)
        async with running(worker):
            await wait_status(limited, jobs[0], tenant, JobStatus.RUNNING)
            third = await limited.submit(tenant, kind, {"n": 2})
            with pytest.raises(QueueFull):
                await limited.submit(tenant, kind, {"n": 3})
            release.set()
            await wait_all(limited, [*jobs, third], tenant, JobStatus.SUCCEEDED)


async def test_per_kind_queue_limit_is_separate_per_kind(
    database_url: str, tenant: str, kind: str
) -> None:
    other_kind = new_kind()
    async with await JobManager.connect(database_url, max_queued_per_kind=3) as limited:
        for n in range(3):
            await limited.submit(tenant, kind, {"n": n})
        with pytest.raises(QueueFull) as refused:
            await limited.submit(tenant, kind, {"n": 3})
        assert refused.value.limit == 3 and kind in refused.value.message
        for n in range(3):
            await limited.submit(tenant, other_kind, {"n": n})
        with pytest.raises(QueueFull):
            await limited.submit(tenant, other_kind, {"n": 3})


async def test_queue_full_reports_the_tenant_limit_that_was_hit(
    database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(
        database_url, max_queued=3, max_queued_per_kind=10
    ) as limited:
        for _ in range(3):
            await limited.submit(tenant, new_kind(), {})
        blocked_kind = new_kind()
        with pytest.raises(QueueFull) as refused:
            await limited.submit(tenant, blocked_kind, {})
    assert refused.value.limit == 3
    assert blocked_kind not in refused.value.message


# --- 9. graceful shutdown ------------------------------------------------------------------------


async def test_shutdown_releases_an_unfinished_job_and_another_worker_runs_it(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    calls = 0
    started = asyncio.Event()
    saw_cancel = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def blocks_first_time(ctx: JobContext, payload: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                saw_cancel.set()
                raise
        return {"run": calls, "attempts": ctx.job.attempts}

    first = make_worker(job_manager, tasks, kinds=[kind], shutdown_grace=0.5)
    async with running(first) as (task,):
        job = await job_manager.submit(tenant, kind, {})
        await asyncio.wait_for(started.wait(), DEADLINE)
        stopped_at = time.monotonic()
        first.stop()
        await asyncio.wait_for(task, STOP_TIMEOUT)
        assert time.monotonic() - stopped_at >= 0.4  # the grace was given

    assert saw_cancel.is_set()
    released = await fresh(job_manager, job, tenant)
    assert released.status == JobStatus.QUEUED
    assert released.attempts == 0 and released.error is None and released.finished_at is None
    assert await types_of(job_manager, job, tenant) == ["submitted", "claimed", "released"]

    second = make_worker(job_manager, tasks, kinds=[kind])
    async with running(second):
        done = await wait_status(job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED)
    assert done.status == JobStatus.SUCCEEDED
    assert done.result == {"run": 2, "attempts": 1} and done.attempts == 1
    events = await history(job_manager, job, tenant)
    assert [e.type for e in events] == [
        "submitted",
        "claimed",
        "released",
        "claimed",
        "succeeded",
    ]
    assert UUID(events[1].data["worker"]) == first.id
    assert UUID(events[3].data["worker"]) == second.id


async def test_a_handler_finishing_within_the_grace_succeeds_after_stop(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started = asyncio.Event()
    proceed = asyncio.Event()
    ran: list[str] = []
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def waits(ctx: JobContext, payload: Any) -> Any:
        ran.append(payload["name"])
        started.set()
        await asyncio.wait_for(proceed.wait(), DEADLINE)
        return {"finished": payload["name"]}

    worker = make_worker(job_manager, tasks, kinds=[kind], shutdown_grace=10.0)
    async with running(worker) as (task,):
        job = await job_manager.submit(tenant, kind, {"name": "first"})
        await asyncio.wait_for(started.wait(), DEADLINE)
        worker.stop()
        assert not task.done()
        proceed.set()
        await asyncio.wait_for(task, STOP_TIMEOUT)

    done = await fresh(job_manager, job, tenant)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"finished": "first"}
    assert await types_of(job_manager, job, tenant) == ["submitted", "claimed", "succeeded"]
    assert ran == ["first"]


async def test_a_second_stop_releases_at_once(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started = asyncio.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def forever(ctx: JobContext, payload: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    worker = make_worker(job_manager, tasks, kinds=[kind], shutdown_grace=600.0)
    async with running(worker) as (task,):
        job = await job_manager.submit(tenant, kind, {})
        await asyncio.wait_for(started.wait(), DEADLINE)
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, STOP_TIMEOUT)  # far less than the 600 s grace

    await assert_released(job_manager, job, tenant)


async def assert_released(manager: JobManager, job: Job, tenant: str) -> None:
    """The job went back to the queue by release: the attempt does not count."""
    released = await fresh(manager, job, tenant)
    assert released.status == JobStatus.QUEUED and released.attempts == 0
    assert await types_of(manager, job, tenant) == ["submitted", "claimed", "released"]


def polling_until_cancelled(
    kind: str,
    started: threading.Event,
    exited: threading.Event,
    proceed: threading.Event | None = None,
) -> TaskRegistry:
    """A sync handler that checks ``ctx.cancelled`` until it is set (at most 30 s), waits for
    ``proceed`` if given, then stops the documented way: ``ctx.raise_if_cancelled()``."""
    tasks = TaskRegistry()

    @tasks.task(kind)
    def polls(ctx: JobContext, payload: Any) -> None:
        started.set()
        try:
            end = time.monotonic() + 30
            while not ctx.cancelled and time.monotonic() < end:
                time.sleep(0.01)
            if proceed is not None:
                proceed.wait(DEADLINE)
            ctx.raise_if_cancelled()
        finally:
            exited.set()

    return tasks


async def test_shutdown_releases_a_sync_job_even_if_it_then_raises_job_cancelled(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    started, proceed, exited = threading.Event(), threading.Event(), threading.Event()
    tasks = polling_until_cancelled(kind, started, exited, proceed)

    worker = make_worker(job_manager, tasks, kinds=[kind], shutdown_grace=0.3)
    async with running(worker) as (task,):
        job = await job_manager.submit(tenant, kind, {})
        await eventually(started.is_set, timeout=DEADLINE, what="the handler to start")
        worker.stop()
        await wait_status(job_manager, job, tenant, JobStatus.QUEUED)
        proceed.set()
        await asyncio.wait_for(task, STOP_TIMEOUT)

    assert exited.is_set()
    await assert_released(job_manager, job, tenant)


async def test_shutdown_never_cancels_a_sync_job_when_the_release_is_slow(
    job_manager: JobManager, database_url: str, tenant: str, kind: str
) -> None:
    """A shutdown stop makes a sync handler raise ``JobCancelled``; that must not be recorded
    as a cancel, even when it reaches Postgres before the release does (or the release fails)."""
    started, exited = threading.Event(), threading.Event()
    tasks = polling_until_cancelled(kind, started, exited)

    async def waiting_queries() -> list[str]:
        rows = await sql(
            job_manager,
            "SELECT query FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        return [row["query"] for row in rows]

    async def release_waits() -> bool:
        return any("WITH given AS" in q for q in await waiting_queries())

    async def release_gave_up() -> bool:
        return not await release_waits()

    # a long lease: no heartbeat or recovery gets in the way during the test
    worker = make_worker(job_manager, tasks, kinds=[kind], shutdown_grace=0.1, lease_seconds=60.0)
    blocker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with running(worker) as (task,):
            job = await job_manager.submit(tenant, kind, {})
            await eventually(started.is_set, timeout=DEADLINE, what="the handler to start")
            # Postgres is slow for this row (a lock stands in for any stall): the release waits
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
            worker.stop()
            await eventually(
                release_waits, timeout=DEADLINE, what="the release to wait for the row"
            )
            await eventually(exited.is_set, timeout=DEADLINE, what="the handler to stop")
            await eventually(release_gave_up, timeout=20.0, what="the release to time out (5 s)")
            await locked.commit()
            await asyncio.wait_for(task, STOP_TIMEOUT)
    finally:
        await blocker.close()

    after = await fresh(job_manager, job, tenant)
    types = await types_of(job_manager, job, tenant)
    # nobody asked to cancel this job: shutdown must leave it to be run again
    assert after.status != JobStatus.CANCELLED, types
    assert "cancelled" not in types


# --- 10. lost leases and fencing -----------------------------------------------------------------


async def test_expired_lease_is_recovered_and_the_old_lease_can_write_nothing(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    job = await job_manager.submit(tenant, kind, {}, max_attempts=3)
    (old,) = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=1.0)
    assert old.job.id == job.id and old.job.attempts == 1

    async def recovered() -> bool:
        await job_manager.recover_expired(backoff_base=0.01, backoff_max=0.02)
        return (await fresh(job_manager, job, tenant)).status == JobStatus.QUEUED

    await eventually(recovered, timeout=DEADLINE, what="the expired lease to be recovered")
    requeued = await fresh(job_manager, job, tenant)
    assert requeued.error["code"] == "lease_expired"
    assert requeued.attempts == 1 and requeued.finished_at is None
    events = await history(job_manager, job, tenant)
    assert [e.type for e in events] == ["submitted", "claimed", "retried"]
    assert events[-1].data["error"]["code"] == "lease_expired"

    async def old_lease_writes_nothing(version: int) -> None:
        assert await job_manager.mark_succeeded([(old, '{"late": true}', None)]) == []
        assert (
            await job_manager.mark_failed(
                old, {"code": "late"}, retryable=True, delay=None, backoff_base=1, backoff_max=1
            )
            is None
        )
        assert await job_manager.report_progress(old, Progress(0.5, "late")) is None
        assert await job_manager.mark_cancelled(old) is None
        assert await job_manager.release([old]) == []
        assert await job_manager.renew_leases([(job.id, old.token)], 30.0) == {}
        assert (await fresh(job_manager, job, tenant)).version == version

    await old_lease_writes_nothing(requeued.version)

    new: list[Any] = []

    async def claimed_again() -> bool:
        new.extend(await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30.0))
        return bool(new)

    await eventually(claimed_again, timeout=DEADLINE, what="the job to be claimable again")
    lease = new[0]
    assert lease.job.id == job.id and lease.token != old.token and lease.job.attempts == 2
    # while the new lease is held, the old one still changes nothing
    await old_lease_writes_nothing(lease.job.version)
    assert await job_manager.renew_leases([(job.id, lease.token)], 30.0) == {job.id: False}
    assert await job_manager.mark_succeeded([(lease, '{"ok": true}', None)]) == [job.id]
    done = await fresh(job_manager, job, tenant)
    assert done.status == JobStatus.SUCCEEDED and done.result == {"ok": True}


async def test_expired_lease_with_no_attempts_left_fails_with_lease_expired(
    job_manager: JobManager, tenant: str, kind: str
) -> None:
    job = await job_manager.submit(tenant, kind, {}, max_attempts=1)
    (lease,) = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=1.0)
    assert lease.job.id == job.id

    async def recovered() -> bool:
        await job_manager.recover_expired(backoff_base=0.01, backoff_max=0.02)
        return (await fresh(job_manager, job, tenant)).status == JobStatus.FAILED

    await eventually(recovered, timeout=DEADLINE, what="the expired lease to fail the job")
    failed = await fresh(job_manager, job, tenant)
    assert failed.error["code"] == "lease_expired" and failed.finished_at is not None
    assert await types_of(job_manager, job, tenant) == ["submitted", "claimed", "failed"]
    assert await job_manager.mark_succeeded([(lease, "{}", None)]) == []


# --- 11. slow but alive --------------------------------------------------------------------------


async def test_a_slow_handler_keeps_its_lease_by_heartbeat(
    database_url: str, job_manager: JobManager, tenant: str, kind: str
) -> None:
    calls = 0
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def slow(ctx: JobContext, payload: Any) -> Any:
        nonlocal calls
        calls += 1
        await asyncio.sleep(3.0)  # the work: three leases long
        return {"slept": 3.0}

    async with await JobManager.connect(database_url) as other_manager:
        owner = make_worker(job_manager, tasks, kinds=[kind], lease_seconds=1.0)
        rival = make_worker(other_manager, tasks, kinds=[kind], lease_seconds=1.0)
        async with running(owner):
            job = await job_manager.submit(tenant, kind, {})
            await wait_status(job_manager, job, tenant, JobStatus.RUNNING)
            async with running(rival):  # claims and recovers all the while
                done = await wait_status(
                    job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED, within=20.0
                )

    assert done.status == JobStatus.SUCCEEDED and done.attempts == 1 and calls == 1
    events = await history(job_manager, job, tenant)
    assert [e.type for e in events] == ["submitted", "claimed", "succeeded"]
    assert UUID(events[1].data["worker"]) == owner.id


# --- 12. progress --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_progress_in_a_tight_loop_is_coalesced(
    job_manager: JobManager, tenant: str, kind: str, mode: str
) -> None:
    tasks = TaskRegistry()
    reports = 1_000

    if mode == "async":

        @tasks.task(kind)
        async def chatty_async(ctx: JobContext, payload: Any) -> None:
            for i in range(reports):
                ctx.progress(i / (reports - 1), f"step {i}")
                if i % 10 == 9:
                    await asyncio.sleep(0.01)

    else:

        @tasks.task(kind)
        def chatty_sync(ctx: JobContext, payload: Any) -> None:
            for i in range(reports):
                ctx.progress(i / (reports - 1), f"step {i}")
                time.sleep(0.001)

    worker = make_worker(job_manager, tasks, kinds=[kind], progress_interval=0.2)
    async with running(worker):
        job = await job_manager.submit(tenant, kind, {})
        done = await wait_status(job_manager, job, tenant, JobStatus.SUCCEEDED, JobStatus.FAILED)

    assert done.status == JobStatus.SUCCEEDED
    assert done.progress == Progress(1.0, f"step {reports - 1}")
    events = await history(job_manager, job, tenant)
    progress = [e for e in events if e.type == "progress"]
    assert 1 <= len(progress) <= 15, len(progress)
    gaps = [(b.at - a.at).total_seconds() for a, b in itertools.pairwise(progress)]
    assert all(gap >= 0.1 for gap in gaps), gaps  # about one write per interval at most


# --- 13. registration ----------------------------------------------------------------------------


async def test_a_running_worker_is_registered_and_gone_after_stop(
    job_manager: JobManager, kind: str
) -> None:
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def nothing(ctx: JobContext, payload: Any) -> None:
        return None

    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=3)

    async def registered() -> bool:
        return any(w.id == worker.id for w in await job_manager.workers.live(60))

    async with running(worker) as (task,):
        await eventually(registered, timeout=DEADLINE, what="the worker to register")
        (info,) = [w for w in await job_manager.workers.live(60) if w.id == worker.id]
        assert info.pid == os.getpid() and info.host == socket.gethostname()
        assert info.kinds == (kind,) and info.concurrency == 3
        assert info.heartbeat_at >= info.started_at
        worker.stop()
        await asyncio.wait_for(task, STOP_TIMEOUT)

    assert not await registered()


async def test_worker_refuses_kinds_without_a_handler_and_bad_settings(
    job_manager: JobManager,
) -> None:
    tasks = TaskRegistry()
    tasks.register("t.known", lambda ctx, payload: None)
    with pytest.raises(InvalidRequest, match="no handler"):
        Worker(job_manager, tasks, kinds=["t.known", "t.unknown"])
    with pytest.raises(InvalidRequest, match="at least 1"):
        Worker(job_manager, tasks, concurrency=0)
    with pytest.raises(InvalidRequest, match="already registered"):
        tasks.register("t.known", lambda ctx, payload: None)


# --- the registry's lifespan ---------------------------------------------------------------------


async def test_the_lifespan_runs_once_around_the_work_and_handlers_get_its_resources(
    job_manager: JobManager, tenant: str
) -> None:
    opened: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[dict[str, int]]:
        opened.append("enter")
        yield {"answer": 42}
        opened.append("exit")

    tasks = TaskRegistry(lifespan=lifespan)
    kind = f"life.{uuid4().hex[:8]}"

    @tasks.task(kind)
    async def use(ctx: JobContext, payload: Any) -> int:
        return int(ctx.resources["answer"]) + int(payload["n"])

    jobs = [await job_manager.submit(tenant, kind, {"n": n}) for n in range(6)]
    worker = make_worker(job_manager, tasks, kinds=[kind], concurrency=3)
    running = asyncio.create_task(worker.run())
    try:

        async def all_done() -> bool:
            current = [
                await job_manager.get(j.id, tenant=tenant, consistency="strong") for j in jobs
            ]
            return all(j.terminal for j in current)

        await eventually(all_done, what="every job to finish")
        assert opened == ["enter"]  # once for the worker, not once per job or slot
    finally:
        worker.stop()
        await running
    assert opened == ["enter", "exit"]
    results = [(await job_manager.get(j.id, tenant=tenant)).result for j in jobs]
    assert results == [42 + n for n in range(6)]


async def test_a_lifespan_that_fails_to_enter_starts_nothing(
    job_manager: JobManager, tenant: str
) -> None:
    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        raise RuntimeError("no engine today")
        yield

    tasks = TaskRegistry(lifespan=lifespan)
    kind = f"life.{uuid4().hex[:8]}"
    tasks.register(kind, lambda ctx, payload: None)
    job = await job_manager.submit(tenant, kind, {})
    worker = make_worker(job_manager, tasks, kinds=[kind])
    with pytest.raises(LifespanFailed, match="no engine today"):
        await worker.run()
    assert all(w.id != worker.id for w in await job_manager.workers.live(60))
    assert (await job_manager.get(job.id, tenant=tenant, consistency="strong")).status == "queued"


def test_a_worker_from_settings_takes_them_and_its_overrides(job_manager: JobManager) -> None:
    from jobkeeper.settings import Settings

    settings = Settings(_env_file=None, worker_concurrency=7, lease_seconds=12)  # type: ignore[call-arg]
    tasks = TaskRegistry()
    tasks.register("life.x", lambda ctx, payload: None)
    worker = Worker.from_settings(settings, tasks, jobs=job_manager, kinds=["life.x"])
    assert (worker._concurrency, worker._lease_seconds) == (7, 12.0)
    assert Worker.from_settings(settings, tasks, jobs=job_manager, concurrency=2)._concurrency == 2
