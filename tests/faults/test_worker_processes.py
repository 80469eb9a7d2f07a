"""Worker processes under faults: real ``jobkeeper`` CLI processes, real Postgres, real signals.

A worker killed with SIGKILL mid-job loses its lease and another worker runs the job again, while
the dead worker's late writes are fenced off; SIGTERM drains for the grace period and then gives
the leases back; a second signal stops at once; CLI mistakes end in one line, never a traceback.

Every wait polls the database (or a worker's log) against a deadline, and every process started
here is killed and awaited when its test ends.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar
from uuid import UUID

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job, JobEvent, Lease, Progress
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import create_database, drop_database
from support import eventually

from .support import (
    DEADLINE,
    JOBKEEPER,
    WorkerProcess,
    Workers,
    exit_code,
    running_on,
)

T = TypeVar("T")

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/postgres"


# --- processes ---------------------------------------------------------------------------------


async def run_cli(*args: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(JOBKEEPER),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


# --- the database, as the test sees it (the db and workers fixtures: conftest.py) ---------------


async def starts(db: asyncpg.Connection, job_id: UUID) -> list[tuple[int, int]]:
    """``(n, pid)`` of every recorded start of the job's handler, in order."""
    rows = await db.fetch("SELECT n, pid FROM fault_starts WHERE job_id = $1 ORDER BY n", job_id)
    return [(r["n"], r["pid"]) for r in rows]


async def worker_id(db: asyncpg.Connection, worker: WorkerProcess) -> str | None:
    value = await db.fetchval("SELECT id FROM workers WHERE pid = $1", worker.pid)
    return None if value is None else str(value)


def finished(jobs: JobManager, job_id: UUID, tenant: str) -> Callable[[], Awaitable[Job | None]]:
    async def check() -> Job | None:
        job = await jobs.get(job_id, tenant=tenant, consistency="strong")
        return job if job.terminal else None

    return check


def lifecycle(events: Sequence[JobEvent]) -> list[str]:
    return [e.type for e in events if e.type != "progress"]


def claimed_by(events: Sequence[JobEvent]) -> list[str]:
    return [str(e.data["worker"]) for e in events if e.type == "claimed"]


async def late_writes_change_nothing(jobs: JobManager, stale: Lease) -> None:
    """Every fenced write with a lease that is no longer held is refused."""
    result = json.dumps({"late": True})
    assert await jobs.mark_succeeded([(stale, result, Progress(1.0, "late"))]) == []
    error = {"code": "late", "message": "written by a worker whose lease is gone"}
    for retryable in (True, False):
        failed = await jobs.mark_failed(
            stale, error, retryable=retryable, delay=None, backoff_base=0.05, backoff_max=0.2
        )
        assert failed is None
    assert await jobs.mark_cancelled(stale) is None
    assert await jobs.report_progress(stale, Progress(0.5, "late")) is None
    assert await jobs.release([stale]) == []
    assert await jobs.renew_leases([(stale.job.id, stale.token)], 60.0) == {}


# --- 1. SIGKILL mid-job ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigkill_mid_job_reruns_it_elsewhere_and_fences_the_dead_worker(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers
) -> None:
    a = await workers.start()
    # the first start would run a minute; the re-run takes 2 s
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [60, 2.0]})
    held = await eventually(
        lambda: running_on(db, job.id, a),
        timeout=DEADLINE,
        what="the job to run on worker A",
        watch=[a],
    )
    old_token: UUID = held["lease_token"]
    a_id = await worker_id(db, a)
    as_claimed = await job_manager.get(job.id, tenant=tenant, consistency="strong")

    os.kill(a.pid, signal.SIGKILL)
    assert await exit_code(a, DEADLINE) == -signal.SIGKILL
    b = await workers.start()
    rerun = await eventually(
        lambda: running_on(db, job.id, b),
        timeout=DEADLINE,
        what="worker B to re-run the job after the lease expired",
        watch=[b],
    )
    assert rerun["lease_token"] != old_token
    assert rerun["attempts"] == 2

    # the dead worker's late writes, while B holds the lease: refused, B's lease untouched
    stale = Lease(as_claimed, old_token)
    await late_writes_change_nothing(job_manager, stale)
    row = await db.fetchrow("SELECT status, lease_token FROM jobs WHERE id = $1", job.id)
    assert (row["status"], row["lease_token"]) == ("running", rerun["lease_token"])

    done = await eventually(
        finished(job_manager, job.id, tenant), timeout=DEADLINE, what="the job to finish", watch=[b]
    )
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result["pid"] == b.pid
    assert done.attempts == 2
    assert await starts(db, job.id) == [(0, a.pid), (1, b.pid)]

    events = await job_manager.events(job.id, tenant=tenant)
    assert lifecycle(events) == ["submitted", "claimed", "retried", "claimed", "succeeded"]
    retried = next(e for e in events if e.type == "retried")
    assert retried.data["error"]["code"] == "lease_expired"
    assert claimed_by(events) == [a_id, await worker_id(db, b)]

    # and after it succeeded: still nothing changes
    await late_writes_change_nothing(job_manager, stale)
    after = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert (after.version, after.status, after.result) == (done.version, done.status, done.result)
    assert len(await job_manager.events(job.id, tenant=tenant)) == len(events)


# --- 2-4. SIGTERM --------------------------------------------------------------------------------


@pytest.mark.timeout(90)
async def test_sigterm_releases_a_long_job_after_the_grace_period(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers
) -> None:
    a = await workers.start(grace=0.5)
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [60, 0.5]})
    await eventually(
        lambda: running_on(db, job.id, a),
        timeout=DEADLINE,
        what="the job to run on worker A",
        watch=[a],
    )

    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert await exit_code(a, 15.0) == 0, a.tail()
    assert time.monotonic() - sent < 10.0
    assert "released 1 leases" in a.output(), a.tail()
    assert await worker_id(db, a) is None, "a stopped worker deregisters"

    released = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert released.status is JobStatus.QUEUED
    assert released.attempts == 0, "a released attempt is not counted"
    assert released.error is None
    assert lifecycle(await job_manager.events(job.id, tenant=tenant)) == [
        "submitted",
        "claimed",
        "released",
    ]

    b = await workers.start()
    done = await eventually(
        finished(job_manager, job.id, tenant),
        timeout=DEADLINE,
        what="worker B to finish the job",
        watch=[b],
    )
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result["pid"] == b.pid
    assert done.attempts == 1
    assert await starts(db, job.id) == [(0, a.pid), (1, b.pid)]
    events = await job_manager.events(job.id, tenant=tenant)
    assert lifecycle(events) == ["submitted", "claimed", "released", "claimed", "succeeded"]

    b.proc.send_signal(signal.SIGTERM)  # an idle worker stops at once
    assert await exit_code(b, 15.0) == 0, b.tail()


@pytest.mark.timeout(60)
async def test_sigterm_lets_a_job_finish_within_the_grace_period(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers
) -> None:
    a = await workers.start(grace=10.0)
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [1.0]})
    await eventually(
        lambda: running_on(db, job.id, a),
        timeout=DEADLINE,
        what="the job to run on worker A",
        watch=[a],
    )

    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert await exit_code(a, 20.0) == 0, a.tail()
    assert time.monotonic() - sent < 10.0, "the worker waited out the whole grace period"

    done = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert done.status is JobStatus.SUCCEEDED, (done.status, done.error, a.tail())
    assert done.result["pid"] == a.pid
    assert done.progress.fraction == pytest.approx(1.0)
    assert lifecycle(await job_manager.events(job.id, tenant=tenant)) == [
        "submitted",
        "claimed",
        "succeeded",
    ]
    assert await starts(db, job.id) == [(0, a.pid)]
    assert "released" not in a.output()


@pytest.mark.timeout(90)
async def test_second_sigterm_stops_at_once(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers
) -> None:
    a = await workers.start(grace=60.0)
    job = await job_manager.submit(tenant, workers.kind("slow"), {"seconds": [120, 0.5]})
    await eventually(
        lambda: running_on(db, job.id, a),
        timeout=DEADLINE,
        what="the job to run on worker A",
        watch=[a],
    )

    a.proc.send_signal(signal.SIGTERM)

    async def draining() -> bool:
        return "waiting up to 60 s for 1 running jobs" in a.output()

    # the first signal must have been handled, or the kernel may merge the two
    await eventually(draining, timeout=DEADLINE, what="worker A to start draining", watch=[a])
    sent = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert await exit_code(a, 15.0) == 0, a.tail()
    assert time.monotonic() - sent < 10.0, "the second signal did not stop the worker at once"

    b = await workers.start()
    done = await eventually(
        finished(job_manager, job.id, tenant),
        timeout=DEADLINE,
        what="worker B to finish the job",
        watch=[b],
    )
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result["pid"] == b.pid
    assert await starts(db, job.id) == [(0, a.pid), (1, b.pid)]
    events = await job_manager.events(job.id, tenant=tenant)
    assert [e.type for e in events].count("succeeded") == 1
    # released at once; if the release had failed, B would have recovered the expired lease
    assert lifecycle(events) in (
        ["submitted", "claimed", "released", "claimed", "succeeded"],
        ["submitted", "claimed", "retried", "claimed", "succeeded"],
    )
    assert claimed_by(events)[-1] == await worker_id(db, b)


# --- 5. CLI mistakes -----------------------------------------------------------------------------


def _cli_env(database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    if database_url is not None:
        env["JOBKEEPER_DATABASE_URL"] = database_url
    return env


def assert_one_line_error(code: int, out: str, err: str, expected_code: int, text: str) -> None:
    assert "Traceback" not in out + err, err
    assert code == expected_code, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert text in lines[0], err


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("target", "url", "code", "text"),
    [
        ("nope", None, 2, "expected MODULE:ATTR"),
        ("jobkeeper.demo:nothing", None, 2, "is not a TaskRegistry"),
        ("jobkeeper.nope:tasks", None, 2, "cannot import"),
        ("jobkeeper.demo:tasks", None, 1, "JOBKEEPER_DATABASE_URL"),
        ("jobkeeper.demo:tasks", UNREACHABLE, 1, "unreachable"),
    ],
    ids=["no-colon", "not-a-registry", "no-module", "no-url", "unreachable"],
)
async def test_cli_mistakes_end_in_one_line(
    tmp_path: Path, target: str, url: str | None, code: int, text: str
) -> None:
    env = {**_cli_env(url), "JOBKEEPER_STARTUP_WAIT": "0"}  # tests/faults/test_startup.py waits
    returned, out, err = await run_cli("worker", target, env=env, cwd=tmp_path)
    assert_one_line_error(returned, out, err, code, text)


@pytest.mark.timeout(60)
async def test_cli_unknown_kind_ends_in_one_line(tmp_path: Path, database_url: str) -> None:
    returned, out, err = await run_cli(
        "worker",
        "jobkeeper.demo:tasks",
        "--kind",
        "no.such.kind",
        env=_cli_env(database_url),
        cwd=tmp_path,
    )
    assert_one_line_error(returned, out, err, 1, "no handler registered")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "setting",
    [("JOBKEEPER_DATABASE_URL", "mysql://localhost/x"), ("JOBKEEPER_LEASE_SECONDS", "soon")],
    ids=["url-scheme", "lease-seconds"],
)
async def test_cli_invalid_setting_ends_in_one_line(
    tmp_path: Path, database_url: str, setting: tuple[str, str]
) -> None:
    env = {**_cli_env(database_url), setting[0]: setting[1]}
    returned, out, err = await run_cli("worker", "jobkeeper.demo:tasks", env=env, cwd=tmp_path)
    assert "Traceback" not in out + err, err[-2000:]
    assert returned in (1, 2)
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err


@pytest.mark.timeout(60)
async def test_cli_unmigrated_database_ends_in_one_line(
    tmp_path: Path, postgres_server_url: str
) -> None:
    name = f"jobkeeper_empty_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        # a missing schema is not waited for, however long the wait for Postgres may be
        env = {**_cli_env(url), "JOBKEEPER_STARTUP_WAIT": "600"}
        returned, out, err = await run_cli("worker", "jobkeeper.demo:tasks", env=env, cwd=tmp_path)
    finally:
        await drop_database(postgres_server_url, name)
    assert "Traceback" not in out + err, err[-2000:]
    assert returned == 1
    assert err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1, err


# --- 6. the demo registry ------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_demo_registry_runs_from_the_cli(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers
) -> None:
    # demo kinds are shared by the whole module database: only this test submits them
    sleeper = await workers.start("--kind", "demo.sleep", target="jobkeeper.demo:tasks")
    cruncher = await workers.start("--kind", "demo.cpu", target="jobkeeper.demo:tasks")
    nap = await job_manager.submit(tenant, "demo.sleep", {"seconds": 0.2, "steps": 2})
    crunch = await job_manager.submit(tenant, "demo.cpu", {"rounds": 3, "size": 1000})
    both = [sleeper, cruncher]

    slept = await eventually(
        finished(job_manager, nap.id, tenant),
        timeout=DEADLINE,
        what="demo.sleep to finish",
        watch=both,
    )
    assert slept.status is JobStatus.SUCCEEDED, slept.error
    assert slept.result == {"slept": 0.2, "steps": 2}
    assert slept.progress.fraction == pytest.approx(1.0)

    crunched = await eventually(
        finished(job_manager, crunch.id, tenant),
        timeout=DEADLINE,
        what="demo.cpu to finish",
        watch=both,
    )
    assert crunched.status is JobStatus.SUCCEEDED, crunched.error
    checksum = 3 * (sum(i * i for i in range(1000)) % 1_000_003)
    assert crunched.result == {"rounds": 3, "checksum": checksum}

    # --kind decides which worker runs what
    nap_events = await job_manager.events(nap.id, tenant=tenant)
    crunch_events = await job_manager.events(crunch.id, tenant=tenant)
    assert lifecycle(nap_events) == ["submitted", "claimed", "succeeded"]
    assert lifecycle(crunch_events) == ["submitted", "claimed", "succeeded"]
    assert claimed_by(nap_events) == [await worker_id(db, sleeper)]
    assert claimed_by(crunch_events) == [await worker_id(db, cruncher)]

    for worker in both:
        worker.proc.send_signal(signal.SIGTERM)
    for worker in both:
        assert await exit_code(worker, 15.0) == 0, worker.tail()


# --- 7. shutdown while Postgres stalls -----------------------------------------------------------


@pytest.mark.timeout(90)
async def test_shutdown_whose_release_fails_leaves_a_sync_job_to_recovery(
    job_manager: JobManager,
    tenant: str,
    database_url: str,
    db: asyncpg.Connection,
    workers: Workers,
) -> None:
    a = await workers.start(grace=0.5)
    job = await job_manager.submit(tenant, workers.kind("blocking"), {"seconds": [60, 0.5]})
    await eventually(
        lambda: running_on(db, job.id, a),
        timeout=DEADLINE,
        what="the job to run on worker A",
        watch=[a],
    )

    # a row lock stalls every write to the job past the worker's 5 s release timeout
    locker = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        stall = locker.transaction()
        await stall.start()
        await locker.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job.id)
        a.proc.send_signal(signal.SIGTERM)

        async def gave_up() -> bool:
            return "could not release leases" in a.output()

        await eventually(
            gave_up, timeout=DEADLINE, what="worker A to give up releasing the lease", watch=[a]
        )
        await stall.rollback()
    finally:
        await locker.close()
    assert await exit_code(a, 15.0) == 0, a.tail()

    left = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert left.status is not JobStatus.CANCELLED, "nobody asked to cancel this job"
    b = await workers.start()
    done = await eventually(
        finished(job_manager, job.id, tenant),
        timeout=DEADLINE,
        what="worker B to finish the job",
        watch=[b],
    )
    assert done.status is JobStatus.SUCCEEDED, done.error
    events = await job_manager.events(job.id, tenant=tenant)
    assert lifecycle(events) == ["submitted", "claimed", "retried", "claimed", "succeeded"]
