"""The data layer's job statements against a real Postgres: the transition table, its refusals,
and event history."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from jobkeeper import (
    InvalidTransition,
    Job,
    JobEvent,
    JobFinished,
    JobManager,
    JobNotFound,
    JobStatus,
)
from jobkeeper.domain.status import TERMINAL, can_transition
from jobkeeper.postgres.jobs import JobStatements
from jobkeeper.testing import data_layer
from support import path_to


async def make_job(manager: JobManager, tenant: str, **overrides: Any) -> Job:
    """Submit one job with sensible defaults; ``overrides`` replace any argument."""
    args: dict[str, Any] = {"kind": "test.job", "payload": {"n": 1}}
    args.update(overrides)
    return await manager.submit(tenant, args.pop("kind"), args.pop("payload"), **args)


async def fetch(repo: JobStatements, job_id: UUID, tenant: str) -> Job:
    job = await repo.get(job_id, tenant)
    assert job is not None
    return job


async def step(repo: JobStatements, job: Job, target: JobStatus, event: str) -> Job:
    """A transition that must succeed: one version, one event with ``seq == version``."""
    before = await repo.events(job.id, job.tenant)
    moved = await repo.transition(job.id, job.tenant, target, event=event)
    assert moved.status is target
    assert moved.version == job.version + 1
    after = await repo.events(job.id, job.tenant)
    assert after[: len(before)] == before
    assert len(after) == len(before) + 1
    new_event = after[-1]
    assert (new_event.seq, new_event.type) == (moved.version, event)
    assert new_event.data == {"status": target.value}
    assert await fetch(repo, job.id, job.tenant) == moved
    if target in TERMINAL:
        assert moved.finished_at is not None
        assert moved.finished_at >= moved.created_at
    else:
        assert moved.finished_at is None
    return moved


def test_every_status_is_reachable_from_queued() -> None:
    for status in JobStatus:
        chain = path_to(status)
        previous = JobStatus.QUEUED
        for nxt in chain:
            assert can_transition(previous, nxt)
            previous = nxt
        assert previous is status


@pytest.mark.parametrize(
    ("source", "target"),
    list(itertools.product(JobStatus, JobStatus)),
    ids=lambda s: s.value,
)
async def test_transition_matrix(
    job_manager: JobManager, tenant: str, source: JobStatus, target: JobStatus
) -> None:
    repo = data_layer(job_manager).jobs
    job = await make_job(job_manager, tenant)
    for status in path_to(source):
        job = await step(repo, job, status, event=f"to_{status.value}")
    assert job.status is source

    if can_transition(source, target):
        await step(repo, job, target, event="test")
        return

    events_before = await repo.events(job.id, tenant)
    expected = JobFinished if source.terminal else InvalidTransition
    with pytest.raises(InvalidTransition) as caught:
        await repo.transition(job.id, tenant, target, event="test")
    assert type(caught.value) is expected
    assert caught.value.code == ("job_finished" if source.terminal else "invalid_transition")
    assert caught.value.job_id == job.id
    assert (caught.value.current, caught.value.requested) == (source.value, target.value)
    after = await fetch(repo, job.id, tenant)
    assert (after.status, after.version) == (source, job.version)
    assert after == job
    assert await repo.events(job.id, tenant) == events_before


async def test_transition_of_missing_job_is_not_found(job_manager: JobManager, tenant: str) -> None:
    missing = uuid4()
    with pytest.raises(JobNotFound) as caught:
        await data_layer(job_manager).jobs.transition(
            missing, tenant, JobStatus.RUNNING, event="test"
        )
    assert caught.value.job_id == missing
    assert caught.value.code == "job_not_found"
    assert await data_layer(job_manager).jobs.get(missing, tenant) is None


async def test_transition_of_other_tenants_job_is_not_found_and_changes_nothing(
    job_manager: JobManager, tenant: str
) -> None:
    repo = data_layer(job_manager).jobs
    job = await make_job(job_manager, tenant)
    events_before = await repo.events(job.id, tenant)
    for target in JobStatus:
        with pytest.raises(JobNotFound):
            await repo.transition(job.id, f"{tenant}-other", target, event="test")
    assert await fetch(repo, job.id, tenant) == job
    assert await repo.events(job.id, tenant) == events_before
    assert await repo.get(job.id, f"{tenant}-other") is None
    assert await repo.events(job.id, f"{tenant}-other") == []


async def test_concurrent_transitions_have_exactly_one_winner(
    job_manager: JobManager, tenant: str
) -> None:
    repo = data_layer(job_manager).jobs
    job = await make_job(job_manager, tenant)
    outcomes = await asyncio.gather(
        *(repo.transition(job.id, tenant, JobStatus.RUNNING, event="claimed") for _ in range(20)),
        return_exceptions=True,
    )
    winners = [o for o in outcomes if isinstance(o, Job)]
    losers = [o for o in outcomes if not isinstance(o, Job)]
    assert len(winners) == 1
    assert all(type(o) is InvalidTransition for o in losers)
    assert winners[0].version == 2
    assert [e.seq for e in await repo.events(job.id, tenant)] == [1, 2]


async def test_events_after_returns_only_later_events(job_manager: JobManager, tenant: str) -> None:
    repo = data_layer(job_manager).jobs
    job = await make_job(job_manager, tenant)
    job = await step(repo, job, JobStatus.RUNNING, event="started")
    job = await step(repo, job, JobStatus.SUCCEEDED, event="done")
    everything = await repo.events(job.id, tenant)
    assert [(e.seq, e.type) for e in everything] == [(1, "submitted"), (2, "started"), (3, "done")]
    assert await repo.events(job.id, tenant, after=1) == everything[1:]
    assert await repo.events(job.id, tenant, after=3) == []


def _assert_utc(value: datetime | None, what: str) -> None:
    assert value is not None, what
    assert value.tzinfo is not None, what
    assert value.utcoffset() == timedelta(0), what


async def test_all_returned_datetimes_are_aware_utc(job_manager: JobManager, tenant: str) -> None:
    repo = data_layer(job_manager).jobs
    tokyo = timezone(timedelta(hours=9))
    job = await make_job(
        job_manager, tenant, run_after=datetime(2030, 1, 1, 9, tzinfo=tokyo), idempotency_key="k"
    )
    job = await repo.transition(job.id, tenant, JobStatus.RUNNING, event="run")
    assert job.started_at == job.updated_at  # a claim stamps started_at
    job = await repo.transition(job.id, tenant, JobStatus.SUCCEEDED, event="ok")
    listed = await repo.list_jobs(tenant, status=None, kind=None, limit=10, before=None)
    found = await repo.find_by_idempotency_key(tenant, "k")
    assert found is not None
    snapshots = [job, await fetch(repo, job.id, tenant), *listed, found[0]]
    for snap in snapshots:
        for field in ("run_after", "created_at", "updated_at", "started_at", "finished_at"):
            _assert_utc(getattr(snap, field), field)
    assert job.run_after == datetime(2030, 1, 1, 0, tzinfo=UTC)
    history: list[JobEvent] = await repo.events(job.id, tenant)
    assert len(history) == 3
    for event in history:
        _assert_utc(event.at, "event.at")


def test_a_row_becomes_the_job_of_its_columns_field_by_field() -> None:
    """``to_job`` sets the job's slots positionally (``job_of``): every field must get its own
    column, so each column here holds a value no other field could take."""
    from jobkeeper.domain.values import FrozenDict, Job, Progress
    from jobkeeper.postgres.pool import to_job

    moment = itertools.count()
    at = {name: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=next(moment)) for name in (
        "run_after", "created_at", "updated_at", "started_at", "finished_at", "scheduled_for",
        "input_deadline", "claim_expires_at", "sleeping_until",
    )}  # fmt: skip
    ids = {name: uuid4() for name in ("id", "schedule_id", "parent_id", "child")}
    row: dict[str, Any] = {
        **at,
        "id": ids["id"],
        "tenant": "t",
        "kind": "k",
        "status": "running",
        "payload": FrozenDict(p=1),
        "result": FrozenDict(r=2),
        "error": FrozenDict(e=3),
        "progress_fraction": 0.5,
        "progress_message": "half",
        "priority": 7,
        "attempts": 2,
        "max_attempts": 9,
        "idempotency_key": "idem",
        "concurrency_key": "conc",
        "cancel_requested": True,
        "pinned": False,
        "version": 11,
        "prompt": FrozenDict(q=4),
        "answers": FrozenDict(a=5),
        "checkpoints": FrozenDict(c=6),
        "schedule_id": ids["schedule_id"],
        "question_version": 13,
        "claimed_by": "someone",
        "parent_id": ids["parent_id"],
        "waiting_for": [ids["child"]],
        "trace_context": FrozenDict(traceparent="00-x"),
    }
    expected = Job(
        **{k: v for k, v in row.items() if k not in ("status", "waiting_for", *_PROGRESS)},
        status=JobStatus.RUNNING,
        progress=Progress(0.5, "half"),
        waiting_for=(ids["child"],),
    )
    assert to_job(row) == expected


_PROGRESS = ("progress_fraction", "progress_message")
