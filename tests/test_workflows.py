"""Workflows in-process against a real Postgres: durable sleeps, child jobs, parents that wait for
them (fan-out/fan-in), the policy for a failed child, and cancelling a parent with its children.

The replay model is ``ctx.ask``'s: a sleep or a wait parks the job without a lease, the handler
unwinds, and once the job is queued again the handler re-runs from the start, where ``sleep``
returns at once, ``spawn`` returns the same children and ``wait_for`` their outcomes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import asyncpg
import pytest

from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.status import JobStatus
from jobkeeper.errors import InvalidRequest, PermanentFailure
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import data_layer
from jobkeeper.worker import JobContext, TaskRegistry
from support import eventually, make_worker
from test_hitl import finished, fresh, reach, running, types


def new_kind(name: str) -> str:
    return f"wf-{uuid4().hex[:10]}.{name}"


async def children_of(database_url: str, parent: UUID) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await conn.fetch(
            "SELECT id, status, idempotency_key FROM jobs WHERE parent_id = $1 ORDER BY id", parent
        )
    finally:
        await conn.close()


async def test_a_durable_sleep_parks_the_job_and_the_rerun_returns_at_once(
    job_manager: JobManager, tenant: str
) -> None:
    tasks, kind, runs = TaskRegistry(), new_kind("nap"), Counter[str]()

    @tasks.task(kind)
    async def nap(ctx: JobContext, payload: Any) -> dict[str, Any]:
        runs["started"] += 1
        await ctx.sleep(timedelta(seconds=1))
        runs["after"] += 1
        return {"runs": runs["started"]}

    job = await job_manager.submit(tenant, kind, {})
    async with running(make_worker(job_manager, tasks)):
        parked = await eventually(
            lambda: _sleeping(job_manager, job.id, tenant), what="the job to sleep"
        )
        assert parked.status is JobStatus.QUEUED
        assert parked.run_after == parked.sleeping_until
        assert parked.attempts == 0  # a sleep is not an attempt
        done = await finished(job_manager, job.id, tenant)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result == {"runs": 2} and runs["after"] == 1
    assert done.sleeping_until is None
    events = await job_manager.events(job.id, tenant=tenant)
    kinds = [e.type for e in events]
    assert kinds == ["submitted", "claimed", "sleeping", "claimed", "woke", "succeeded"]
    sleeping = events[2].data
    assert sleeping["key"] == "sleep:s1"
    woke = events[4]
    assert woke.at >= datetime.fromisoformat(sleeping["until"])  # not woken early


async def _sleeping(manager: JobManager, job_id: UUID, tenant: str) -> Any:
    job = await fresh(manager, job_id, tenant)
    return job if job.sleeping_until is not None and job.status is JobStatus.QUEUED else None


async def test_a_sleep_refuses_a_negative_duration(job_manager: JobManager, tenant: str) -> None:
    tasks, kind = TaskRegistry(), new_kind("bad-nap")

    @tasks.task(kind)
    async def bad(ctx: JobContext, payload: Any) -> None:
        try:
            await ctx.sleep(-1)
        except InvalidRequest as exc:
            raise PermanentFailure(str(exc)) from exc

    job = await job_manager.submit(tenant, kind, {})
    async with running(make_worker(job_manager, tasks)):
        done = await finished(job_manager, job.id, tenant)
    assert done.status is JobStatus.FAILED and "not negative" in done.error["message"]


def _fan_out(
    tasks: TaskRegistry,
    parent_kind: str,
    child_kind: str,
    runs: Counter[str],
    gate: asyncio.Event | None = None,
) -> None:
    @tasks.task(child_kind)
    async def child(ctx: JobContext, payload: Any) -> int:
        if gate is not None:
            await gate.wait()
        if payload.get("fail"):
            raise PermanentFailure(f"child {payload['n']} fails")
        return int(payload["n"]) * 10

    @tasks.task(parent_kind)
    async def parent(ctx: JobContext, payload: Any) -> Any:
        runs["parent"] += 1
        children = [
            await ctx.spawn(child_kind, {"n": n, "fail": n in payload.get("fail", [])})
            for n in range(payload["children"])
        ]
        outcomes = await ctx.wait_for(children, on_failure=payload.get("on_failure", "fail"))
        return [[o.status.value, o.result] for o in outcomes]


async def test_fan_out_and_in_parks_the_parent_until_every_child_finished(
    job_manager: JobManager, tenant: str, database_url: str
) -> None:
    tasks, runs = TaskRegistry(), Counter[str]()
    parent_kind, child_kind = new_kind("parent"), new_kind("child")
    gate = asyncio.Event()  # the children finish only once the parent is parked
    _fan_out(tasks, parent_kind, child_kind, runs, gate)
    parent = await job_manager.submit(tenant, parent_kind, {"children": 5})
    async with running(make_worker(job_manager, tasks), make_worker(job_manager, tasks)):
        waiting = await reach(job_manager, parent.id, tenant, JobStatus.WAITING_CHILDREN)
        assert waiting.waiting_for is not None and len(waiting.waiting_for) == 5
        gate.set()
        done = await finished(job_manager, parent.id, tenant)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result == tuple(("succeeded", n * 10) for n in range(5))
    children = await children_of(database_url, parent.id)
    assert len(children) == 5  # the re-run got the same children, it submitted none
    assert {c["idempotency_key"] for c in children} == {
        f"{parent.id}/spawn:c{n}" for n in range(1, 6)
    }
    history = await types(job_manager, parent.id, tenant)
    assert history == [
        "submitted",
        "claimed",
        *["spawned"] * 5,
        "waiting_for_children",
        "children_done",
        "claimed",
        "succeeded",
    ]
    assert runs["parent"] == 2
    child = await fresh(job_manager, children[0]["id"], tenant)
    assert child.parent_id == parent.id


@pytest.mark.parametrize("policy", ["fail", "return"])
async def test_a_failed_child_fails_the_parent_or_is_handed_to_it(
    job_manager: JobManager, tenant: str, policy: str
) -> None:
    tasks, runs = TaskRegistry(), Counter[str]()
    parent_kind, child_kind = new_kind("parent"), new_kind("child")
    _fan_out(tasks, parent_kind, child_kind, runs)
    payload = {"children": 3, "fail": [1], "on_failure": policy}
    parent = await job_manager.submit(tenant, parent_kind, payload)
    async with running(make_worker(job_manager, tasks)):
        done = await finished(job_manager, parent.id, tenant)
    if policy == "fail":
        assert done.status is JobStatus.FAILED
        assert done.error["code"] == "child_failed"
        assert done.attempts == 1  # not retried: the outcomes would be the same
    else:
        assert done.status is JobStatus.SUCCEEDED, done.error
        assert done.result == (("succeeded", 0), ("failed", None), ("succeeded", 20))


async def test_cancelling_a_waiting_parent_cancels_its_unfinished_children(
    job_manager: JobManager, tenant: str, database_url: str
) -> None:
    tasks, parent_kind, child_kind = TaskRegistry(), new_kind("parent"), new_kind("slow")

    @tasks.task(child_kind)
    async def slow(ctx: JobContext, payload: Any) -> None:
        if payload["n"] == 0:
            return
        while not ctx.cancelled:  # noqa: ASYNC110 - the context offers a flag, not an event
            await asyncio.sleep(0.02)
        ctx.raise_if_cancelled()

    @tasks.task(parent_kind)
    async def parent(ctx: JobContext, payload: Any) -> None:
        children = [await ctx.spawn(child_kind, {"n": n}) for n in range(3)]
        await ctx.wait_for(children)

    parent_job = await job_manager.submit(tenant, parent_kind, {})
    worker = make_worker(job_manager, tasks, kinds=[parent_kind, child_kind], concurrency=2)
    async with running(worker):
        waiting = await reach(job_manager, parent_job.id, tenant, JobStatus.WAITING_CHILDREN)
        assert waiting.waiting_for is not None and len(waiting.waiting_for) == 3
        await job_manager.cancel(parent_job.id, tenant=tenant, cancelled_by="user:test")

        async def all_over() -> Any:
            rows = await children_of(database_url, parent_job.id)
            return rows if all(JobStatus(r["status"]).terminal for r in rows) else None

        rows = await eventually(all_over, what="every child to end")
    statuses = sorted(r["status"] for r in rows)
    assert statuses.count("cancelled") >= 2 and "running" not in statuses, statuses
    after = await fresh(job_manager, parent_job.id, tenant)
    assert after.status is JobStatus.CANCELLED and after.waiting_for is None


async def test_a_parent_whose_children_finished_before_it_parked_is_woken(
    job_manager: JobManager, tenant: str
) -> None:
    """The park and the wake-up race: whichever commits last, the parent does not stay parked."""
    pg = data_layer(job_manager)
    parent = await job_manager.submit(tenant, new_kind("p"), {})
    child = await job_manager.submit(tenant, new_kind("c"), {})
    [lease] = await job_manager.claim(uuid4(), kinds=[parent.kind], limit=1, lease_seconds=30)
    await job_manager.cancel(child.id, tenant=tenant)  # the child ends before the park
    parked = await pg.workflows.wait(lease, [child.id])  # the data layer: no wake-up after it
    assert parked is not None and parked.status is JobStatus.WAITING_CHILDREN
    [woken] = await job_manager.wake_waiting_parents()
    assert woken.id == parent.id and woken.status is JobStatus.QUEUED
    # through the manager, the wake-up follows the park at once
    [lease] = await job_manager.claim(uuid4(), kinds=[parent.kind], limit=1, lease_seconds=30)
    again = await job_manager.wait_for_children(lease, [child.id])
    assert again is not None
    assert (await fresh(job_manager, parent.id, tenant)).status is JobStatus.QUEUED


async def test_cancelling_a_parent_cancels_its_grandchildren_too(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("tree")
    root = await job_manager.submit(tenant, kind, {})
    [lease] = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    child, _ = await job_manager.spawn(lease, "spawn:c1", JobSpec(kind, {}))
    await job_manager.wait_for_children(lease, [child.id])
    [lease] = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    assert lease.job.id == child.id
    grandchild, _ = await job_manager.spawn(lease, "spawn:c1", JobSpec(new_kind("idle"), {}))
    await job_manager.wait_for_children(lease, [grandchild.id])

    await job_manager.cancel(root.id, tenant=tenant, cancelled_by="user:test")
    for job in (root, child, grandchild):
        assert (await fresh(job_manager, job.id, tenant)).status is JobStatus.CANCELLED
    [*_, by_request] = await job_manager.events(child.id, tenant=tenant)
    assert by_request.data == {"cancelled_by": "user:test", "parent": str(root.id)}
    history = await job_manager.events(grandchild.id, tenant=tenant)
    assert history[-1].type == "cancelled" and history[-1].data["parent"] == str(child.id)


async def test_cancelling_a_running_parent_flags_it_and_cancels_its_children_at_once(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("running")
    parent = await job_manager.submit(tenant, kind, {})
    [lease] = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    child, _ = await job_manager.spawn(lease, "spawn:c1", JobSpec(new_kind("idle"), {}))

    flagged = await job_manager.cancel(parent.id, tenant=tenant, cancelled_by="user:ops")
    assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
    assert (await fresh(job_manager, child.id, tenant)).status is JobStatus.CANCELLED
    [*_, cancelled] = await job_manager.events(child.id, tenant=tenant)
    assert cancelled.type == "cancelled"
    assert cancelled.data == {"cancelled_by": "user:ops", "parent": str(parent.id)}


async def test_a_sync_handler_spawns_waits_and_sleeps_from_its_thread(
    job_manager: JobManager, tenant: str
) -> None:
    tasks, parent_kind, child_kind = TaskRegistry(), new_kind("sync"), new_kind("sync-child")
    runs = Counter[str]()

    @tasks.task(child_kind)
    def double(ctx: JobContext, payload: Any) -> int:
        return int(payload) * 2

    @tasks.task(parent_kind)
    def parent(ctx: JobContext, payload: Any) -> list[int]:
        runs["parent"] += 1
        ctx.sleep_sync(0.2, key="first")
        children = [ctx.spawn_sync(child_kind, n, key=f"n{n}") for n in (1, 2)]
        return [job.result for job in ctx.wait_for_sync(children)]

    job = await job_manager.submit(tenant, parent_kind, {})
    async with running(make_worker(job_manager, tasks)):
        done = await finished(job_manager, job.id, tenant)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result == (2, 4)
    assert set(done.checkpoints) == {"sleep:first", "spawn:n1", "spawn:n2"}
    history = await types(job_manager, job.id, tenant)
    assert history.count("sleeping") == 1 and history.count("woke") == 1
    assert history.count("spawned") == 2
    assert runs["parent"] == history.count("claimed")  # every run after a park starts over


async def test_two_children_finishing_at_once_wake_their_parent_exactly_once(
    job_manager: JobManager, tenant: str
) -> None:
    """The last two children commit concurrently: neither may miss the wake-up, and only one
    may make it (postgres/workflows.py)."""
    for _ in range(15):
        kind = new_kind("race")
        parent = await job_manager.submit(tenant, kind, {})
        [lease] = await job_manager.claim(uuid4(), kinds=[kind], limit=1, lease_seconds=30)
        children = [
            (await job_manager.spawn(lease, f"spawn:c{n}", JobSpec(f"{kind}-child", n)))[0]
            for n in (1, 2)
        ]
        await job_manager.wait_for_children(lease, [c.id for c in children])
        held = await job_manager.claim(uuid4(), kinds=[f"{kind}-child"], limit=2, lease_seconds=30)
        assert len(held) == 2
        await asyncio.gather(*(job_manager.mark_succeeded([(h, "1", None)]) for h in held))
        woken = await fresh(job_manager, parent.id, tenant)
        assert woken.status is JobStatus.QUEUED and woken.waiting_for is None
        history = await types(job_manager, parent.id, tenant)
        assert history.count("children_done") == 1
