"""Retention against a real Postgres: payload_ttl, job_ttl and tombstone_ttl, pinning, per-kind
policies, on_expire hooks, batch bounds and the partial indexes behind them.

Time is moved deterministically by backdating our own rows with SQL (``finished_at = now() -
2 days``) under TTLs of one day, never by sleeping: the sweeper acts on every job of the module's
database, so only rows a test backdated itself ever qualify, and every assertion is about the
test's own tenant and kinds. Waits for the change feed poll against a deadline.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.errors import InvalidRequest, JobExpired, JobNotFound
from jobkeeper.maintenance import _RETENTION_BATCH, ExpiryHooks, Retention, Sweeper, SweepReport
from jobkeeper.manager import JobManager
from jobkeeper.postgres import CHANNEL, EXPIRED_VERSION
from jobkeeper.postgres.retention import (
    _CLEAR_PAYLOADS,
    _CLEAR_PAYLOADS_IDS,
    _DUE_FOR_EXPIRY,
    _EXPIRE_DUE,
    _PURGE_TOMBSTONES,
)
from jobkeeper.settings import KindRetention, Settings, asyncpg_dsn, parse_duration
from support import eventually, explain, index_names, plan_nodes

DAY = 86_400.0
DEADLINE = 10.0  # bound of every wait; the expected times are milliseconds
# only rows a test backdated by two days qualify under these
RETENTION = Retention(payload_ttl=DAY, job_ttl=DAY, tombstone_ttl=DAY)
KEEP_JOBS = Retention(payload_ttl=DAY, job_ttl=30 * DAY, tombstone_ttl=30 * DAY)


# --- helpers -----------------------------------------------------------------------------------


def _kind() -> str:
    """A kind no other test uses, so claims and hooks only ever meet this test's jobs."""
    return f"ret.{uuid.uuid4().hex[:12]}"


async def backdate(
    db: asyncpg.Connection, ids: Sequence[UUID], *, days: float = 2, column: str = "finished_at"
) -> None:
    assert column in ("finished_at", "created_at", "started_at", "updated_at")
    status = await db.execute(
        f"UPDATE jobs SET {column} = now() - make_interval(secs => $2 * 86400)"
        " WHERE id = ANY($1::uuid[])",
        list(ids),
        float(days),
    )
    assert status == f"UPDATE {len(ids)}", status


async def backdate_tombstones(db: asyncpg.Connection, tenant: str, days: float = 2) -> None:
    await db.execute(
        "UPDATE job_tombstones SET expired_at = now() - make_interval(secs => $2 * 86400)"
        " WHERE tenant = $1",
        tenant,
        float(days),
    )


async def succeeded(
    manager: JobManager, tenant: str, kind: str, payloads: Sequence[Any], **submit: Any
) -> list[Job]:
    """Submit, claim and complete jobs the way a worker does; returns them in submit order."""
    submitted = [await manager.submit(tenant, kind, p, **submit) for p in payloads]
    leases = await manager.claim(
        uuid.uuid4(), kinds=[kind], limit=len(submitted), lease_seconds=3600
    )
    assert {lease.job.id for lease in leases} == {job.id for job in submitted}
    done = await manager.mark_succeeded(
        [(lease, json.dumps({"done": str(lease.job.id)}), None) for lease in leases]
    )
    assert set(done) == {job.id for job in submitted}
    return [await manager.get(job.id, tenant=tenant, consistency="strong") for job in submitted]


async def sweep(
    manager: JobManager, retention: Retention | None, hooks: ExpiryHooks | None = None
) -> SweepReport:
    """One pass that really swept (another holder of the lock, such as an app's own sweeper
    starting up, is waited out)."""

    async def swept() -> SweepReport | None:
        report = await Sweeper(manager, retention=retention, hooks=hooks).sweep()
        return report if report.swept else None

    return await eventually(swept, timeout=DEADLINE, what="the sweeper lock to be free")


def expired_on(
    manager: JobManager, job_id: UUID, tenant: str
) -> Callable[[], Awaitable[JobExpired | None]]:
    """A probe: the ``JobExpired`` a cached ``get`` raises, or ``None`` while it still answers."""

    async def probe() -> JobExpired | None:
        try:
            await manager.get(job_id, tenant=tenant)
        except JobExpired as exc:
            return exc
        return None

    return probe


async def row_counts(db: asyncpg.Connection, job_id: UUID) -> tuple[int, int, int]:
    """(jobs rows, job_events rows, tombstones) of one job id."""
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM jobs WHERE id = $1) AS jobs,"
        " (SELECT count(*) FROM job_events WHERE job_id = $1) AS events,"
        " (SELECT count(*) FROM job_tombstones WHERE job_id = $1) AS tombstones",
        job_id,
    )
    assert row is not None
    return row["jobs"], row["events"], row["tombstones"]


async def event_types(manager: JobManager, job: Job) -> list[str]:
    return [e.type for e in await manager.events(job.id, tenant=job.tenant)]


def settings_of(**values: object) -> Settings:
    """Settings from these values and the environment, never from a ``.env`` file."""
    return Settings(_env_file=None, **values)  # type: ignore[call-arg, arg-type]


def _recent(moment: datetime) -> None:
    assert moment.tzinfo is not None
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5), moment


# --- 1. durations and settings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        ("90", 90.0),
        ("90s", 90.0),
        ("15m", 900.0),
        ("24h", 86_400.0),
        ("7d", 604_800.0),
        ("1.5h", 5_400.0),
        (" 2D ", 172_800.0),
    ],
)
def test_durations_accept_seconds_and_units(value: object, seconds: float) -> None:
    assert float(parse_duration(value)) == seconds  # type: ignore[arg-type]
    settings = settings_of(payload_ttl=value)
    assert settings.payload_ttl == seconds
    assert KindRetention.model_validate({"job_ttl": value}).job_ttl == seconds


@pytest.mark.parametrize("value", ["abc", "-1", "5w", "", "1h30m", "d"])
def test_malformed_durations_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)
    for field in ("payload_ttl", "job_ttl", "tombstone_ttl"):
        with pytest.raises(ValidationError):
            settings_of(**{field: value})
    with pytest.raises(ValidationError):
        KindRetention.model_validate({"payload_ttl": value})


@pytest.mark.parametrize("value", [0, -1, "0", "0s"])
def test_durations_must_be_positive(value: object) -> None:
    with pytest.raises(ValidationError):
        settings_of(job_ttl=value)


def test_retention_defaults_are_24h_7d_30d(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PAYLOAD_TTL", "JOB_TTL", "TOMBSTONE_TTL", "RETENTION_BY_KIND"):
        monkeypatch.delenv(f"JOBKEEPER_{name}", raising=False)
    settings = settings_of()
    assert (settings.payload_ttl, settings.job_ttl, settings.tombstone_ttl) == (
        86_400.0,
        604_800.0,
        2_592_000.0,
    )
    assert settings.retention_by_kind == {}
    assert Retention() == Retention.from_settings(settings)


def test_retention_settings_read_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBKEEPER_PAYLOAD_TTL", "15m")
    monkeypatch.setenv("JOBKEEPER_JOB_TTL", "24h")
    monkeypatch.setenv("JOBKEEPER_TOMBSTONE_TTL", "90")
    monkeypatch.setenv(
        "JOBKEEPER_RETENTION_BY_KIND",
        '{"report": {"job_ttl": "90d"}, "thumb": {"payload_ttl": "90s", "job_ttl": 600}}',
    )
    settings = settings_of()
    assert (settings.payload_ttl, settings.job_ttl, settings.tombstone_ttl) == (900, 86_400, 90)
    assert settings.retention_by_kind == {
        "report": KindRetention(job_ttl=90 * DAY),
        "thumb": KindRetention(payload_ttl=90, job_ttl=600),
    }
    policy = Retention.from_settings(settings)
    assert policy == Retention(
        900,
        86_400,
        90,
        {
            "report": KindRetention(job_ttl=90 * DAY),
            "thumb": KindRetention(payload_ttl=90, job_ttl=600),
        },
    )
    # each override inherits what it leaves unset; the rest use the defaults
    assert policy.groups() == [
        (["report"], [], 900, 90 * DAY),
        (["thumb"], [], 90, 600),
        (None, ["report", "thumb"], 900, 86_400),
    ]


@pytest.mark.parametrize(
    "value", ['{"report": {"job_ttl": "5w"}}', '{"report": {"job_ttl": -1}}', "not json"]
)
def test_bad_retention_by_kind_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("JOBKEEPER_RETENTION_BY_KIND", value)
    with pytest.raises((ValidationError, ValueError)):
        settings_of()


def test_expiry_hooks_validate_kinds_and_refuse_duplicates() -> None:
    hooks = ExpiryHooks()

    async def hook(job: Job) -> None:
        return None

    assert hooks.on_expire("report")(hook) is hook
    assert hooks.get("report") is hook and hooks.get("other") is None
    with pytest.raises(InvalidRequest):
        hooks.on_expire("report")(hook)
    with pytest.raises(InvalidRequest):
        hooks.on_expire("-bad kind-")(hook)


# --- 2. payload_ttl ----------------------------------------------------------------------------


async def test_payload_of_an_old_finished_job_is_cleared_and_the_job_kept(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind = _kind()
    old, fresh = await succeeded(job_manager, tenant, kind, [{"secret": 1}, {"secret": 2}])
    await backdate(db, [old.id])

    report = await sweep(job_manager, KEEP_JOBS)
    assert report.payloads_cleared >= 1 and report.hook_failures == 0

    cleared = await job_manager.get(old.id, tenant=tenant, consistency="strong")
    assert cleared.payload is None
    assert cleared.version == old.version + 1
    assert (cleared.status, cleared.result) == (JobStatus.SUCCEEDED, old.result)
    assert cleared.result == {"done": str(old.id)}
    assert (cleared.created_at, cleared.attempts, cleared.kind) == (
        old.created_at,
        old.attempts,
        old.kind,
    )
    history = await job_manager.events(old.id, tenant=tenant)
    assert history[-1].type == "payload_cleared" and history[-1].seq == cleared.version
    assert [e.seq for e in history] == list(range(1, cleared.version + 1))

    # the job that finished just now keeps its input
    kept = await job_manager.get(fresh.id, tenant=tenant, consistency="strong")
    assert kept == fresh and kept.payload == {"secret": 2}

    # the change reached the cache through the feed; a second pass changes nothing more
    async def cached_cleared() -> Job | None:
        job = await job_manager.get(old.id, tenant=tenant)
        return job if job.payload is None else None

    assert (
        await eventually(
            cached_cleared, timeout=DEADLINE, what="the cached copy to lose its payload"
        )
    ) == cleared
    await sweep(job_manager, KEEP_JOBS)
    assert await job_manager.get(old.id, tenant=tenant, consistency="strong") == cleared
    assert (await event_types(job_manager, old)).count("payload_cleared") == 1


async def test_unfinished_jobs_keep_their_payload_however_old(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    """Only finished_at counts: not created_at, started_at or updated_at."""
    run_kind, queue_kind = _kind(), _kind()
    await job_manager.submit(tenant, run_kind, {"r": 1})
    [lease] = await job_manager.claim(uuid.uuid4(), kinds=[run_kind], limit=1, lease_seconds=3600)
    running = lease.job
    queued = await job_manager.submit(tenant, queue_kind, {"q": 1})
    [finished_now] = await succeeded(job_manager, tenant, _kind(), [{"f": 1}])
    ids = [running.id, queued.id, finished_now.id]
    for column in ("created_at", "updated_at"):
        await backdate(db, ids, days=400, column=column)
    await backdate(db, [running.id], days=400, column="started_at")

    await sweep(job_manager, RETENTION)
    await sweep(job_manager, RETENTION)

    for before, status in (
        (running, JobStatus.RUNNING),
        (queued, JobStatus.QUEUED),
        (finished_now, JobStatus.SUCCEEDED),
    ):
        after = await job_manager.get(before.id, tenant=tenant, consistency="strong")
        assert after.status is status
        assert after.version == before.version and after.payload == before.payload
        assert after.payload is not None
        assert "payload_cleared" not in await event_types(job_manager, after)


# --- 3. job_ttl and tombstones -----------------------------------------------------------------


async def test_an_expired_job_leaves_a_tombstone_and_answers_job_expired(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind = _kind()
    job, neighbour = await succeeded(job_manager, tenant, kind, [{"a": 1}, {"a": 2}])
    # cached before it expires: the cache holds it and serves it
    assert await job_manager.get(job.id, tenant=tenant) == job
    hits = job_manager.cache_stats().hits
    assert await job_manager.get(job.id, tenant=tenant) == job
    assert job_manager.cache_stats().hits == hits + 1, "the read was not a cache hit"
    assert await row_counts(db, job.id) == (1, job.version, 0)

    await backdate(db, [job.id])
    report = await sweep(job_manager, RETENTION)
    assert report.jobs_expired >= 1

    # row and history gone, a tombstone kept
    assert await row_counts(db, job.id) == (0, 0, 1)
    tomb = await db.fetchrow("SELECT * FROM job_tombstones WHERE job_id = $1", job.id)
    assert tomb is not None
    assert (tomb["tenant"], tomb["kind"], tomb["idempotency_key"]) == (tenant, kind, None)
    _recent(tomb["expired_at"])

    # the cached copy is dropped (by the feed's "expired" notification)
    expired = await eventually(
        expired_on(job_manager, job.id, tenant), timeout=DEADLINE, what="get to raise JobExpired"
    )
    assert isinstance(expired, JobNotFound)
    assert expired.code == "job_expired" and expired.job_id == job.id
    assert expired.expired_at == tomb["expired_at"]
    assert expired.expired_at.isoformat().replace("+00:00", "Z") in expired.message

    for call in (
        lambda: job_manager.get(job.id, tenant=tenant, consistency="strong"),
        lambda: job_manager.events(job.id, tenant=tenant),
        lambda: job_manager.events(job.id, tenant=tenant, after=3),
        lambda: job_manager.cancel(job.id, tenant=tenant),
        lambda: job_manager.answer(job.id, tenant=tenant, answer=1),
    ):
        with pytest.raises(JobExpired) as caught:
            await call()
        assert caught.value.expired_at == tomb["expired_at"]

    # another tenant never learns the job existed
    with pytest.raises(JobNotFound) as foreign:
        await job_manager.get(job.id, tenant=f"{tenant}-other", consistency="strong")
    assert type(foreign.value) is JobNotFound and foreign.value.code == "job_not_found"

    # the job that finished just now is untouched
    assert await job_manager.get(neighbour.id, tenant=tenant, consistency="strong") == neighbour


async def test_a_never_existing_job_is_not_found_not_expired(
    job_manager: JobManager, tenant: str
) -> None:
    missing = uuid.uuid4()
    for call in (
        lambda: job_manager.get(missing, tenant=tenant),
        lambda: job_manager.get(missing, tenant=tenant, consistency="strong"),
        lambda: job_manager.events(missing, tenant=tenant),
        lambda: job_manager.cancel(missing, tenant=tenant),
    ):
        with pytest.raises(JobNotFound) as caught:
            await call()
        assert type(caught.value) is JobNotFound
        assert caught.value.code == "job_not_found" and caught.value.job_id == missing


async def test_the_cached_copy_is_dropped_when_another_process_expires_the_job(
    job_manager: JobManager, database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"x": 1}])
    assert await job_manager.get(job.id, tenant=tenant) == job  # cached
    heard: list[tuple[int, str | None]] = []
    unsubscribe = job_manager.subscribe(
        lambda job_id, version, status: (
            # notifications of the job's earlier changes may still arrive: not this test's
            heard.append((version, status)) if job_id == job.id and version > job.version else None
        )
    )
    try:
        await backdate(db, [job.id])
        async with await JobManager.connect(database_url) as other:
            await sweep(other, RETENTION)
        await eventually(
            expired_on(job_manager, job.id, tenant), timeout=DEADLINE, what="the cached copy to go"
        )
    finally:
        unsubscribe()
    # expired, announced with a version above any real one; its input was not cleared first (no
    # hook could keep it past its TTL: the input goes with it)
    assert heard == [(EXPIRED_VERSION, "expired")], heard


async def test_retention_writes_reach_the_sweeping_managers_cache_and_observers_at_once(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    """Retention goes through the manager like every other write: its own cache drops the job
    and its observers hear each change, with no change feed involved (poll mode, an hour)."""
    async with await JobManager.connect(
        database_url, feed_mode="poll", feed_interval=3600
    ) as manager:
        [job] = await succeeded(manager, tenant, _kind(), [{"x": 1}])
        assert await manager.get(job.id, tenant=tenant) == job  # cached, and vouched for
        seen: list[str] = []
        manager.observe(
            lambda operation, changed: seen.append(operation) if changed.id == job.id else None
        )
        await backdate(db, [job.id])
        await sweep(manager, KEEP_JOBS)
        assert (await manager.get(job.id, tenant=tenant)).payload is None
        await sweep(manager, RETENTION)
        with pytest.raises(JobExpired):
            await manager.get(job.id, tenant=tenant)
        assert manager.feed_status().vouching  # the cache answered, not a read through
    assert seen == ["payload_cleared", "expired"]


async def test_without_observers_retention_still_drops_the_sweeping_managers_cached_copies(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    """With no observer (and no hook) retention reads no job back whole: the sweeping manager's
    cache must still drop what it cleared or deleted, with no change feed involved."""
    async with await JobManager.connect(
        database_url, feed_mode="poll", feed_interval=3600
    ) as manager:
        [kept, gone] = await succeeded(manager, tenant, _kind(), [{"x": 1}, {"x": 2}])
        for job in (kept, gone):
            assert await manager.get(job.id, tenant=tenant) == job  # cached
        await backdate(db, [kept.id], days=1)  # cleared, kept
        await backdate(db, [gone.id])  # deleted
        report = await sweep(
            manager, Retention(payload_ttl=DAY / 2, job_ttl=1.5 * DAY, tombstone_ttl=DAY)
        )
        assert report.payloads_cleared >= 1 and report.jobs_expired >= 1
        cleared = await manager.get(kept.id, tenant=tenant)
        assert cleared.payload is None and cleared.version == kept.version + 1
        with pytest.raises(JobExpired):
            await manager.get(gone.id, tenant=tenant)


async def test_the_sweeper_forgets_workers_silent_for_long(
    job_manager: JobManager, db: asyncpg.Connection
) -> None:
    gone, live = uuid.uuid4(), uuid.uuid4()
    for worker_id in (gone, live):
        await job_manager.workers.register(worker_id, host="test", pid=1, kinds=None, concurrency=1)
    await db.execute(
        "UPDATE workers SET heartbeat_at = now() - interval '1 hour' WHERE id = $1", gone
    )
    report = await sweep(job_manager, None)
    assert report.workers_pruned >= 1
    remaining = {row["id"] for row in await db.fetch("SELECT id FROM workers")}
    assert live in remaining and gone not in remaining


async def test_an_expired_key_is_refused_until_its_tombstone_is_purged(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind = _kind()
    job = await job_manager.submit(tenant, kind, {"n": 1}, idempotency_key="nightly")
    job = await job_manager.cancel(job.id, tenant=tenant)
    assert job.status is JobStatus.CANCELLED
    await backdate(db, [job.id])
    report = await sweep(job_manager, RETENTION)
    assert report.jobs_expired >= 1
    assert (
        await db.fetchval("SELECT idempotency_key FROM job_tombstones WHERE job_id = $1", job.id)
        == "nightly"
    )

    for payload in ({"n": 1}, {"n": 2}):  # the same request, or another one with the key
        with pytest.raises(JobExpired) as caught:
            await job_manager.submit(tenant, kind, payload, idempotency_key="nightly")
        assert caught.value.job_id == job.id
    # the key is per tenant: another tenant's key of the same name is free
    other = await job_manager.submit(f"{tenant}-b", kind, {"n": 1}, idempotency_key="nightly")
    assert other.id != job.id

    # a sweep within tombstone_ttl keeps the tombstone
    await sweep(job_manager, RETENTION)
    with pytest.raises(JobExpired):
        await job_manager.submit(tenant, kind, {"n": 1}, idempotency_key="nightly")

    await backdate_tombstones(db, tenant)
    report = await sweep(job_manager, RETENTION)
    assert report.tombstones_purged >= 1
    assert await row_counts(db, job.id) == (0, 0, 0)

    fresh, created = await job_manager.submit_or_replay(
        tenant, kind, {"n": 1}, idempotency_key="nightly"
    )
    assert created and fresh.id != job.id and fresh.status is JobStatus.QUEUED
    again, created = await job_manager.submit_or_replay(
        tenant, kind, {"n": 1}, idempotency_key="nightly"
    )
    assert not created and again.id == fresh.id
    # the purged job is now simply unknown
    with pytest.raises(JobNotFound) as caught_missing:
        await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert type(caught_missing.value) is JobNotFound


# --- 4. pinning --------------------------------------------------------------------------------


async def test_jobs_pinned_at_submit_are_exempt_from_retention(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"p": 2}], pinned=True)
    assert job.pinned
    await backdate(db, [job.id], days=400)
    job = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    for _ in range(2):
        report = await sweep(job_manager, RETENTION)
        assert report.hook_failures == 0
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == job
    assert await row_counts(db, job.id) == (1, job.version, 0)


async def test_pin_and_unpin_are_versioned_events_and_idempotent(
    job_manager: JobManager, tenant: str
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"p": 1}])
    pinned = await job_manager.pin(job.id, tenant=tenant)
    assert pinned.pinned and pinned.version == job.version + 1
    again = await job_manager.pin(str(job.id), tenant=tenant)
    assert again == pinned  # a no-op that returns the job
    assert (await event_types(job_manager, job))[-1:] == ["pinned"]
    assert (await event_types(job_manager, job)).count("pinned") == 1

    unpinned = await job_manager.unpin(job.id, tenant=tenant)
    assert not unpinned.pinned and unpinned.version == pinned.version + 1
    assert await job_manager.unpin(job.id, tenant=tenant) == unpinned
    history = await job_manager.events(job.id, tenant=tenant)
    assert [e.type for e in history][-2:] == ["pinned", "unpinned"]
    assert history[-1].seq == unpinned.version
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == unpinned

    # an unfinished job can be pinned too; pinning one pinned at submit is a no-op
    queued = await job_manager.submit(tenant, _kind(), {}, pinned=True)
    assert await job_manager.pin(queued.id, tenant=tenant) == queued
    with pytest.raises(JobNotFound):
        await job_manager.pin(job.id, tenant=f"{tenant}-other")


async def test_pinning_an_expired_or_unknown_job_is_refused(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{}])
    await backdate(db, [job.id])
    await sweep(job_manager, RETENTION)
    for pinned in (True, False):
        call = job_manager.pin if pinned else job_manager.unpin
        with pytest.raises(JobExpired):
            await call(job.id, tenant=tenant)
        with pytest.raises(JobNotFound) as caught:
            await call(uuid.uuid4(), tenant=tenant)
        assert caught.value.code == "job_not_found"


async def test_pinned_jobs_are_exempt_and_unpinning_lets_them_expire(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"p": 1}])
    await job_manager.pin(job.id, tenant=tenant)
    await backdate(db, [job.id], days=400)
    pinned = await job_manager.get(job.id, tenant=tenant, consistency="strong")

    for _ in range(2):
        await sweep(job_manager, RETENTION)
    assert await job_manager.get(job.id, tenant=tenant, consistency="strong") == pinned
    assert await row_counts(db, job.id) == (1, pinned.version, 0)

    unpinned = await job_manager.unpin(job.id, tenant=tenant)
    assert unpinned.payload == {"p": 1}
    report = await sweep(job_manager, RETENTION)
    assert report.jobs_expired >= 1
    with pytest.raises(JobExpired):
        await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert await row_counts(db, job.id) == (0, 0, 1)


# --- 5. per-kind policies ----------------------------------------------------------------------


async def test_a_kind_override_keeps_its_jobs_longer(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    long_lived, keeps_input, ordinary = _kind(), _kind(), _kind()
    policy = Retention(
        payload_ttl=DAY,
        job_ttl=DAY,
        tombstone_ttl=DAY,
        by_kind={
            long_lived: KindRetention(job_ttl=10 * DAY),
            keeps_input: KindRetention.model_validate({"payload_ttl": "30d", "job_ttl": "60d"}),
        },
    )
    [x] = await succeeded(job_manager, tenant, long_lived, [{"x": 1}])
    [y] = await succeeded(job_manager, tenant, keeps_input, [{"y": 1}])
    [o] = await succeeded(job_manager, tenant, ordinary, [{"o": 1}])
    await backdate(db, [x.id, y.id, o.id], days=2)
    y = await job_manager.get(y.id, tenant=tenant, consistency="strong")

    await sweep(job_manager, policy)
    kept_x = await job_manager.get(x.id, tenant=tenant, consistency="strong")
    assert kept_x.payload is None and kept_x.result == x.result  # default payload_ttl applies
    assert await job_manager.get(y.id, tenant=tenant, consistency="strong") == y
    with pytest.raises(JobExpired):
        await job_manager.get(o.id, tenant=tenant, consistency="strong")

    # past its own job_ttl the long-lived kind expires too
    await backdate(db, [x.id, y.id], days=11)
    await sweep(job_manager, policy)
    with pytest.raises(JobExpired):
        await job_manager.get(x.id, tenant=tenant, consistency="strong")
    kept_y = await job_manager.get(y.id, tenant=tenant, consistency="strong")
    assert kept_y.version == y.version and kept_y.payload == {"y": 1}

    # and without the override its jobs follow the defaults
    await sweep(job_manager, RETENTION)
    with pytest.raises(JobExpired):
        await job_manager.get(y.id, tenant=tenant, consistency="strong")


# --- 6. on_expire hooks ------------------------------------------------------------------------


async def test_hooks_run_before_deletion_and_a_failing_one_keeps_only_its_job(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    hooked, plain = _kind(), _kind()
    flaky, steady = await succeeded(job_manager, tenant, hooked, [{"f": 1}, {"s": 1}])
    [other] = await succeeded(job_manager, tenant, plain, [{"o": 1}])
    await backdate(db, [flaky.id, steady.id, other.id])

    calls: list[UUID] = []
    seen_rows: list[int] = []
    hooks = ExpiryHooks()

    @hooks.on_expire(hooked)
    async def remove_artifacts(job: Job) -> None:
        calls.append(job.id)
        assert job.tenant == tenant and job.kind == hooked and job.result is not None
        seen_rows.append((await row_counts(db, job.id))[0])  # the row is still there
        if job.id == flaky.id and calls.count(flaky.id) == 1:
            raise RuntimeError("blob store unavailable")

    first = await sweep(job_manager, RETENTION, hooks)
    assert first.hook_failures == 1
    assert sorted(calls) == sorted([flaky.id, steady.id]) and seen_rows == [1, 1]
    assert await row_counts(db, flaky.id) == (1, flaky.version + 1, 0)  # payload cleared, kept
    for gone in (steady, other):
        assert await row_counts(db, gone.id) == (0, 0, 1)
    kept = await job_manager.get(flaky.id, tenant=tenant, consistency="strong")
    assert kept.status is JobStatus.SUCCEEDED and kept.payload is None

    second = await sweep(job_manager, RETENTION, hooks)
    assert second.hook_failures == 0 and second.jobs_expired >= 1
    assert calls.count(flaky.id) == 2 and calls.count(steady.id) == 1
    assert seen_rows == [1, 1, 1]
    assert await row_counts(db, flaky.id) == (0, 0, 1)
    with pytest.raises(JobExpired):
        await job_manager.get(flaky.id, tenant=tenant, consistency="strong")

    # nothing due is left: a third pass calls no hook
    await sweep(job_manager, RETENTION, hooks)
    assert len(calls) == 3


async def test_a_hook_that_keeps_failing_never_blocks_the_pass(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    broken = _kind()
    jobs = await succeeded(job_manager, tenant, broken, [{"n": n} for n in range(3)])
    [ok] = await succeeded(job_manager, tenant, _kind(), [{}])
    await backdate(db, [j.id for j in jobs] + [ok.id])
    hooks = ExpiryHooks()
    calls: list[UUID] = []

    @hooks.on_expire(broken)
    async def always_fails(job: Job) -> None:
        calls.append(job.id)
        raise OSError("disk gone")

    for attempt in (1, 2):
        report = await sweep(job_manager, RETENTION, hooks)
        assert report.hook_failures == 3
        assert len(calls) == 3 * attempt and len(set(calls)) == 3  # each once per pass
        for job in jobs:
            assert (await row_counts(db, job.id))[0] == 1
    assert await row_counts(db, ok.id) == (0, 0, 1)


# --- 7. batch bounds ---------------------------------------------------------------------------


async def test_expiry_does_not_wait_until_every_due_input_is_cleared(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    """A pass takes its steps in turn, a batch each: when jobs finish faster than inputs are
    cleared, expiry (and the rest of the pass) still runs instead of waiting for that backlog."""
    kind, count = _kind(), _RETENTION_BATCH + 50
    jobs = await succeeded(job_manager, tenant, kind, [{"n": n} for n in range(count + 1)])
    await backdate(db, [j.id for j in jobs[1:]], days=2)  # inputs due, jobs kept
    await backdate(db, [jobs[0].id], days=4)  # due for expiry
    hooks = ExpiryHooks()
    inputs_left: list[int] = []

    @hooks.on_expire(kind)
    async def count_inputs(job: Job) -> None:
        inputs_left.append(
            await db.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant = $1 AND payload IS NOT NULL", tenant
            )
        )

    policy = Retention(payload_ttl=DAY, job_ttl=3 * DAY, tombstone_ttl=DAY)
    report = await sweep(job_manager, policy, hooks)
    assert report.jobs_expired >= 1 and report.payloads_cleared >= count
    assert len(inputs_left) == 1 and inputs_left[0] > 0, inputs_left
    left = "SELECT count(*) FROM jobs WHERE tenant = $1 AND payload IS NOT NULL"
    assert await db.fetchval(left, tenant) == 0


async def test_a_pass_holds_back_no_row_versions_from_vacuum(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    """The transaction that holds the sweeper lock for a pass keeps no snapshot: vacuum may
    remove row versions that die during the pass (the jobs it deletes among them)."""
    kind = _kind()
    jobs = await succeeded(job_manager, tenant, kind, [{"a": 1}])
    await backdate(db, [j.id for j in jobs])
    hooks = ExpiryHooks()
    holders: list[list[tuple[int, str | None]]] = []

    @hooks.on_expire(kind)
    async def lock_holders_horizon(job: Job) -> None:
        rows = await db.fetch(
            "SELECT a.pid, a.backend_xmin::text AS xmin FROM pg_locks AS l"
            " JOIN pg_stat_activity AS a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database()"
            " AND a.state = 'idle in transaction'"
        )
        holders.append([(r["pid"], r["xmin"]) for r in rows])

    report = await sweep(job_manager, RETENTION, hooks)
    assert report.jobs_expired >= 1
    assert len(holders) == 1 and len(holders[0]) == 1, holders  # the sweeper lock's holder
    assert holders[0][0][1] is None, holders


async def test_one_sweep_expires_more_jobs_than_a_batch(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind, count = _kind(), _RETENTION_BATCH + 50
    jobs = await succeeded(job_manager, tenant, kind, [{"n": n} for n in range(count)])
    await db.execute(
        "UPDATE jobs SET finished_at = now() - interval '2 days' - make_interval(secs => random())"
        " WHERE tenant = $1",
        tenant,
    )
    hooks = ExpiryHooks()
    calls: list[UUID] = []

    @hooks.on_expire(kind)
    async def count_calls(job: Job) -> None:
        calls.append(job.id)

    report = await sweep(job_manager, RETENTION, hooks)
    assert report.payloads_cleared >= count and report.jobs_expired >= count
    assert sorted(calls) == sorted(j.id for j in jobs)  # each hook once
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE tenant = $1", tenant) == 0
    assert await db.fetchval("SELECT count(*) FROM job_tombstones WHERE tenant = $1", tenant) == (
        count
    )

    # purging also runs batch after batch: count + 1200 old tombstones
    await db.execute(
        "INSERT INTO job_tombstones (job_id, tenant, kind) SELECT gen_random_uuid(), $1, $2"
        " FROM generate_series(1, 1200)",
        tenant,
        kind,
    )
    await backdate_tombstones(db, tenant)
    report = await sweep(job_manager, RETENTION)
    assert report.tombstones_purged >= count + 1200
    assert await db.fetchval("SELECT count(*) FROM job_tombstones WHERE tenant = $1", tenant) == 0


async def test_a_pass_without_hooks_deletes_batches_with_their_events_and_tombstones(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    """Jobs of kinds with no hook are chosen and deleted in one statement per batch: every one
    goes with its events and leaves a tombstone; a job whose row another transaction holds is
    skipped, not waited for, and goes in the next pass."""
    kind, count = _kind(), _RETENTION_BATCH + 50
    jobs = await succeeded(job_manager, tenant, kind, [{"n": n} for n in range(count)])
    ids = [j.id for j in jobs]
    await backdate(db, ids)
    held = jobs[-1].id
    async with db.transaction():
        await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", held)
        report = await sweep(job_manager, RETENTION)
    assert report.jobs_expired >= count - 1 and report.hook_failures == 0
    assert await row_counts(db, held) == (1, 3, 0)  # nor its input cleared: still 3 events
    rest = ids[:-1]
    left = await db.fetchrow(
        "SELECT (SELECT count(*) FROM jobs WHERE id = ANY($1::uuid[])) AS jobs,"
        " (SELECT count(*) FROM job_events WHERE job_id = ANY($1::uuid[])) AS events,"
        " (SELECT count(*) FROM job_tombstones WHERE job_id = ANY($1::uuid[])) AS tombstones",
        rest,
    )
    assert left is not None and tuple(left) == (0, 0, count - 1)
    await sweep(job_manager, RETENTION)
    assert await row_counts(db, held) == (0, 0, 1)
    with pytest.raises(JobExpired):
        await job_manager.get(held, tenant=tenant, consistency="strong")


# --- the HTTP surface --------------------------------------------------------------------------


@asynccontextmanager
async def http_client(database_url: str, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    """The whole app in-process, its lifespan running, as the key's tenant."""
    settings = settings_of(
        database_url=database_url,
        auth="keys",
        sweep_interval=3600,  # the app's own sweeper: once at start, with nothing due
        payload_ttl="3650d",
        job_ttl="3650d",
        tombstone_ttl="3650d",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http":
                scope["state"] = {**dict(state or {}), **scope.get("state", {})}
            await app(scope, receive, send)

        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=with_state),
            base_url="http://test",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=DEADLINE,
        ) as client:
            yield client


async def test_http_expired_job_is_a_404_problem_with_expired_at(
    job_manager: JobManager, database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"h": 1}])
    key = (await ApiKeys(job_manager).create(tenant)).key
    async with http_client(database_url, key) as client:
        assert (await client.get(f"/jobs/{job.id}")).status_code == 200
        await backdate(db, [job.id])
        await sweep(job_manager, RETENTION)
        tomb_at = await db.fetchval(
            "SELECT expired_at FROM job_tombstones WHERE job_id = $1", job.id
        )

        async def expired_response() -> httpx.Response | None:
            response = await client.get(f"/jobs/{job.id}")
            return response if response.status_code == 404 else None

        gone = await eventually(expired_response, timeout=DEADLINE, what="GET to answer 404")
        body = gone.json()
        assert gone.headers["content-type"].startswith("application/problem+json")
        assert body["code"] == "job_expired" and body["status"] == 404
        assert body["expired_at"].endswith("Z")
        assert datetime.fromisoformat(body["expired_at"]) == tomb_at
        for response in (
            await client.get(f"/jobs/{job.id}/events"),
            await client.post(f"/jobs/{job.id}/cancel"),
        ):
            assert response.status_code == 404, response.text
            assert response.json()["code"] == "job_expired", response.text
        unknown = await client.get(f"/jobs/{uuid.uuid4()}")
        assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"
        assert "expired_at" not in unknown.json()


async def test_http_pin_and_unpin(job_manager: JobManager, database_url: str, tenant: str) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"h": 1}])
    key = (await ApiKeys(job_manager).create(tenant)).key
    async with http_client(database_url, key) as client:
        pinned = await client.post(f"/jobs/{job.id}/pin")
        assert pinned.status_code == 200, pinned.text
        assert pinned.json()["pinned"] is True
        assert pinned.json()["version"] == job.version + 1
        unpinned = await client.post(f"/jobs/{job.id}/unpin")
        assert unpinned.status_code == 200, unpinned.text
        assert unpinned.json()["pinned"] is False
        unknown = await client.post(f"/jobs/{uuid.uuid4()}/pin")
        assert unknown.status_code == 404 and unknown.json()["code"] == "job_not_found"


# --- bugs --------------------------------------------------------------------------------------


async def test_a_poll_mode_replica_drops_an_expired_job_within_the_bound(
    job_manager: JobManager, database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    interval = 0.25
    bound = 2 * interval + 1.0
    [job] = await succeeded(job_manager, tenant, _kind(), [{"r": 1}])
    await backdate(db, [job.id])
    await sweep(job_manager, KEEP_JOBS)  # clear the payload first: the expiry is the only change
    cleared = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    async with await JobManager.connect(
        database_url, feed_mode="poll", feed_interval=interval, cache_ttl=30.0
    ) as replica:
        assert await replica.get(job.id, tenant=tenant) == cleared
        hits = replica.cache_stats().hits
        assert await replica.get(job.id, tenant=tenant) == cleared
        assert replica.cache_stats().hits == hits + 1

        await sweep(job_manager, RETENTION)

        async def dropped() -> bool:
            try:
                await replica.get(job.id, tenant=tenant)
            except JobExpired:
                return True
            return False

        await eventually(
            dropped, timeout=bound + 1.0, what="the replica to stop serving the expired job"
        )


async def test_a_poll_mode_sweeper_sends_no_notification(
    job_manager: JobManager, database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    [job] = await succeeded(job_manager, tenant, _kind(), [{"q": 1}])
    await backdate(db, [job.id])
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await listener.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))
        async with await JobManager.connect(database_url, feed_mode="poll") as quiet:
            await sweep(quiet, RETENTION)
        assert await row_counts(db, job.id) == (0, 0, 1)
        marker = str(uuid.uuid4())
        await db.execute("SELECT pg_notify($1, $2)", CHANNEL, marker)
        received: list[str] = []
        while (payload := await asyncio.wait_for(heard.get(), DEADLINE)) != marker:
            received.append(payload)
        about_job = [p for p in received if str(job.id) in p]
        assert about_job == [], about_job
    finally:
        await listener.close()


# --- 7. the partial indexes (EXPLAIN, not timing; keep last: the fixture adds many rows) -------

ROWS = 20_000


@pytest.fixture(scope="module")
async def big_tables(database_url: str) -> str:
    """Many finished jobs (with payloads) and tombstones, none of them due, analysed."""
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.execute(
            f"""
            INSERT INTO jobs (id, tenant, kind, status, payload, finished_at)
            SELECT gen_random_uuid(), 'plans', 'k', 'succeeded', '{{"n": 1}}'::jsonb,
                   now() - make_interval(secs => g)
            FROM generate_series(1, {ROWS}) AS g;
            INSERT INTO jobs (id, tenant, kind, payload)
            SELECT gen_random_uuid(), 'plans', 'k', '{{}}'::jsonb FROM generate_series(1, 20);
            INSERT INTO job_tombstones (job_id, tenant, kind, expired_at)
            SELECT gen_random_uuid(), 'plans', 'k', now() - make_interval(secs => g)
            FROM generate_series(1, {ROWS}) AS g;
            ANALYZE jobs;
            ANALYZE job_tombstones;
            """
        )
    finally:
        await conn.close()
    return database_url


# generic plans (as jobkeeper runs them): one plan whatever the TTL, kinds and limit
async def test_due_for_expiry_uses_the_partial_retention_index(big_tables: str) -> None:
    plan = await explain(big_tables, _DUE_FOR_EXPIRY.text)
    assert "ix_jobs_retention" in index_names(plan), json.dumps(plan, indent=1)


async def test_clear_payloads_uses_the_partial_payload_index(big_tables: str) -> None:
    plan = await explain(big_tables, _CLEAR_PAYLOADS.text)
    assert "ix_jobs_payload_retention" in index_names(plan), json.dumps(plan, indent=1)


async def test_expiry_without_hooks_chooses_through_the_partial_retention_index(
    big_tables: str,
) -> None:
    plan = await explain(big_tables, _EXPIRE_DUE.text)
    assert "ix_jobs_retention" in index_names(plan), json.dumps(plan, indent=1)


async def test_clearing_without_observers_uses_the_partial_payload_index(big_tables: str) -> None:
    plan = await explain(big_tables, _CLEAR_PAYLOADS_IDS.text)
    assert "ix_jobs_payload_retention" in index_names(plan), json.dumps(plan, indent=1)


async def test_clearing_leaves_jobs_due_for_deletion_out_of_its_index_range(
    big_tables: str,
) -> None:
    """Behind a retention backlog, the oldest inputs belong to jobs due for deletion: the scan
    must start past them (a bound of the index range), not read and discard them each batch."""
    plan = await explain(big_tables, _CLEAR_PAYLOADS.text)
    [scan] = [n for n in plan_nodes(plan) if n.get("Index Name") == "ix_jobs_payload_retention"]
    assert ">=" in scan["Index Cond"] and "<" in scan["Index Cond"], json.dumps(scan, indent=1)


async def test_purge_tombstones_uses_the_expiry_index(big_tables: str) -> None:
    plan = await explain(big_tables, _PURGE_TOMBSTONES.text)
    assert "ix_job_tombstones_expired_at" in index_names(plan), json.dumps(plan, indent=1)


async def test_a_sweep_with_nothing_due_leaves_the_big_tables_alone(
    big_tables: str, job_manager: JobManager
) -> None:
    await sweep(job_manager, RETENTION)
    conn = await asyncpg.connect(asyncpg_dsn(big_tables))
    try:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant = 'plans' AND payload IS NOT NULL"
            )
            == ROWS + 20
        )
        assert (
            await conn.fetchval("SELECT count(*) FROM job_tombstones WHERE tenant = 'plans'")
            == ROWS
        )
    finally:
        await conn.close()
