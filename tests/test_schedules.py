"""Periodic schedules against a real Postgres: the manager's operations, schedulers racing for
the same ticks, the misfire policies, pause and resume, and a worker running declared schedules."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobkeeper import InvalidRequest, JobManager, JobStatus, TaskRegistry
from jobkeeper.domain.schedules import Schedule
from jobkeeper.errors import ScheduleExists, ScheduleNotFound, TenantRequired
from jobkeeper.testing import data_layer
from jobkeeper.worker.scheduler import Scheduler
from support import eventually, make_worker

KIND = "report.daily"


async def sql(manager: JobManager, query: str, *params: Any) -> list[Any]:
    async with data_layer(manager).database.connection() as conn:
        return list(await conn.fetch(query, *params))


async def rewind(manager: JobManager, schedule: Schedule, by: timedelta) -> Schedule:
    """Pretend no scheduler ran for ``by``: the schedule's next tick lies that far back."""
    await sql(
        manager,
        "UPDATE schedules SET next_tick = next_tick - $2::interval WHERE id = $1",
        schedule.id,
        by,
    )
    return await manager.get_schedule(schedule.id, tenant=schedule.tenant)


async def jobs_of(manager: JobManager, schedule: Schedule) -> list[Any]:
    return await sql(
        manager,
        "SELECT id, scheduled_for, run_after, payload FROM jobs WHERE schedule_id = $1"
        " ORDER BY scheduled_for",
        schedule.id,
    )


# --- the manager's operations ----------------------------------------------------------------


async def test_create_list_get_pause_resume_delete(job_manager: JobManager, tenant: str) -> None:
    before = datetime.now(UTC)
    schedule = await job_manager.create_schedule(
        tenant,
        "nightly",
        KIND,
        cron="30 2 * * *",
        timezone="Europe/Stockholm",
        payload={"scope": "all"},
        priority=5,
    )
    assert schedule.spec.cron == "30 2 * * *"
    assert schedule.spec.misfire == "latest"
    assert not schedule.paused and not schedule.declared
    assert before < schedule.next_tick <= before + timedelta(days=1, hours=1)
    assert schedule.next_tick.astimezone(schedule.spec.zone).strftime("%H:%M") == "02:30"
    assert schedule.payload == {"scope": "all"}

    other = await job_manager.create_schedule(tenant, "often", KIND, every=timedelta(minutes=5))
    assert [s.name for s in await job_manager.list_schedules(tenant=tenant)] == ["nightly", "often"]
    assert await job_manager.get_schedule(str(schedule.id), tenant=tenant) == schedule

    paused = await job_manager.pause_schedule(schedule.id, tenant=tenant)
    assert paused.paused
    assert (await job_manager.pause_schedule(schedule.id, tenant=tenant)).paused  # idempotent
    resumed = await job_manager.resume_schedule(schedule.id, tenant=tenant)
    assert not resumed.paused and resumed.next_tick > datetime.now(UTC)

    await job_manager.delete_schedule(other.id, tenant=tenant)
    assert [s.name for s in await job_manager.list_schedules(tenant=tenant)] == ["nightly"]
    with pytest.raises(ScheduleNotFound):
        await job_manager.delete_schedule(other.id, tenant=tenant)


async def test_a_name_is_unique_per_tenant(job_manager: JobManager, tenant: str) -> None:
    await job_manager.create_schedule(tenant, "hourly", KIND, cron="0 * * * *")
    with pytest.raises(ScheduleExists):
        await job_manager.create_schedule(tenant, "hourly", KIND, cron="5 * * * *")
    other_tenant = await job_manager.create_schedule(
        f"{tenant}-b", "hourly", KIND, cron="0 * * * *"
    )
    assert other_tenant.tenant == f"{tenant}-b"


async def test_another_tenants_schedule_is_not_found(job_manager: JobManager, tenant: str) -> None:
    schedule = await job_manager.create_schedule(tenant, "mine", KIND, cron="0 * * * *")
    for operation in (
        job_manager.get_schedule,
        job_manager.pause_schedule,
        job_manager.resume_schedule,
        job_manager.delete_schedule,
    ):
        with pytest.raises(ScheduleNotFound):
            await operation(schedule.id, tenant=f"{tenant}-other")
    assert await job_manager.list_schedules(tenant=f"{tenant}-other") == ()
    assert await job_manager.get_schedule(schedule.id, tenant=tenant) == schedule


@pytest.mark.parametrize(
    ("arguments", "error", "field"),
    [
        ({"cron": "*/5 * * *"}, InvalidRequest, "cron"),
        ({"cron": "* * * * *", "timezone": "Europe/Atlantis"}, InvalidRequest, "timezone"),
        ({"every": timedelta(seconds=0)}, InvalidRequest, "every"),
        ({"cron": "* * * * *", "kind": "no spaces allowed"}, InvalidRequest, "kind"),
        ({"cron": "* * * * *", "payload": {"bad": float("nan")}}, InvalidRequest, "payload"),
        ({"cron": "* * * * *", "payload": lambda tick: 1}, InvalidRequest, "payload"),
        ({"cron": "* * * * *", "name": ""}, InvalidRequest, "name"),
        ({"cron": "* * * * *", "tenant": " "}, TenantRequired, "tenant"),
        ({"cron": "* * * * *", "misfire": "never"}, InvalidRequest, "misfire"),
    ],
)
async def test_bad_input_is_a_typed_error_and_writes_nothing(
    job_manager: JobManager, tenant: str, arguments: dict[str, Any], error: type, field: str
) -> None:
    values: dict[str, Any] = {"tenant": tenant, "name": "bad", "kind": KIND} | arguments
    with pytest.raises(error) as refused:
        await job_manager.create_schedule(values.pop("tenant"), values.pop("name"), **values)
    assert refused.value.field == field
    assert await sql(job_manager, "SELECT 1 FROM schedules WHERE tenant = $1", tenant) == []


async def test_a_schedule_id_that_is_not_a_uuid_is_refused(
    job_manager: JobManager, tenant: str
) -> None:
    with pytest.raises(InvalidRequest) as refused:
        await job_manager.get_schedule("nope", tenant=tenant)
    assert refused.value.field == "schedule_id"


# --- firing: one job per tick ------------------------------------------------------------------


async def test_racing_schedulers_submit_exactly_one_job_per_tick(
    job_manager: JobManager, tenant: str
) -> None:
    kind = f"race.{tenant}"
    schedule = await job_manager.create_schedule(
        tenant, "race", kind, every=timedelta(seconds=1), misfire="all", payload={"n": 1}
    )
    schedule = await rewind(job_manager, schedule, timedelta(seconds=30))
    schedulers = [Scheduler(job_manager, (), [kind]) for _ in range(6)]
    await asyncio.gather(*(s.fire_due() for s in schedulers))
    await asyncio.gather(*(s.fire_due() for s in schedulers))
    fired = await jobs_of(job_manager, schedule)
    ticks = [row["scheduled_for"] for row in fired]
    assert len(ticks) == len(set(ticks)) >= 30
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))
    assert all(row["run_after"] == row["scheduled_for"] for row in fired)
    assert all(row["payload"] == {"n": 1} for row in fired)
    after = await job_manager.get_schedule(schedule.id, tenant=tenant)
    assert after.last_tick == ticks[-1] and after.next_tick > ticks[-1]


async def test_a_scheduler_that_read_a_stale_tick_submits_nothing(
    job_manager: JobManager, tenant: str
) -> None:
    kind = f"stale.{tenant}"
    schedule = await job_manager.create_schedule(tenant, "stale", kind, every=timedelta(hours=1))
    stale = await rewind(job_manager, schedule, timedelta(hours=1))
    tick = stale.next_tick
    first = await job_manager.fire_schedule(stale, [(tick, None)], schedule.next_tick)
    assert [job.scheduled_for for job in first] == [tick]
    # the same read again, as a slower scheduler would have it: the conditional update misses
    assert await job_manager.fire_schedule(stale, [(tick, None)], schedule.next_tick) == []
    # and even with the next tick put back by hand, the unique index refuses a second job
    await sql(job_manager, "UPDATE schedules SET next_tick = $2 WHERE id = $1", stale.id, tick)
    assert await job_manager.fire_schedule(stale, [(tick, None)], schedule.next_tick) == []
    assert len(await jobs_of(job_manager, schedule)) == 1


async def test_a_scheduled_job_is_an_ordinary_job_that_names_its_schedule_and_tick(
    job_manager: JobManager, tenant: str
) -> None:
    kind = f"plain.{tenant}"
    schedule = await job_manager.create_schedule(
        tenant, "plain", kind, every=timedelta(hours=1), max_attempts=7, concurrency_key="one"
    )
    schedule = await rewind(job_manager, schedule, timedelta(hours=1))
    await Scheduler(job_manager, (), [kind]).fire_due()
    [row] = await jobs_of(job_manager, schedule)
    job = await job_manager.get(row["id"], tenant=tenant)
    assert (job.schedule_id, job.scheduled_for) == (schedule.id, schedule.next_tick)
    assert (job.status, job.kind, job.max_attempts) == (JobStatus.QUEUED, kind, 7)
    assert job.concurrency_key == "one"
    [submitted] = await job_manager.events(job.id, tenant=tenant)
    assert submitted.type == "submitted"
    assert submitted.data["schedule_id"] == str(schedule.id)
    listed = await job_manager.list(tenant=tenant, kind=kind)
    assert [j.id for j in listed.items] == [job.id]


@pytest.mark.parametrize(("misfire", "expected"), [("latest", 1), ("all", 4), ("none", 0)])
async def test_after_downtime_the_policy_decides_what_runs(
    job_manager: JobManager, tenant: str, misfire: str, expected: int
) -> None:
    kind = f"down.{misfire}.{tenant}"
    schedule = await job_manager.create_schedule(
        tenant, "down", kind, every=timedelta(days=1), misfire=misfire, max_catch_up=4
    )
    schedule = await rewind(job_manager, schedule, timedelta(days=12))  # twelve ticks missed
    await Scheduler(job_manager, (), [kind]).fire_due()
    fired = await jobs_of(job_manager, schedule)
    if misfire == "none" and datetime.now(UTC) - schedule.next_tick < timedelta(days=11, minutes=1):
        expected = 1  # within a minute after midnight UTC the latest tick is on time
    assert len(fired) == expected
    after = await job_manager.get_schedule(schedule.id, tenant=tenant)
    assert after.next_tick > datetime.now(UTC)  # whatever ran, the schedule moved on


async def test_a_paused_schedule_submits_nothing_and_resumes_without_catching_up(
    job_manager: JobManager, tenant: str
) -> None:
    kind = f"paused.{tenant}"
    schedule = await job_manager.create_schedule(
        tenant, "paused", kind, every=timedelta(minutes=1), misfire="all", paused=True
    )
    schedule = await rewind(job_manager, schedule, timedelta(hours=1))
    scheduler = Scheduler(job_manager, (), [kind])
    await scheduler.fire_due()
    assert await jobs_of(job_manager, schedule) == []
    resumed = await job_manager.resume_schedule(schedule.id, tenant=tenant)
    assert resumed.next_tick > datetime.now(UTC)
    await scheduler.fire_due()
    assert await jobs_of(job_manager, schedule) == []  # the ticks of the pause are not missed


async def test_a_scheduler_fires_only_its_kinds(job_manager: JobManager, tenant: str) -> None:
    schedule = await job_manager.create_schedule(
        tenant, "theirs", f"theirs.{tenant}", every=timedelta(minutes=1)
    )
    schedule = await rewind(job_manager, schedule, timedelta(minutes=1))
    await Scheduler(job_manager, (), [f"mine.{tenant}"]).fire_due()
    assert await jobs_of(job_manager, schedule) == []


# --- declared on handlers, run by workers --------------------------------------------------------


async def test_a_worker_declares_and_runs_a_periodic_handler_with_a_computed_payload(
    job_manager: JobManager, tenant: str
) -> None:
    tasks = TaskRegistry()
    kind = f"tick.{tenant}"
    seen: list[Any] = []

    @tasks.periodic(
        every=timedelta(seconds=1),
        timezone="Europe/Stockholm",
        tenant=tenant,
        payload=lambda tick: {"local": tick.isoformat()},
    )
    @tasks.task(kind)
    async def handle(ctx: Any, payload: Any) -> None:
        seen.append((ctx.job, payload))

    worker = make_worker(job_manager, tasks)
    running = asyncio.create_task(worker.run())
    try:
        await eventually(lambda: len(seen) >= 2, what="two ticks run", timeout=30)
    finally:
        worker.stop()
        worker.stop()
        await running
    [schedule] = await job_manager.list_schedules(tenant=tenant)
    assert (schedule.name, schedule.kind, schedule.declared) == (kind, kind, True)
    assert schedule.computed_payload
    job, payload = seen[0]
    assert job.schedule_id == schedule.id
    local = datetime.fromisoformat(payload["local"])
    assert local == job.scheduled_for and local.utcoffset() == timedelta(hours=1)


async def test_declaring_again_keeps_the_pause_and_a_new_timing_resets_the_next_tick(
    job_manager: JobManager, tenant: str
) -> None:
    def registry(cron: str) -> TaskRegistry:
        tasks = TaskRegistry()
        tasks.periodic(cron, tenant=tenant, kind=f"decl.{tenant}", payload=[1])(_noop)
        return tasks

    await Scheduler(
        job_manager, registry("0 3 * * *").periodic_schedules([f"decl.{tenant}"]), []
    ).declare()
    [schedule] = await job_manager.list_schedules(tenant=tenant)
    await job_manager.pause_schedule(schedule.id, tenant=tenant)
    again = registry("0 3 * * *").periodic_schedules([f"decl.{tenant}"])
    await Scheduler(job_manager, again, []).declare()
    [same] = await job_manager.list_schedules(tenant=tenant)
    assert same.paused and same.next_tick == schedule.next_tick and same.id == schedule.id
    changed = registry("0 4 * * *").periodic_schedules([f"decl.{tenant}"])
    await Scheduler(job_manager, changed, []).declare()
    [moved] = await job_manager.list_schedules(tenant=tenant)
    assert moved.paused and moved.spec.cron == "0 4 * * *"
    assert moved.next_tick.astimezone(UTC).hour == 4


async def _noop(ctx: Any, payload: Any) -> None:
    return None


def test_periodic_refuses_bad_definitions_at_import() -> None:
    tasks = TaskRegistry()
    with pytest.raises(InvalidRequest):
        tasks.periodic("every minute")
    with pytest.raises(InvalidRequest) as no_kind:
        tasks.periodic("* * * * *")(_noop)
    assert no_kind.value.field == "kind"
    tasks.periodic("* * * * *", kind="a")(_noop)
    with pytest.raises(InvalidRequest) as twice:
        tasks.periodic("0 * * * *", kind="a")(_noop)
    assert twice.value.field == "name"
