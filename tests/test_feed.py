"""The change feed: changes reach other managers' caches, by notification or by catch-up."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobkeeper.cache import JobCache
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job, Progress
from jobkeeper.feed import ChangeFeed
from jobkeeper.manager import JobManager
from jobkeeper.postgres import CHANNEL, Postgres, notify
from jobkeeper.postgres.notify import CANCEL_REQUESTED, catch_up, encode, open_feed
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import data_layer
from support import eventually, make_job, terminate_feeds

DEADLINE = 10.0


async def running_job(manager: JobManager, tenant: str) -> Job:
    job = await manager.submit(tenant, "feed.test", {})
    return await data_layer(manager).jobs.transition(
        job.id, tenant, JobStatus.RUNNING, event="claimed"
    )


async def test_a_change_on_one_manager_reaches_another(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(database_url) as other:
        job = await job_manager.submit(tenant, "feed.test", {})
        assert (await other.get(job.id, tenant=tenant)).version == 1  # now cached there
        await job_manager.cancel(job.id, tenant=tenant)

        async def other_sees_v2() -> bool:
            return (await other.get(job.id, tenant=tenant)).version == 2

        await eventually(other_sees_v2, what="the other manager to see the cancel")
        assert other.feed_status().notifications >= 1


async def test_lost_notifications_are_applied_by_the_catch_up_after_reconnect(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    # periodic catch-up off: only the catch-up that follows a reconnect can help this replica
    async with await JobManager.connect(database_url, feed_interval=3600) as replica:
        job = await running_job(job_manager, tenant)
        assert (await replica.get(job.id, tenant=tenant)).version == 2
        reconnects = replica.feed_status().reconnects

        # three changes whose notifications never arrive (a writer that sends none)
        silent = Postgres.create(database_url, notify=False)
        try:
            for _ in range(3):
                await silent.jobs.progress(job.id, tenant, _progress())
        finally:
            await silent.close()
        assert (await replica.get(job.id, tenant=tenant)).version == 2  # lost, as promised

        assert await terminate_feeds(database_url) >= 1

        async def reconnected() -> bool:
            status = replica.feed_status()
            return status.reconnects > reconnects and status.vouching

        await eventually(reconnected, what="the replica's feed to reconnect")
        assert (await replica.get(job.id, tenant=tenant)).version == 5


async def test_a_withheld_notification_is_served_stale_no_longer_than_the_catch_up_bound(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    """The staleness bound, tested: a change whose notification never comes (its writer sends
    none) is served at its old version only until the next periodic catch-up, within
    2 x feed_interval + 1 s of the commit (docs/consistency.md), then at the new one."""
    interval = 0.5
    bound = 2 * interval + 1.0
    async with await JobManager.connect(database_url, feed_interval=interval) as replica:
        job = await running_job(job_manager, tenant)
        assert (await replica.get(job.id, tenant=tenant)).version == 2  # cached
        silent = Postgres.create(database_url, notify=False)
        try:
            changed = await silent.jobs.progress(job.id, tenant, _progress())
        finally:
            await silent.close()
        served: list[int] = []

        async def fresh() -> bool:
            served.append((await replica.get(job.id, tenant=tenant)).version)
            return served[-1] == changed.version

        # generous scheduling slack on top of the promised bound, never a fixed sleep
        await eventually(fresh, timeout=bound + 2.0, what="the catch-up to bring the change")
        assert set(served) <= {2, changed.version}  # old, then new: never anything else
        assert replica.feed_status().catch_ups >= 1


async def test_cache_is_bypassed_while_the_feed_cannot_vouch(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    now = [0.0]
    postgres = Postgres.create(database_url, notify=False)
    cache = JobCache(100, 3600)
    feed = ChangeFeed(
        postgres.database,
        mode="poll",
        interval=3600,  # no catch-up during the test: only the clock decides
        max_jobs=100,
        on_reset=cache.reset,
        clock=lambda: now[0],
    )
    feed.subscribe(lambda job_id, version, _status: cache.invalidate(job_id, version))
    await feed.start()
    async with JobManager(postgres, cache, feed) as replica:
        job = await job_manager.submit(tenant, "feed.test", {})
        assert (await replica.get(job.id, tenant=tenant)).version == 1
        await job_manager.cancel(job.id, tenant=tenant)
        # in sync a moment ago, so the cached version is served (the poll bound in action)
        assert (await replica.get(job.id, tenant=tenant)).version == 1
        now[0] += 3600 * 3  # the last catch-up is now far too old to vouch for anything
        assert not replica.feed_status().vouching
        assert (await replica.get(job.id, tenant=tenant)).version == 2


async def test_poll_mode_sees_changes_without_notifications(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(
        database_url, feed_mode="poll", feed_interval=0.05
    ) as replica:
        job = await job_manager.submit(tenant, "feed.test", {})
        assert (await replica.get(job.id, tenant=tenant)).version == 1
        await job_manager.cancel(job.id, tenant=tenant)

        async def replica_sees_v2() -> bool:
            return (await replica.get(job.id, tenant=tenant)).version == 2

        await eventually(replica_sees_v2, what="the poll-mode replica to see the cancel")
        assert replica.feed_status().notifications == 0
        assert replica.feed_status().mode == "poll"


async def test_batch_listeners_hear_notified_and_caught_up_changes_with_text_ids(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(database_url, feed_interval=0.05) as bare:
        batches: list[list[tuple[Any, ...]]] = []
        unsubscribe = bare.subscribe_batches(
            lambda changes: batches.append([tuple(change) for change in changes])
        )
        job = await job_manager.submit(tenant, "feed.test", {})

        def heard(version: int, status: str | None) -> bool:
            return any((str(job.id), version, status) in batch for batch in batches)

        async def notified() -> bool:
            return heard(1, "queued")

        await eventually(notified, what="the submit's notification")
        quiet = Postgres.create(database_url, notify=False)
        try:
            await quiet.jobs.cancel(job.id, tenant)  # no notification: only a catch-up finds it
        finally:
            await quiet.close()

        async def caught_up() -> bool:
            return heard(2, None)

        await eventually(caught_up, what="the catch-up to report the silent cancel")
        unsubscribe()
        seen = len(batches)
        later: list[str] = []
        bare.subscribe_batches(lambda changes: later.extend(c[0] for c in changes))
        marker = await job_manager.submit(tenant, "feed.marker", {})

        async def marker_heard() -> bool:
            return str(marker.id) in later

        await eventually(marker_heard, what="the marker's notification")
        assert len(batches) == seen  # unsubscribed: nothing more arrived there


async def test_a_change_whose_notification_fails_is_committed_and_found_by_the_catch_up(
    job_manager: JobManager, database_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changes are announced right after their commit; if that fails (here: the statement is
    broken; in life, the connection drops in between), the write still stands and reports
    success, and every feed finds the change by its catch-up."""
    async with await JobManager.connect(database_url, feed_interval=0.05) as replica:
        job = await job_manager.submit(tenant, "feed.test", {})
        assert (await replica.get(job.id, tenant=tenant)).version == 1
        monkeypatch.setattr(notify, "_ANNOUNCE", "SELECT 1 / 0")
        cancelled = await job_manager.cancel(job.id, tenant=tenant)
        assert cancelled.status == JobStatus.CANCELLED
        monkeypatch.undo()

        async def replica_sees_it() -> bool:
            return (await replica.get(job.id, tenant=tenant)).version == 2

        await eventually(replica_sees_it, what="the catch-up to find the unannounced cancel")


async def test_a_manager_without_cache_hears_notifications_and_runs_no_catch_up(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    """A worker process's manager (role "worker") keeps no cache, so the catch-up (a read of
    every event since the last one) would repair nothing: it only checks its connection."""
    async with await JobManager.connect(database_url, role="worker", feed_interval=0.05) as bare:
        heard: list[str] = []
        bare.subscribe_batches(lambda changes: heard.extend(c[0] for c in changes))
        job = await job_manager.submit(tenant, "feed.test", {})

        async def notified() -> bool:
            return str(job.id) in heard and bare.feed_status().seconds_since_sync is not None

        await eventually(notified, what="the submit's notification")
        since = time.monotonic()

        async def checked_again() -> bool:  # a periodic check ran after the notification
            ago = bare.feed_status().seconds_since_sync
            return ago is not None and time.monotonic() - ago > since

        await eventually(checked_again, what="a periodic connection check")
        status = bare.feed_status()
        assert status.catch_ups == 0 and status.connected and status.notifications >= 1
    async with await JobManager.connect(database_url, role="worker", feed_mode="poll") as polling:
        assert polling.feed_status().catch_ups >= 1  # in poll mode it is the only path


async def test_one_statement_sends_one_notification_and_poll_mode_sends_none(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))
        job = await job_manager.submit(tenant, "feed.test", {})
        payload = json.loads(await asyncio.wait_for(heard.get(), DEADLINE))
        assert payload == [[str(job.id), 1, "queued"]]

        quiet = Postgres.create(database_url, notify=False)
        try:
            await quiet.jobs.cancel(job.id, tenant)
        finally:
            await quiet.close()
        # a marker write through the notifying repository: the queue holds it and nothing before
        await job_manager.submit(tenant, "feed.marker", {})
        marker = json.loads(await asyncio.wait_for(heard.get(), DEADLINE))
        assert marker[0][2] == "queued" and marker[0][0] != str(job.id)
        assert heard.empty()
    finally:
        await conn.close()


async def test_a_large_batch_is_announced_in_chunks_that_fit_a_notification(
    job_manager: JobManager, database_url: str
) -> None:
    # the longest tenant, in 2-byte characters (notifications do not carry it)
    tenant = "é" * 128
    submitted = {(await job_manager.submit(tenant, "feed.bulk", {})).id for _ in range(300)}
    heard: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await conn.add_listener(CHANNEL, lambda *args: heard.put_nowait(args[-1]))
        leases = await job_manager.claim(uuid4(), kinds=["feed.bulk"], limit=300, lease_seconds=60)
        assert {lease.job.id for lease in leases} == submitted
        announced: dict[str, tuple[int, str]] = {}
        while len(announced) < len(submitted):
            payload = await asyncio.wait_for(heard.get(), DEADLINE)
            assert len(payload.encode()) <= 8000
            for job_id, version, status in json.loads(payload):
                announced[job_id] = (version, status)
        assert announced == {str(lease.job.id): (2, "running") for lease in leases}
    finally:
        await conn.close()


async def test_catch_up_finds_a_slow_transaction_that_commits_after_a_newer_one(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    slow_job = await job_manager.submit(tenant, "feed.test", {})
    fast_job = await job_manager.submit(tenant, "feed.test", {})
    feed = await open_feed(data_layer(job_manager).database, listen=None, on_lost=lambda: None)
    slow = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        cursor = await feed.horizon()
        tx = slow.transaction()
        await tx.start()
        await slow.fetchval("SELECT pg_current_xact_id()")  # takes its id before the fast one
        await job_manager.cancel(fast_job.id, tenant=tenant)  # commits first, with a later id

        found = await catch_up(data_layer(job_manager).database, cursor, 100)
        assert (fast_job.id, 2) in found.changes
        cursor = found.cursor  # cannot pass the slow transaction, which is still running

        await slow.execute(
            "UPDATE jobs SET version = 2 WHERE id = $1;"
            " INSERT INTO job_events (job_id, seq, type) VALUES ($1, 2, 'manual')".replace(
                "$1", f"'{slow_job.id}'"
            )
        )
        await tx.commit()
        found = await catch_up(data_layer(job_manager).database, cursor, 100)
        assert (slow_job.id, 2) in found.changes
    finally:
        await slow.close()
        await feed.close()


async def test_catch_up_reports_truncation_beyond_its_limit(
    job_manager: JobManager, tenant: str
) -> None:
    feed = await open_feed(data_layer(job_manager).database, listen=None, on_lost=lambda: None)
    try:
        cursor = await feed.horizon()
        ids = [(await job_manager.submit(tenant, "feed.test", {})).id for _ in range(3)]
        assert (await catch_up(data_layer(job_manager).database, cursor, 2)).truncated
        # the horizon is cluster-wide: an open transaction anywhere can make the catch-up reach
        # back to earlier tests' changes, so "large enough" is far above these three
        found = await catch_up(data_layer(job_manager).database, cursor, 100_000)
        assert not found.truncated
        assert {job_id for job_id, _ in found.changes} >= set(ids)
    finally:
        await feed.close()


def test_cache_reset_refuses_fills_that_started_before_it() -> None:
    cache = JobCache(10, 60)
    ticket = cache.ticket()
    job = make_job(version=3)
    assert cache.store(job, ticket)
    cache.reset()
    assert cache.get(job.id) is None
    assert not cache.store(make_job(id=job.id, version=4), ticket)  # read before the reset
    assert cache.store(make_job(id=job.id, version=4), cache.ticket())


async def test_close_leaves_no_feed_task_or_connection(database_url: str) -> None:
    manager = await JobManager.connect(database_url)
    assert any(t.get_name() == "jobkeeper-change-feed" for t in asyncio.all_tasks())
    await manager.close()
    assert not any(t.get_name() == "jobkeeper-change-feed" for t in asyncio.all_tasks())
    assert not manager.feed_status().connected


async def _true(value: bool) -> bool:
    return value


def _progress() -> Progress:
    return Progress(0.5, "half")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.uuids(),
            st.integers(1, 2**63 - 1),
            st.sampled_from([*(status.value for status in JobStatus), "expired", CANCEL_REQUESTED]),
        ),
        max_size=400,
    )
)
def test_notification_payloads_carry_every_change_within_the_size_limit(
    changes: list[tuple[UUID, int, str]],
) -> None:
    payloads = encode(changes)
    assert all(len(p.encode()) <= 8000 for p in payloads)
    assert len(payloads) == -(-len(changes) // 90)  # as few as the fixed chunk allows
    entries = [entry for p in payloads for entry in json.loads(p)]
    assert entries == [[str(i), v, s] for i, v, s in changes]
