"""JobManager against a real Postgres: submit, idempotency, tenancy, cancel, listing, the cache."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from jobkeeper import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobId,
    InvalidRequest,
    Job,
    JobFinished,
    JobManager,
    JobNotFound,
    JobStatus,
    TenantRequired,
)
from jobkeeper.testing import data_layer

PAYLOAD: dict[str, Any] = {"name": "report", "tags": ["a", "b"], "opts": {"depth": [1, {"x": 2}]}}


async def make_job(manager: JobManager, tenant: str, **overrides: Any) -> Job:
    """Submit one job with sensible defaults; ``overrides`` replace any argument."""
    args: dict[str, Any] = {"kind": "test.job", "payload": {"n": 1}}
    args.update(overrides)
    return await manager.submit(tenant, args.pop("kind"), args.pop("payload"), **args)


async def scalar(manager: JobManager, sql: str, *params: Any) -> Any:
    async with data_layer(manager).database.connection() as conn:
        return await conn.fetchval(sql, *params)


async def table_counts(manager: JobManager) -> tuple[int, int]:
    """Rows in ``jobs`` and ``job_events`` across the whole (module) database."""
    jobs = await scalar(manager, "SELECT count(*) FROM jobs")
    events = await scalar(manager, "SELECT count(*) FROM job_events")
    return jobs, events


async def move(manager: JobManager, job: Job, *targets: JobStatus) -> Job:
    for target in targets:
        job = await data_layer(manager).jobs.transition(job.id, job.tenant, target, event="test")
    return job


# --- submit and get ------------------------------------------------------------------------


async def test_submit_returns_queued_job_and_get_returns_it(
    job_manager: JobManager, tenant: str
) -> None:
    run_after = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    job = await make_job(
        job_manager,
        tenant,
        kind="reports.build",
        payload=PAYLOAD,
        priority=7,
        max_attempts=5,
        run_after=run_after,
        concurrency_key="c1",
        pinned=True,
    )
    assert isinstance(job.id, UUID)
    assert job.status is JobStatus.QUEUED
    assert (job.version, job.attempts) == (1, 0)
    assert (job.tenant, job.kind) == (tenant, "reports.build")
    assert json.loads(json.dumps(job.payload)) == PAYLOAD
    assert (job.priority, job.max_attempts, job.run_after) == (7, 5, run_after)
    assert (job.concurrency_key, job.pinned, job.idempotency_key) == ("c1", True, None)
    assert (job.result, job.error, job.cancel_requested) == (None, None, False)
    assert (job.started_at, job.finished_at) == (None, None)
    assert not job.terminal
    assert await job_manager.get(job.id, tenant=tenant) == job
    assert await job_manager.get(str(job.id), tenant=tenant, consistency="strong") == job


async def test_payload_is_deep_frozen_and_serialises_as_json(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    submitted = await make_job(job_manager, tenant, payload=PAYLOAD)
    async with await JobManager.connect(database_url) as cold:
        from_db = await cold.get(submitted.id, tenant=tenant)
    listed = (await job_manager.list(tenant=tenant)).items[0]
    for job in (submitted, from_db, listed):
        with pytest.raises(TypeError):
            job.payload["x"] = 1
        with pytest.raises(TypeError):
            job.payload["opts"]["depth"][1]["x"] = 3
        with pytest.raises(TypeError):
            job.payload.update(x=1)
        with pytest.raises(AttributeError):
            job.payload["tags"].append("c")
        assert json.loads(json.dumps(job.payload)) == PAYLOAD
    again = await job_manager.get(submitted.id, tenant=tenant)
    assert json.loads(json.dumps(again.payload)) == PAYLOAD


async def test_aware_non_utc_run_after_is_stored_as_the_same_instant_in_utc(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    local = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    job = await make_job(job_manager, tenant, run_after=local)
    async with await JobManager.connect(database_url) as cold:
        stored = await cold.get(job.id, tenant=tenant)
    for value in (job.run_after, stored.run_after):
        assert value == local
        assert value.utcoffset() == timedelta(0)
        assert value.replace(tzinfo=None) == datetime(2030, 1, 1, 6, 30)


# --- idempotency ---------------------------------------------------------------------------


async def test_concurrent_idempotent_submits_create_exactly_one_job(
    job_manager: JobManager, tenant: str
) -> None:
    jobs = await asyncio.gather(
        *(job_manager.submit(tenant, "test.job", {"n": 1}, idempotency_key="k") for _ in range(100))
    )
    assert len({j.id for j in jobs}) == 1
    rows = await scalar(
        job_manager,
        "SELECT count(*) FROM jobs WHERE tenant = $1 AND idempotency_key = 'k'",
        tenant,
    )
    submitted = await scalar(
        job_manager,
        "SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id"
        " WHERE j.tenant = $1 AND e.type = 'submitted'",
        tenant,
    )
    assert (rows, submitted) == (1, 1)
    assert [e.seq for e in await job_manager.events(jobs[0].id, tenant=tenant)] == [1]


async def test_submit_or_replay_reports_creation_then_replay(
    job_manager: JobManager, tenant: str
) -> None:
    first, created = await job_manager.submit_or_replay(
        tenant, "test.job", {"a": 1, "b": 2}, idempotency_key="k"
    )
    assert created is True
    # the same request (key order does not matter in JSON) replays the first job
    again, created_again = await job_manager.submit_or_replay(
        tenant, "test.job", {"b": 2, "a": 1}, idempotency_key="k"
    )
    assert created_again is False
    assert again == first


async def test_same_instant_in_another_timezone_is_the_same_request(
    job_manager: JobManager, tenant: str
) -> None:
    utc = datetime(2030, 1, 1, 6, 30, tzinfo=UTC)
    india = utc.astimezone(timezone(timedelta(hours=5, minutes=30)))
    first = await make_job(job_manager, tenant, idempotency_key="k", run_after=utc)
    replay, created = await job_manager.submit_or_replay(
        tenant, "test.job", {"n": 1}, idempotency_key="k", run_after=india
    )
    assert (replay, created) == (first, False)


@pytest.mark.parametrize(
    "change",
    [{"payload": {"n": 2}}, {"kind": "other.job"}, {"priority": 3}, {"max_attempts": 9}],
    ids=["payload", "kind", "priority", "max_attempts"],
)
async def test_same_key_for_a_different_request_conflicts(
    job_manager: JobManager, tenant: str, change: dict[str, Any]
) -> None:
    original = await make_job(job_manager, tenant, idempotency_key="k")
    before = await table_counts(job_manager)
    with pytest.raises(IdempotencyConflict) as caught:
        await make_job(job_manager, tenant, idempotency_key="k", **change)
    assert caught.value.code == "idempotency_key_reused"
    assert (caught.value.idempotency_key, caught.value.job_id) == ("k", original.id)
    assert await table_counts(job_manager) == before
    assert await job_manager.get(original.id, tenant=tenant, consistency="strong") == original


async def test_same_key_in_another_tenant_is_another_job(
    job_manager: JobManager, tenant: str
) -> None:
    mine = await make_job(job_manager, tenant, idempotency_key="k")
    theirs, created = await job_manager.submit_or_replay(
        f"{tenant}-b", "test.job", {"n": 1}, idempotency_key="k"
    )
    assert created is True
    assert theirs.id != mine.id
    assert theirs.tenant == f"{tenant}-b"


# --- tenant isolation ----------------------------------------------------------------------


async def _assert_invisible_to(manager: JobManager, job: Job, other: str) -> None:
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: manager.get(job.id, tenant=other),
        lambda: manager.get(job.id, tenant=other, consistency="strong"),
        lambda: manager.cancel(job.id, tenant=other),
        lambda: manager.events(job.id, tenant=other),
    ]
    for attempt in attempts:
        with pytest.raises(JobNotFound) as caught:
            await attempt()
        assert caught.value.code == "job_not_found"
        assert caught.value.job_id == job.id
    page = await manager.list(tenant=other)
    assert job.id not in {j.id for j in page.items}


async def test_other_tenant_cannot_see_or_cancel_a_job_cold_cache(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    other = f"{tenant}-b"
    their_job = await make_job(job_manager, other)
    async with await JobManager.connect(database_url) as cold:
        await _assert_invisible_to(cold, job, other)
        assert [j.id for j in (await cold.list(tenant=other)).items] == [their_job.id]
        assert await cold.get(job.id, tenant=tenant) == job  # the owner still sees it, unchanged
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == job


async def test_other_tenant_cannot_see_or_cancel_a_job_warm_cache(
    job_manager: JobManager, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    assert await job_manager.get(job.id, tenant=tenant) == job  # cached now
    await _assert_invisible_to(job_manager, job, f"{tenant}-b")
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == job


# --- versions and cancel -------------------------------------------------------------------


async def test_versions_grow_by_one_and_reads_see_own_writes(
    job_manager: JobManager, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    assert (await job_manager.get(job.id, tenant=tenant)).version == 1
    versions = [job.version]

    running = await move(job_manager, job, JobStatus.RUNNING)  # written behind the cache's back
    seen = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert seen == running
    assert await job_manager.get(job.id, tenant=tenant) == running
    versions.append(running.version)

    flagged = await job_manager.cancel(job.id, tenant=tenant)
    assert await job_manager.get(job.id, tenant=tenant) == flagged
    versions.append(flagged.version)

    again = await job_manager.cancel(job.id, tenant=tenant)
    assert again == flagged

    requeued = await move(job_manager, flagged, JobStatus.QUEUED)
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == requeued
    versions.append(requeued.version)

    cancelled = await job_manager.cancel(job.id, tenant=tenant)
    assert await job_manager.get(job.id, tenant=tenant) == cancelled
    versions.append(cancelled.version)

    assert versions == [1, 2, 3, 4, 5]
    history = await job_manager.events(job.id, tenant=tenant)
    assert [e.seq for e in history] == versions
    assert [e.type for e in history] == [
        "submitted",
        "test",
        "cancel_requested",
        "test",
        "cancelled",
    ]


async def test_cancel_queued_job_cancels_at_once(job_manager: JobManager, tenant: str) -> None:
    job = await make_job(job_manager, tenant)
    cancelled = await job_manager.cancel(job.id, tenant=tenant)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.terminal
    assert cancelled.version == 2
    assert cancelled.finished_at is not None
    assert cancelled.finished_at >= job.created_at
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == cancelled
    assert [(e.seq, e.type) for e in await job_manager.events(job.id, tenant=tenant)] == [
        (1, "submitted"),
        (2, "cancelled"),
    ]


async def test_cancel_running_job_flags_it_once(job_manager: JobManager, tenant: str) -> None:
    job = await move(job_manager, await make_job(job_manager, tenant), JobStatus.RUNNING)
    flagged = await job_manager.cancel(str(job.id), tenant=tenant)
    assert flagged.status is JobStatus.RUNNING
    assert flagged.cancel_requested is True
    assert flagged.finished_at is None
    assert flagged.version == job.version + 1

    again = await job_manager.cancel(job.id, tenant=tenant)
    assert again == flagged
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == flagged
    assert [e.type for e in await job_manager.events(job.id, tenant=tenant)] == [
        "submitted",
        "test",
        "cancel_requested",
    ]


async def test_cancel_waiting_input_job_cancels_at_once(
    job_manager: JobManager, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    job = await move(job_manager, job, JobStatus.RUNNING, JobStatus.WAITING_INPUT)
    cancelled = await job_manager.cancel(job.id, tenant=tenant)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.version == job.version + 1
    assert (await job_manager.events(job.id, tenant=tenant))[-1].type == "cancelled"


@pytest.mark.parametrize(
    "path",
    [
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.CANCELLED,),
    ],
    ids=["succeeded", "failed", "cancelled"],
)
async def test_cancel_of_finished_job_raises_job_finished(
    job_manager: JobManager, tenant: str, path: tuple[JobStatus, ...]
) -> None:
    job = await move(job_manager, await make_job(job_manager, tenant), *path)
    before = await table_counts(job_manager)
    with pytest.raises(JobFinished) as caught:
        await job_manager.cancel(job.id, tenant=tenant)
    assert caught.value.code == "job_finished"
    assert caught.value.current == path[-1].value
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == job
    assert await table_counts(job_manager) == before


async def test_cancel_or_get_of_missing_job_is_not_found(
    job_manager: JobManager, tenant: str
) -> None:
    missing = uuid4()
    for call in (job_manager.get, job_manager.cancel, job_manager.events):
        with pytest.raises(JobNotFound):
            await call(missing, tenant=tenant)


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["", "   "], ids=["empty", "spaces"])
async def test_blank_tenant_is_refused_everywhere(job_manager: JobManager, blank: str) -> None:
    job_id = uuid4()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: job_manager.submit(blank, "test.job", {}),
        lambda: job_manager.submit_or_replay(blank, "test.job", {}, idempotency_key="k"),
        lambda: job_manager.get(job_id, tenant=blank),
        lambda: job_manager.cancel(job_id, tenant=blank),
        lambda: job_manager.events(job_id, tenant=blank),
        lambda: job_manager.list(tenant=blank),
    ]
    before = await table_counts(job_manager)
    for call in calls:
        with pytest.raises(TenantRequired) as caught:
            await call()
        assert caught.value.code == "tenant_required"
        assert caught.value.field == "tenant"
    assert await table_counts(job_manager) == before


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "1234", 42, None])
async def test_bad_job_id_is_invalid_job_id(
    job_manager: JobManager, tenant: str, bad_id: Any
) -> None:
    await make_job(job_manager, tenant)
    before = await table_counts(job_manager)
    for call in (job_manager.get, job_manager.cancel, job_manager.events):
        with pytest.raises(InvalidJobId) as caught:
            await call(bad_id, tenant=tenant)
        assert caught.value.code == "invalid_job_id"
        assert caught.value.field == "job_id"
    assert await table_counts(job_manager) == before


class _Unserialisable:
    pass


BAD_SUBMISSIONS: list[tuple[str, dict[str, Any], str]] = [
    ("object", {"payload": {"x": _Unserialisable()}}, "payload"),
    ("set", {"payload": {"x": {1, 2}}}, "payload"),
    ("nan", {"payload": {"x": float("nan")}}, "payload"),
    ("inf", {"payload": [float("inf")]}, "payload"),
    ("nul-in-value", {"payload": {"x": "a\x00b"}}, "payload"),
    ("nul-in-key", {"payload": {"a\x00": 1}}, "payload"),
    ("naive-run-after", {"run_after": datetime(2030, 1, 1)}, "run_after"),
    ("run-after-not-datetime", {"run_after": "2030-01-01T00:00:00Z"}, "run_after"),
    ("negative-priority", {"priority": -1}, "priority"),
    ("bool-priority", {"priority": True}, "priority"),
    ("huge-priority", {"priority": 40_000}, "priority"),
    ("float-priority", {"priority": 1.0}, "priority"),
    ("zero-attempts", {"max_attempts": 0}, "max_attempts"),
    ("too-many-attempts", {"max_attempts": 1_001}, "max_attempts"),
    ("empty-kind", {"kind": ""}, "kind"),
    ("kind-with-space", {"kind": "has space"}, "kind"),
    ("kind-not-str", {"kind": 5}, "kind"),
    ("empty-idempotency-key", {"idempotency_key": ""}, "idempotency_key"),
    ("long-idempotency-key", {"idempotency_key": "k" * 256}, "idempotency_key"),
    ("pinned-not-bool", {"pinned": 1}, "pinned"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in BAD_SUBMISSIONS],
    ids=[name for name, _, _ in BAD_SUBMISSIONS],
)
async def test_bad_submission_is_refused_and_writes_nothing(
    job_manager: JobManager, tenant: str, overrides: dict[str, Any], field: str
) -> None:
    before = await table_counts(job_manager)
    with pytest.raises(InvalidRequest) as caught:
        await make_job(job_manager, tenant, **overrides)
    assert type(caught.value) is InvalidRequest
    assert caught.value.code == "validation_error"
    assert caught.value.field == field
    assert await table_counts(job_manager) == before


# Values Postgres cannot store in text/jsonb must be refused as bad input too, not surface as a
# raw driver error (``sqlalchemy.exc.DBAPIError``) that the HTTP layer would turn into a 500.
UNSTORABLE: list[tuple[str, dict[str, Any], str]] = [
    ("payload-lone-surrogate", {"payload": {"x": "\ud800"}}, "payload"),
    ("idempotency-key-nul", {"idempotency_key": "a\x00b"}, "idempotency_key"),
    ("idempotency-key-surrogate", {"idempotency_key": "\ud800"}, "idempotency_key"),
    ("concurrency-key-nul", {"concurrency_key": "a\x00b"}, "concurrency_key"),
]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [(o, f) for _, o, f in UNSTORABLE],
    ids=[name for name, _, _ in UNSTORABLE],
)
async def test_unstorable_strings_are_refused_as_bad_input(
    job_manager: JobManager, tenant: str, overrides: dict[str, Any], field: str
) -> None:
    before = await table_counts(job_manager)
    try:
        with pytest.raises(InvalidRequest) as caught:
            await make_job(job_manager, tenant, **overrides)
        assert caught.value.field == field
    finally:
        assert await table_counts(job_manager) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": True}, "limit"),
        ({"status": "nope"}, "status"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"cursor": "AAAA"}, "cursor"),
        ({"kind": 5}, "kind"),
    ],
    ids=["limit-0", "limit-501", "limit-bool", "status", "cursor-garbage", "cursor-short", "kind"],
)
async def test_bad_list_arguments_are_refused(
    job_manager: JobManager, tenant: str, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await job_manager.list(tenant=tenant, **kwargs)
    assert caught.value.code == "validation_error"
    assert caught.value.field == field


async def test_list_with_unstorable_kind_is_refused(job_manager: JobManager, tenant: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await job_manager.list(tenant=tenant, kind="a\x00b")
    assert caught.value.field == "kind"


async def test_bad_get_and_events_arguments_are_refused(
    job_manager: JobManager, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    with pytest.raises(InvalidRequest) as caught:
        await job_manager.get(job.id, tenant=tenant, consistency="eventual")  # type: ignore[arg-type]
    assert caught.value.field == "consistency"
    for after in (-1, True, "1", 2**63):
        with pytest.raises(InvalidRequest) as caught:
            await job_manager.events(job.id, tenant=tenant, after=after)  # type: ignore[arg-type]
        assert caught.value.field == "after"


async def test_connect_refuses_bad_cache_settings(database_url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        await JobManager.connect(database_url, cache_size=-1)
    assert caught.value.field == "cache"
    with pytest.raises(InvalidRequest) as caught:
        await JobManager.connect(database_url, cache_ttl=0)
    assert caught.value.field == "cache"


# --- listing and history -------------------------------------------------------------------


async def test_list_paginates_newest_first_without_gaps_or_duplicates(
    job_manager: JobManager, tenant: str
) -> None:
    submitted = [await make_job(job_manager, tenant, payload={"i": i}) for i in range(7)]
    await make_job(job_manager, f"{tenant}-b")  # another tenant's job never shows up

    pages = []
    cursor: str | None = None
    while True:
        page = await job_manager.list(tenant=tenant, limit=3, cursor=cursor)
        pages.append(page)
        cursor = page.next_cursor
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not terminate"
    assert [len(p.items) for p in pages] == [3, 3, 1]
    assert [p.next_cursor is None for p in pages] == [False, False, True]
    listed = [j for p in pages for j in p.items]
    assert [j.id for j in listed] == [j.id for j in reversed(submitted)]
    assert listed == list(reversed(submitted))

    exact = await job_manager.list(tenant=tenant, limit=7)
    assert (len(exact.items), exact.next_cursor) == (7, None)


async def test_list_filters_by_status_and_kind(job_manager: JobManager, tenant: str) -> None:
    alpha = [await make_job(job_manager, tenant, kind="alpha") for _ in range(3)]
    beta = [await make_job(job_manager, tenant, kind="beta") for _ in range(2)]
    cancelled = [await job_manager.cancel(alpha[0].id, tenant=tenant)]
    cancelled.append(await job_manager.cancel(beta[1].id, tenant=tenant))

    def ids(jobs: list[Job] | tuple[Job, ...]) -> set[UUID]:
        return {j.id for j in jobs}

    by_status = await job_manager.list(tenant=tenant, status="cancelled")
    assert ids(by_status.items) == ids(cancelled)
    assert all(j.status is JobStatus.CANCELLED for j in by_status.items)
    queued = await job_manager.list(tenant=tenant, status=JobStatus.QUEUED)
    assert ids(queued.items) == {alpha[1].id, alpha[2].id, beta[0].id}
    assert ids((await job_manager.list(tenant=tenant, kind="alpha")).items) == ids(alpha)
    both = await job_manager.list(tenant=tenant, kind="beta", status="queued")
    assert ids(both.items) == {beta[0].id}
    assert (await job_manager.list(tenant=tenant, kind="gamma")).items == ()
    assert (await job_manager.list(tenant=tenant, status="running")).items == ()


async def test_events_history_and_after(job_manager: JobManager, tenant: str) -> None:
    job = await make_job(job_manager, tenant)
    await job_manager.cancel(job.id, tenant=tenant)
    history = await job_manager.events(job.id, tenant=tenant)
    assert [(e.seq, e.type) for e in history] == [(1, "submitted"), (2, "cancelled")]
    assert history[0].data == {"kind": "test.job"}
    assert history[0].at <= history[1].at
    assert await job_manager.events(job.id, tenant=tenant, after=1) == history[1:]
    assert await job_manager.events(job.id, tenant=tenant, after=2) == ()
    with pytest.raises(JobNotFound):
        await job_manager.events(job.id, tenant=f"{tenant}-b")


# --- connection, restart, cache ------------------------------------------------------------


async def test_connect_to_unreachable_database_raises_database_unavailable() -> None:
    with pytest.raises(DatabaseUnavailable) as caught:
        await JobManager.connect("postgresql://postgres@127.0.0.1:1/nope")
    assert caught.value.code == "database_unavailable"


async def test_job_survives_a_restart(database_url: str, tenant: str) -> None:
    async with await JobManager.connect(database_url) as first:
        job = await make_job(first, tenant, payload=PAYLOAD)
        cancelled = await first.cancel(job.id, tenant=tenant)
    async with await JobManager.connect(database_url) as second:
        assert await second.get(job.id, tenant=tenant) == cancelled
        assert [e.seq for e in await second.events(job.id, tenant=tenant)] == [1, 2]


async def test_strong_read_sees_another_managers_write_and_refreshes_cache(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    assert await job_manager.get(job.id, tenant=tenant) == job
    async with await JobManager.connect(database_url) as other:
        cancelled = await other.cancel(job.id, tenant=tenant)
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == cancelled
    assert await job_manager.get(job.id, tenant=tenant) == cancelled


async def test_cache_counts_a_miss_then_a_hit(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    job = await make_job(job_manager, tenant)
    async with await JobManager.connect(database_url, cache_ttl=3600) as fresh:
        start = fresh.cache_stats()
        assert (start.hits, start.misses, start.size) == (0, 0, 0)
        assert await fresh.get(job.id, tenant=tenant) == job
        after_miss = fresh.cache_stats()
        assert (after_miss.hits, after_miss.misses, after_miss.size) == (0, 1, 1)
        assert await fresh.get(job.id, tenant=tenant) == job
        after_hit = fresh.cache_stats()
        assert (after_hit.hits, after_hit.misses, after_hit.size) == (1, 1, 1)
        assert fresh.cleanup_expired() == 0  # nothing is an hour old
        assert fresh.cache_stats().size == 1
        assert fresh.cache_stats().expirations == 0


async def test_a_manager_without_cache_reads_postgres_and_hears_the_changes_workers_act_on(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    """``role="worker"`` (what worker processes run): nothing is cached, nothing stale is served,
    subscribers hear new work and cancel requests (not every change), and worker writes report
    what they changed."""
    async with await JobManager.connect(database_url, role="worker") as bare:
        heard: asyncio.Queue[tuple[UUID, int, str | None]] = asyncio.Queue()
        bare.subscribe(lambda job_id, version, status: heard.put_nowait((job_id, version, status)))

        async def next_heard() -> tuple[UUID, int, str | None]:
            return await asyncio.wait_for(heard.get(), 10.0)

        job = await make_job(job_manager, tenant, kind="bare.job")
        assert await next_heard() == (job.id, 1, "queued")  # new work
        assert await bare.get(job.id, tenant=tenant) == job
        await job_manager.cancel(job.id, tenant=tenant)  # written elsewhere: read fresh at once
        assert (await bare.get(job.id, tenant=tenant)).status == JobStatus.CANCELLED
        stats = bare.cache_stats()
        assert (stats.hits, stats.size) == (0, 0)

        running = await make_job(job_manager, tenant, kind="bare.run")
        (lease,) = await job_manager.claim(uuid4(), kinds=["bare.run"], limit=1, lease_seconds=30)
        await job_manager.cancel(running.id, tenant=tenant)  # a cancel request: a worker acts
        assert await next_heard() == (running.id, 1, "queued")  # not the cancel of `job` before
        assert await next_heard() == (running.id, 3, "cancel_requested")  # not the claim (v2)
        assert lease.job.version == 2

        other = await make_job(job_manager, tenant, kind="bare.job")
        (lease,) = await bare.claim(uuid4(), kinds=["bare.job"], limit=1, lease_seconds=30.0)
        assert lease.job.id == other.id
        assert await bare.mark_succeeded([(lease, '{"n": 1}', None)]) == [other.id]
        assert await bare.mark_succeeded([(lease, '{"n": 2}', None)]) == []  # lease gone
        done = await job_manager.get(other.id, tenant=tenant, consistency="strong")
        assert (done.status, done.result) == (JobStatus.SUCCEEDED, {"n": 1})
