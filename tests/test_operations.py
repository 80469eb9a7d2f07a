"""Every status-changing statement, run from every status, against ``OPERATIONS`` and
``TRANSITIONS``: from a status the operation does not start from it changes nothing; from one it
does, the job ends in one of the operation's targets, along an edge the transition table has."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

from jobkeeper.domain.status import OPERATIONS, TRANSITIONS, JobStatus
from jobkeeper.domain.values import Job, Lease
from jobkeeper.errors import JobkeeperError
from jobkeeper.manager import JobManager
from jobkeeper.postgres import Postgres
from jobkeeper.testing import data_layer
from support import path_to

Run = Callable[[Postgres, Job, UUID | None], Awaitable[Any]]


def _lease(job: Job, token: UUID | None) -> Lease:
    return Lease(job, token or uuid4())  # a token no job holds where the job has none


async def _overdue(pg: Postgres, job: Job, column: str, status: JobStatus) -> None:
    """Put ``column`` (a lease's or a question's deadline) an hour in the past, if ``status``."""
    async with pg.database.connection() as conn:
        await conn.execute(
            f"UPDATE jobs SET {column} = now() - interval '1 hour' WHERE id = $1 AND status = $2",
            job.id,
            status.value,
        )


async def _claim(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.claim(uuid4(), kinds=[job.kind], limit=10, lease_seconds=30)


async def _succeed(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.complete([(job.id, _lease(job, token).token, "null", None)])


async def _fail(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.fail(
        _lease(job, token),
        error={"code": "test"},
        retryable=True,
        delay=0.0,
        backoff_base=0.01,
        backoff_max=0.01,
    )


async def _stop_cancelled(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.mark_cancelled(_lease(job, token))


async def _release(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.release([_lease(job, token)])


async def _recover(pg: Postgres, job: Job, token: UUID | None) -> Any:
    await _overdue(pg, job, "lease_expires_at", JobStatus.RUNNING)
    return await pg.leases.recover_expired(limit=1000, backoff_base=0.01, backoff_max=0.01)


async def _ask(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.leases.ask(_lease(job, token), '{"key": "q1", "text": "?"}', None)


async def _answer(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.questions.answer(
        job.id, job.tenant, "manual", "true", "tester", expected_version=None, replica="test"
    )


async def _input_timeout(pg: Postgres, job: Job, token: UUID | None) -> Any:
    await _overdue(pg, job, "input_deadline", JobStatus.WAITING_INPUT)
    return await pg.questions.expire_input_deadlines(limit=1000, replica="test")


async def _cancel(pg: Postgres, job: Job, token: UUID | None) -> Any:
    try:
        return await pg.jobs.cancel(job.id, job.tenant)
    except JobkeeperError as refused:  # a finished job: JobFinished, and nothing changed
        return refused


async def _sleep(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.workflows.sleep(_lease(job, token), "sleep:s1", until=None, seconds=60.0)


async def _wait_children(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.workflows.wait(_lease(job, token), [])


async def _wake(pg: Postgres, job: Job, token: UUID | None) -> Any:
    return await pg.workflows.wake([job.id])


RUNS: dict[str, Run] = {
    "claim": _claim,
    "succeed": _succeed,
    "fail": _fail,
    "stop_cancelled": _stop_cancelled,
    "release": _release,
    "recover": _recover,
    "ask": _ask,
    "answer": _answer,
    "input_timeout": _input_timeout,
    "sleep": _sleep,
    "wait_children": _wait_children,
    "wake": _wake,
    "cancel": _cancel,
}


def test_every_operation_is_run_here() -> None:
    assert set(OPERATIONS) == set(RUNS)


def test_every_operation_moves_only_along_the_transition_table() -> None:
    for name, operation in OPERATIONS.items():
        for source, targets in operation.moves.items():
            for target in targets:
                assert target == source or target in TRANSITIONS[source], (name, source, target)


@pytest.mark.parametrize(
    ("name", "source"), list(itertools.product(sorted(RUNS), JobStatus)), ids=str
)
async def test_each_statement_from_each_status(
    job_manager: JobManager, tenant: str, name: str, source: JobStatus
) -> None:
    pg = data_layer(job_manager)
    kind = f"ops.{uuid4().hex[:12]}"  # a claim in this test takes only this job
    job = await job_manager.submit(tenant, kind, {})
    for status in path_to(source):
        job = await pg.jobs.transition(job.id, tenant, status, event="test")
    async with pg.database.connection() as conn:
        token = await conn.fetchval("SELECT lease_token FROM jobs WHERE id = $1", job.id)
    await RUNS[name](pg, job, token)
    after = await pg.jobs.get(job.id, tenant)
    assert after is not None
    operation = OPERATIONS[name]
    if source not in operation.sources:
        assert (after.status, after.version) == (source, job.version), "changed from a non-source"
        return
    assert after.version > job.version, f"{name} did nothing from {source.value}"
    assert after.status in operation.moves[source], after.status
