"""A worker paused past its lease cannot make its late business write: real ``jobkeeper worker``
processes, real signals, and the application's own table written through ``ctx.fenced``.

Worker A starts a payment job and is SIGSTOPped before it pays; its lease expires, worker B
recovers the job, pays and finishes it. Then A is SIGCONTed: its handler goes on to pay (the
payment is shielded from cancellation, as a careful handler does), and the fence refuses it in A's
own transaction, so only B's payment is in the table. Every process is killed and awaited.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import asyncpg
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager
from support import eventually

from .support import DEADLINE, LEASE_SECONDS, Workers

IDLE_IN_TRANSACTION = "2s"
WORK_SECONDS = 3.0  # the first start works this long before paying: A is stopped meanwhile
PAYMENTS = """CREATE TABLE IF NOT EXISTS public.{} (job_id uuid NOT NULL, token uuid NOT NULL,
    pid int NOT NULL, start int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"""


@pytest.fixture
async def payments(database_url: str, db: asyncpg.Connection) -> None:
    """The application's tables: payments made, and payments the fence refused."""
    for table in ("fence_payments", "fence_refusals"):
        await db.execute(PAYMENTS.format(table))
    # what docs/workers.md advises: a transaction left open by a stopped process (A may be
    # stopped inside its sweeper's pass, which holds the sweeper lock in a transaction, or
    # inside a fenced transaction) is ended by Postgres, so recovery is not held up for good
    name = urlsplit(database_url).path.lstrip("/")
    await db.execute(
        f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = '
        f"'{IDLE_IN_TRANSACTION}'"
    )


async def rows(db: asyncpg.Connection, table: str, job_id: Any) -> list[tuple[Any, int]]:
    """``(token, pid)`` of the job's rows in ``table``, oldest first."""
    found = await db.fetch(
        f"SELECT token, pid FROM public.{table} WHERE job_id = $1 ORDER BY at", job_id
    )
    return [(r["token"], r["pid"]) for r in found]


@pytest.mark.timeout(120)
async def test_a_paused_workers_late_business_write_is_refused(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, workers: Workers, payments: None
) -> None:
    a = await workers.start()
    job = await job_manager.submit(tenant, workers.kind("pay"), {"seconds": [WORK_SECONDS, 0]})
    held = await eventually(
        lambda: db.fetchrow(
            "SELECT j.lease_token FROM jobs AS j JOIN fault_starts AS s ON s.job_id = j.id"
            " WHERE j.id = $1 AND j.status = 'running' AND s.pid = $2",
            job.id,
            a.pid,
        ),
        timeout=DEADLINE,
        what="A to start the job",
        watch=[a],
    )
    started = time.monotonic()
    os.kill(a.pid, signal.SIGSTOP)
    try:
        b = await workers.start()

        async def finished() -> Any:
            current = await job_manager.get(job.id, tenant=tenant, consistency="strong")
            return current if current.terminal else None

        done = await eventually(finished, timeout=DEADLINE, what="B to finish the job", watch=[b])
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert done.result["pid"] == b.pid
        paid = await rows(db, "fence_payments", job.id)
        assert paid == [(UUID(done.result["token"]), b.pid)]  # B's own run paid, once
        assert paid[0][0] != held["lease_token"]
        # A resumes only once its work would be over: it goes straight on to pay
        await eventually(
            lambda: time.monotonic() > started + WORK_SECONDS + LEASE_SECONDS,
            what="A's work time to pass",
        )
    finally:
        os.kill(a.pid, signal.SIGCONT)

    refused = await eventually(
        lambda: rows(db, "fence_refusals", job.id),
        timeout=DEADLINE,
        what="A's late payment to be refused",
        watch=[a, b],
    )
    assert refused == [(held["lease_token"], a.pid)]
    assert await rows(db, "fence_payments", job.id) == paid  # nothing written by A
    after = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert (after.status, after.version, after.result) == (done.status, done.version, done.result)
    # A lives on, and says that its lease was lost
    await eventually(lambda: "lost" in a.output(), what="A to log the lost lease", watch=[a])
