"""``JobManager.submit_many`` against a real Postgres: all or nothing, idempotent replays and
conflicts per item, keys repeated within a batch, queue limits on the batch as a whole, the
caller's transaction, and workers running what a batch queued."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from jobkeeper import (
    IdempotencyConflict,
    InvalidRequest,
    JobContext,
    JobManager,
    JobSpec,
    JobStatus,
    QueueFull,
    Submitted,
    TaskRegistry,
)
from jobkeeper.errors import JobExpired
from jobkeeper.settings import asyncpg_dsn, sqlalchemy_url
from jobkeeper.testing import data_layer
from support import eventually, make_worker


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(database_url))
    try:
        yield engine
    finally:
        await engine.dispose()


async def written(db: asyncpg.Connection, tenant: str) -> tuple[int, int]:
    """The tenant's rows in ``jobs`` and ``job_events``."""
    jobs = await db.fetchval("SELECT count(*) FROM jobkeeper.jobs WHERE tenant = $1", tenant)
    events = await db.fetchval(
        "SELECT count(*) FROM jobkeeper.job_events e JOIN jobkeeper.jobs j ON j.id = e.job_id"
        " WHERE j.tenant = $1",
        tenant,
    )
    return jobs, events


# --- the batch is written whole ----------------------------------------------------------------


async def test_a_batch_is_queued_in_order_each_job_with_its_event(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    later = datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = await job_manager.submit_many(
        tenant,
        [
            JobSpec("batch.a", {"n": 0}),
            {"kind": "batch.b", "payload": [1, 2], "priority": 7, "max_attempts": 1},
            JobSpec("batch.c", None, concurrency_key="c", run_after=later, pinned=True),
        ],
    )
    assert [s.created for s in result] == [True, True, True]
    assert [s.job.kind for s in result] == ["batch.a", "batch.b", "batch.c"]
    first, second, third = (s.job for s in result)
    assert first.payload == {"n": 0} and first.status is JobStatus.QUEUED and first.version == 1
    assert (second.payload, second.priority, second.max_attempts) == ((1, 2), 7, 1)
    assert (third.run_after, third.concurrency_key, third.pinned) == (later, "c", True)
    for submitted in result:
        stored = await job_manager.get(submitted.job.id, tenant=tenant, consistency="strong")
        assert stored == submitted.job
        events = await job_manager.events(submitted.job.id, tenant=tenant)
        assert [(e.seq, e.type, dict(e.data)) for e in events] == [
            (1, "submitted", {"kind": submitted.job.kind})
        ]
    assert await written(db, tenant) == (3, 3)


async def test_a_batch_leaves_the_cache_alone_and_a_read_fills_it(
    job_manager: JobManager, tenant: str
) -> None:
    """A batch's jobs are not cached (they would push out as many hot entries): the first read
    of one misses and fills the cache, the next hits."""
    before = job_manager.cache_stats()
    [first, *_] = await job_manager.submit_many(
        tenant, [JobSpec("batch.a", {"n": n}) for n in range(5)]
    )
    assert job_manager.cache_stats().size == before.size
    assert await job_manager.get(first.job.id, tenant=tenant) == first.job
    assert await job_manager.get(first.job.id, tenant=tenant) == first.job
    after = job_manager.cache_stats()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert after.size == before.size + 1


async def test_an_empty_batch_writes_nothing(job_manager: JobManager, tenant: str) -> None:
    assert await job_manager.submit_many(tenant, []) == []


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"kind": "no spaces allowed"}, "kind"),
        ({"kind": "ok", "payload": float("nan")}, "payload"),
        ({"kind": "ok", "priority": -1}, "priority"),
        ({"kind": "ok", "run_after": datetime(2030, 1, 1)}, "run_after"),  # naive
        ({"kind": "ok", "colour": "red"}, "colour"),
        ({"payload": 1}, "kind"),
        ("not an item", "item"),
    ],
)
async def test_one_bad_item_refuses_the_batch_naming_it(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection, bad: Any, field: str
) -> None:
    items = [{"kind": "fine", "payload": n} for n in range(4)]
    items.insert(2, bad)
    with pytest.raises(InvalidRequest) as refused:
        await job_manager.submit_many(tenant, items)
    assert refused.value.index == 2 and refused.value.field == field
    assert str(refused.value).startswith("item 2: ")
    assert await written(db, tenant) == (0, 0)


async def test_a_replayed_batch_returns_the_same_jobs(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    items = [JobSpec("batch.k", {"n": n}, idempotency_key=f"k{n}") for n in range(5)]
    first = await job_manager.submit_many(tenant, items)
    again = await job_manager.submit_many(tenant, items)
    assert [s.created for s in first] == [True] * 5
    assert [s.created for s in again] == [False] * 5
    assert [s.job.id for s in again] == [s.job.id for s in first]
    # replays and new jobs mixed: only the new one is created
    mixed = await job_manager.submit_many(
        tenant, [items[3], JobSpec("batch.k", {"n": 9}, idempotency_key="k9"), items[0]]
    )
    assert [s.created for s in mixed] == [False, True, False]
    assert (mixed[0].job.id, mixed[2].job.id) == (first[3].job.id, first[0].job.id)
    assert await written(db, tenant) == (6, 6)


async def test_a_single_submit_and_a_batch_item_replay_each_other(
    job_manager: JobManager, tenant: str
) -> None:
    single = await job_manager.submit(tenant, "batch.one", {"a": 1}, idempotency_key="same")
    [item] = await job_manager.submit_many(
        tenant, [JobSpec("batch.one", {"a": 1}, idempotency_key="same")]
    )
    assert item == Submitted(single, False)
    [batched] = await job_manager.submit_many(
        tenant, [JobSpec("batch.two", 2, idempotency_key="other")]
    )
    again, created = await job_manager.submit_or_replay(
        tenant, "batch.two", 2, idempotency_key="other"
    )
    assert (again.id, created) == (batched.job.id, False)


async def test_a_key_reused_for_another_request_refuses_the_batch(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    existing = await job_manager.submit(tenant, "batch.k", {"n": 1}, idempotency_key="taken")
    with pytest.raises(IdempotencyConflict) as conflict:
        await job_manager.submit_many(
            tenant,
            [
                JobSpec("batch.k", {"n": 0}),
                JobSpec("batch.k", {"n": 0}, idempotency_key="free"),
                JobSpec("batch.k", {"n": 2}, idempotency_key="taken"),
            ],
        )
    assert conflict.value.index == 2 and conflict.value.job_id == existing.id
    assert conflict.value.idempotency_key == "taken"
    assert await written(db, tenant) == (1, 1)


async def test_a_key_repeated_within_a_batch(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    same = JobSpec("batch.dup", {"x": 1}, idempotency_key="dup")
    result = await job_manager.submit_many(tenant, [same, JobSpec("batch.other"), same])
    assert [s.created for s in result] == [True, True, False]
    assert result[0].job.id == result[2].job.id != result[1].job.id
    assert await written(db, tenant) == (2, 2)

    other = f"{tenant}-2"
    with pytest.raises(InvalidRequest) as refused:
        await job_manager.submit_many(
            other,
            [same, JobSpec("batch.other"), JobSpec("batch.dup", {"x": 2}, idempotency_key="dup")],
        )
    assert refused.value.index == 2 and refused.value.field == "idempotency_key"
    assert "item 0" in str(refused.value)
    assert await written(db, other) == (0, 0)


async def test_the_key_of_an_expired_job_refuses_the_batch(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    job = await job_manager.submit(tenant, "batch.old", {}, idempotency_key="old")
    done = await data_layer(job_manager).jobs.transition(
        job.id, tenant, JobStatus.CANCELLED, event="test"
    )
    assert await job_manager.expire([done]) == [job.id]
    with pytest.raises(JobExpired) as expired:
        await job_manager.submit_many(
            tenant, [JobSpec("batch.new"), JobSpec("batch.old", {}, idempotency_key="old")]
        )
    assert expired.value.index == 1 and expired.value.job_id == job.id
    assert await written(db, tenant) == (0, 0)


async def test_concurrent_batches_sharing_keys_make_each_job_once(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    """Batches racing on the same keys, each in another order: one job per key, every batch
    gets those jobs back, and none deadlocks on another (rows go in by key)."""
    keys = [f"race-{n:04}" for n in range(1000)]
    async with await JobManager.connect(database_url, pool_size=8) as manager:

        async def batch(order: int) -> list[Submitted]:
            chosen = keys[order:] + keys[:order]
            if order % 2:
                chosen.reverse()
            return await manager.submit_many(
                tenant, [JobSpec("batch.race", {"k": k}, idempotency_key=k) for k in chosen]
            )

        results = await asyncio.gather(*(batch(order) for order in range(0, 1000, 125)))
    ids: dict[str, uuid.UUID] = {}
    created = 0
    for result in results:
        for submitted in result:
            key = submitted.job.idempotency_key
            assert key is not None
            assert ids.setdefault(key, submitted.job.id) == submitted.job.id
            created += submitted.created
    assert created == len(keys)
    assert await written(db, tenant) == (len(keys), len(keys))


async def test_a_key_committed_by_another_transaction_mid_batch_is_a_replay(
    job_manager: JobManager, database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    """The batch reads its keys ("a" is stored, "b" is not: another transaction has inserted it
    but not committed), then inserts "b" and waits for that transaction; once it commits, the
    batch starts over and finds "b"'s job."""
    stored = await job_manager.submit(tenant, "batch.k", 1, idempotency_key="a")
    other = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        tx = other.transaction()
        await tx.start()
        theirs = await job_manager.submit(
            tenant, "batch.k", 2, idempotency_key="b", connection=other
        )
        batch = asyncio.create_task(
            job_manager.submit_many(
                tenant,
                [
                    JobSpec("batch.k", 2, idempotency_key="b"),
                    JobSpec("batch.k", 1, idempotency_key="a"),
                ],
            )
        )
        await eventually(
            lambda: db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'jobkeeper' AND wait_event_type = 'Lock'"
            ),
            what="the batch to wait for the other transaction's key",
        )
        await tx.commit()
        result = await batch
    finally:
        await other.close()
    assert result == [Submitted(result[0].job, False), Submitted(stored, False)]
    assert result[0].job.id == theirs.id
    assert await written(db, tenant) == (2, 2)


# --- queue limits apply to the batch as a whole ---------------------------------------------------


async def test_a_batch_that_would_overfill_the_queue_is_refused_whole(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    async with await JobManager.connect(database_url, max_queued=5) as limited:
        await limited.submit_many(tenant, [JobSpec("batch.q")] * 3)
        with pytest.raises(QueueFull) as full:
            await limited.submit_many(tenant, [JobSpec("batch.q")] * 3)
        assert full.value.limit == 5 and full.value.retry_after == 5.0
        assert await written(db, tenant) == (3, 3)
        # replays take no room: only the new jobs count
        keyed = [JobSpec("batch.q", n, idempotency_key=f"q{n}") for n in range(2)]
        assert [s.created for s in await limited.submit_many(tenant, keyed)] == [True, True]
        assert [s.created for s in await limited.submit_many(tenant, keyed)] == [False, False]
        with pytest.raises(QueueFull):
            await limited.submit_many(tenant, [*keyed, JobSpec("batch.q")])
    assert await written(db, tenant) == (5, 5)


async def test_a_kinds_limit_names_the_kind(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    async with await JobManager.connect(database_url, max_queued_per_kind=2) as limited:
        await limited.submit_many(tenant, [JobSpec("batch.a"), JobSpec("batch.b")])
        with pytest.raises(QueueFull) as full:
            await limited.submit_many(
                tenant, [JobSpec("batch.a"), JobSpec("batch.b"), JobSpec("batch.b")]
            )
        assert full.value.limit == 2 and "batch.b" in str(full.value)
        ok = await limited.submit_many(tenant, [JobSpec("batch.a"), JobSpec("batch.b")])
        assert [s.created for s in ok] == [True, True]
    assert await written(db, tenant) == (4, 4)


# --- in the caller's transaction ------------------------------------------------------------------


async def test_a_batch_in_a_rolled_back_transaction_never_existed(
    job_manager: JobManager, engine: AsyncEngine, tenant: str, db: asyncpg.Connection
) -> None:
    async with AsyncSession(engine) as session:
        result = await job_manager.submit_many(
            tenant, [JobSpec("batch.tx", n) for n in range(3)], connection=session
        )
        assert len(result) == 3
        await session.rollback()
    assert await written(db, tenant) == (0, 0)


async def test_a_batch_commits_with_the_callers_transaction_and_wakes_a_worker(
    database_url: str, job_manager: JobManager, tenant: str
) -> None:
    """The worker polls only every 60 s: running the jobs within seconds of the commit shows
    the commit itself woke it."""
    kind = f"batch.{uuid.uuid4().hex[:8]}"
    tasks = TaskRegistry()
    ran: set[uuid.UUID] = set()

    @tasks.task(kind)
    async def handle(ctx: JobContext, payload: Any) -> None:
        ran.add(ctx.job.id)

    async with await JobManager.connect(database_url, role="worker", pool_size=2) as side:
        worker = make_worker(side, tasks, kinds=[kind], poll_interval=60.0)
        running = asyncio.create_task(worker.run())
        try:
            conn = await asyncpg.connect(asyncpg_dsn(database_url))
            try:
                async with conn.transaction():
                    result = await job_manager.submit_many(
                        tenant, [JobSpec(kind, n) for n in range(5)], connection=conn
                    )
                    claimed = await job_manager.claim(
                        uuid.uuid4(), kinds=[kind], limit=10, lease_seconds=30
                    )
                    assert claimed == []  # invisible to everyone else until the commit
            finally:
                await conn.close()
            ids = {s.job.id for s in result}
            await eventually(lambda: ids <= ran, what="the woken worker to run the batch")
        finally:
            worker.stop()
            await running
    for job_id in ids:
        done = await job_manager.get(job_id, tenant=tenant, consistency="strong")
        assert done.status is JobStatus.SUCCEEDED


async def test_a_refused_batch_leaves_the_callers_transaction_usable(
    job_manager: JobManager, engine: AsyncEngine, tenant: str, db: asyncpg.Connection
) -> None:
    """Nothing of the refused batch stays in the transaction (it ran in a savepoint), and the
    caller's own writes and a later batch commit."""
    taken = await job_manager.submit(tenant, "batch.k", 1, idempotency_key="taken")
    async with engine.connect() as conn, conn.begin():
        await conn.execute(sa.text("CREATE TEMP TABLE mine (n int) ON COMMIT DROP"))
        await conn.execute(sa.text("INSERT INTO mine VALUES (1)"))
        with pytest.raises(IdempotencyConflict):
            await job_manager.submit_many(
                tenant,
                [JobSpec("batch.k", 0), JobSpec("batch.k", 2, idempotency_key="taken")],
                connection=conn,
            )
        replay = await job_manager.submit_many(
            tenant,
            [JobSpec("batch.k", 1, idempotency_key="taken"), JobSpec("batch.k", 3)],
            connection=conn,
        )
        assert [s.created for s in replay] == [False, True] and replay[0].job.id == taken.id
        assert (await conn.execute(sa.text("SELECT count(*) FROM mine"))).scalar() == 1
    assert await written(db, tenant) == (2, 2)


async def test_limits_hold_in_the_callers_transaction(
    database_url: str, tenant: str, db: asyncpg.Connection
) -> None:
    async with await JobManager.connect(database_url, max_queued=3) as limited:
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            async with conn.transaction():
                await limited.submit_many(tenant, [JobSpec("batch.l")] * 2, connection=conn)
                with pytest.raises(QueueFull):
                    await limited.submit_many(tenant, [JobSpec("batch.l")] * 2, connection=conn)
                await limited.submit_many(tenant, [JobSpec("batch.l")], connection=conn)
        finally:
            await conn.close()
    assert await written(db, tenant) == (3, 3)


# --- the same outcome as one submit per item ---------------------------------------------------

_ITEMS = st.lists(
    st.builds(
        JobSpec,
        kind=st.sampled_from(["p.a", "p.b"]),
        payload=st.sampled_from([None, 1, {"x": 1}]),
        idempotency_key=st.sampled_from([None, "k1", "k2", "k3"]),
    ),
    max_size=8,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(before=_ITEMS, items=_ITEMS)
async def test_a_batch_has_the_outcome_of_one_submit_per_item(
    job_manager: JobManager, before: list[JobSpec], items: list[JobSpec]
) -> None:
    """Against the same history (``before``, submitted one by one in two tenants), a batch
    gives what submitting its items one by one gives: the same created flags and the same
    items sharing a job; or, where one by one fails at item ``i``, an error about item ``i``
    of the same class, with nothing written."""
    one_by_one, batched = f"seq-{uuid.uuid4().hex[:10]}", f"bat-{uuid.uuid4().hex[:10]}"

    async def submit(tenant: str, spec: JobSpec) -> tuple[uuid.UUID, bool]:
        job, created = await job_manager.submit_or_replay(
            tenant, spec.kind, spec.payload, idempotency_key=spec.idempotency_key
        )
        return job.id, created

    for tenant in (one_by_one, batched):
        for spec in before:
            with contextlib.suppress(IdempotencyConflict):
                await submit(tenant, spec)
    expected: list[tuple[uuid.UUID, bool]] = []
    failed: int | None = None
    for index, spec in enumerate(items):
        try:
            expected.append(await submit(one_by_one, spec))
        except IdempotencyConflict:
            failed = index
            break
    existing = {job.id for job in (await job_manager.list(tenant=batched, limit=500)).items}
    try:
        result = await job_manager.submit_many(batched, items)
    except (IdempotencyConflict, InvalidRequest) as exc:
        # the batch names an item that conflicts with a stored job or an earlier item: one by
        # one, that item (or an earlier one) fails too
        assert failed is not None and exc.index is not None and exc.index >= failed
        after = {job.id for job in (await job_manager.list(tenant=batched, limit=500)).items}
        assert after == existing
        return
    assert failed is None
    assert [s.created for s in result] == [created for _, created in expected]
    same_job = [[a.job.id == b.job.id for b in result] for a in result]
    assert same_job == [[a[0] == b[0] for b in expected] for a in expected]
    assert not any(s.job.id in existing for s in result if s.created)


async def test_an_item_of_a_batch_runs_on_a_worker_like_any_job(
    job_manager: JobManager, tenant: str
) -> None:
    kind = f"batch.{uuid.uuid4().hex[:8]}"
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def handle(ctx: JobContext, payload: Any) -> Any:
        return {"doubled": payload * 2}

    result = await job_manager.submit_many(
        tenant, [JobSpec(kind, n, run_after=datetime.now(UTC) - timedelta(1)) for n in range(50)]
    )
    worker = make_worker(job_manager, tasks, kinds=[kind])
    running = asyncio.create_task(worker.run())
    try:

        async def all_done() -> bool:
            page = await job_manager.list(tenant=tenant, status=JobStatus.SUCCEEDED, limit=100)
            return len(page.items) == 50

        await eventually(all_done, what="the worker to run the 50 jobs of the batch")
    finally:
        worker.stop()
        await running
    for submitted in result:
        done = await job_manager.get(submitted.job.id, tenant=tenant, consistency="strong")
        assert done.result == {"doubled": submitted.job.payload * 2}
