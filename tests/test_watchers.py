"""``JobManager.watch`` fed by one fan-out per manager: many watchers of a job cost one read per
change, a watcher that falls behind is cut off with a gap (bounded memory) and re-reads its
history, resuming after a sequence number still gives each event once, and nothing stays behind
when watchers leave."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest

from jobkeeper.domain.values import Job, JobEvent, Lease, Progress
from jobkeeper.manager import JobManager
from jobkeeper.postgres.pool import Database
from jobkeeper.testing import data_layer
from jobkeeper.watchers import WatchHub
from support import eventually

KIND = "watch.test"
WATCHERS = 40
UPDATES = 5


async def running(manager: JobManager, tenant: str) -> tuple[Job, Lease]:
    """A job claimed by a (made-up) worker, so that its progress can be reported."""
    job = await manager.submit(tenant, KIND, {})
    leases = await manager.claim(uuid4(), kinds=[KIND], limit=10, lease_seconds=300)
    lease = next(lease for lease in leases if lease.job.id == job.id)
    return lease.job, lease


async def collect(manager: JobManager, job_id: UUID, tenant: str, after: int) -> list[JobEvent]:
    return [e async for e in manager.watch(job_id, tenant=tenant, after=after)]


@contextlib.contextmanager
def counted_reads(database: Database) -> Iterator[list[str]]:
    """The text of every statement read through ``database`` (once it has answered) while the
    context is open: a spy, the statements still run against Postgres."""
    seen: list[str] = []
    original = Database.rows

    async def rows(self: Database, sql: Any, params: Any, *, read: bool) -> list[Any]:
        found = await original(self, sql, params, read=read)
        if self is database:
            seen.append(sql.text)
        return found

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Database, "rows", rows)
        yield seen


def fan_out(text: str) -> bool:
    return "unnest" in text  # events_of_many: every watched job that changed, in one read


async def test_many_watchers_of_a_job_are_fed_by_one_read_per_change(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    # no periodic sweep (nor catch-up) within the test: every read below answers a notification
    async with await JobManager.connect(database_url, feed_interval=3600) as replica:
        job, lease = await running(job_manager, tenant)
        with counted_reads(data_layer(replica).database) as reads:
            watchers = [
                asyncio.create_task(collect(replica, job.id, tenant, after=0))
                for _ in range(WATCHERS)
            ]
            # one history read per connect, and nothing else
            await eventually(
                lambda: sum(not fan_out(text) for text in reads) == WATCHERS,
                what="every watcher to read its history",
            )
            connected = len(reads)
            for n in range(UPDATES):
                await job_manager.report_progress(lease, Progress(fraction=n / UPDATES))
            await job_manager.cancel(job.id, tenant=tenant)
            final = await job_manager.mark_cancelled(lease)
            assert final is not None
            results = await asyncio.wait_for(asyncio.gather(*watchers), 10)

        history = await job_manager.events(job.id, tenant=tenant)
        assert [e.seq for e in history] == list(range(1, final.version + 1))
        assert all(events == list(history) for events in results)
        changes = final.version - job.version
        after_connect = reads[connected:]
        # no watcher read anything itself; the fan-out read at most once per change
        assert all(fan_out(text) for text in after_connect), after_connect
        assert len(after_connect) <= changes, after_connect
    assert replica.watch_stats().watchers == 0


async def test_resuming_after_a_sequence_number_gives_the_rest_once(
    job_manager: JobManager, tenant: str
) -> None:
    job, lease = await running(job_manager, tenant)
    await job_manager.report_progress(lease, Progress(fraction=0.5))
    # from the start, mid-history, and at the end while the job is live (a client resuming)
    starts = [0, 2, 3]
    watchers = [asyncio.create_task(collect(job_manager, job.id, tenant, s)) for s in starts]
    await eventually(lambda: job_manager.watch_stats().watchers == 3, what="the watchers")
    await job_manager.report_progress(lease, Progress(fraction=0.9))
    await job_manager.mark_cancelled(lease)
    results = await asyncio.wait_for(asyncio.gather(*watchers), 10)
    history = await job_manager.events(job.id, tenant=tenant)
    for start, events in zip(starts, results, strict=True):
        assert events == [e for e in history if e.seq > start]
    # resumed after the terminal event: nothing follows, at once
    assert await collect(job_manager, job.id, tenant, after=history[-1].seq) == []


async def test_nothing_stays_behind_when_watchers_leave(
    job_manager: JobManager, tenant: str
) -> None:
    job, lease = await running(job_manager, tenant)
    baseline_tasks = len(asyncio.all_tasks())  # with the announcer the writes above started
    watchers = [
        asyncio.create_task(collect(job_manager, job.id, tenant, after=0)) for _ in range(20)
    ]
    await eventually(lambda: job_manager.watch_stats().watchers == 20, what="the watchers")
    await job_manager.report_progress(lease, Progress(fraction=0.5))
    for task in watchers:  # what a client hanging up does to its stream
        task.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)

    # a watch left mid-way and closed, as the docstring asks
    async with contextlib.aclosing(job_manager.watch(job.id, tenant=tenant)) as events:
        async for _ in events:
            break
    stats = job_manager.watch_stats()
    assert (stats.watchers, stats.jobs) == (0, 0)
    # the fan-out's own task ends after the last watcher leaves
    await eventually(
        lambda: len(asyncio.all_tasks()) <= baseline_tasks, what="the fan-out task to end"
    )


async def test_a_slow_watcher_gets_a_gap_then_its_history(
    job_manager: JobManager, tenant: str
) -> None:
    job, lease = await running(job_manager, tenant)
    jobs = data_layer(job_manager).jobs
    hub = WatchHub(job_manager.subscribe_batches, jobs.events_of_many, interval=0.2, backlog=3)
    slow, keeping_up = hub.open(job.id), hub.open(job.id)
    hub.synced(slow, job.version)
    try:
        handed: list[JobEvent] = []
        for n in range(6):
            await job_manager.report_progress(lease, Progress(fraction=n / 10))

            async def got_it(version: int = job.version + n + 1) -> bool:
                handed.extend(await keeping_up.next())
                return bool(handed) and handed[-1].seq == version

            await eventually(got_it, what="the watcher that keeps up to get the change")
        assert [e.seq for e in handed] == list(range(job.version + 1, job.version + 7))
        # the slow one never read: it holds no more than its backlog, and is told of the gap
        assert hub.stats().gaps == 1
        assert await slow.next() is None
    finally:
        hub.close(slow)
        hub.close(keeping_up)
    assert hub.stats().watchers == 0

    # through watch(): a gap is repaired from the history, each event once and in order
    events = job_manager.watch(job.id, tenant=tenant)
    first = await anext(events)
    await job_manager.cancel(job.id, tenant=tenant)
    await job_manager.mark_cancelled(lease)
    for subscription in _subscriptions(job_manager):
        subscription.lose()  # what a full backlog does
    rest = [e async for e in events]
    assert [first, *rest] == list(await job_manager.events(job.id, tenant=tenant))


def _subscriptions(manager: JobManager) -> list[Any]:
    """The manager's open subscriptions (private: to cut a watcher off without 1,000 writes)."""
    hub: Any = manager._watchers
    return [s for channel in hub._channels.values() for s in channel.subscribers]


async def test_a_change_never_notified_reaches_watchers_by_the_sweep(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    # a worker-role manager hears only jobs queued and cancel requests: a progress report is
    # never announced to it, so only the fan-out's periodic sweep can find it
    async with await JobManager.connect(
        database_url, role="worker", feed_interval=0.2
    ) as worker_side:
        job, lease = await running(job_manager, tenant)
        events = worker_side.watch(job.id, tenant=tenant)
        async with contextlib.aclosing(events):
            seen = [await anext(events), await anext(events)]  # submitted, claimed
            await job_manager.report_progress(lease, Progress(message="unannounced here"))
            seen.append(await asyncio.wait_for(anext(events), 10))
        assert [e.type for e in seen] == ["submitted", "claimed", "progress"]
        assert seen[-1].data["message"] == "unannounced here"
        assert worker_side.watch_stats().reads >= 1
