"""``/schedules`` over HTTP: create, list, get, pause, resume, delete; bad cron expressions and
timezones are 422 problems; another tenant's schedule is 404; a scheduled job shows its schedule
and tick in ``GET /jobs/{id}``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from jobkeeper.manager import JobManager
from jobkeeper.testing import data_layer
from jobkeeper.worker.scheduler import Scheduler

from .support import assert_problem

NIGHTLY: dict[str, Any] = {
    "name": "nightly",
    "kind": "report.nightly",
    "cron": "30 2 * * *",
    "timezone": "Europe/Stockholm",
    "payload": {"scope": "all"},
}


async def test_create_list_get_pause_resume_delete(api: httpx.AsyncClient) -> None:
    created = await api.post("/schedules", json=NIGHTLY)
    assert created.status_code == 201, created.text
    body = created.json()
    assert created.headers["location"] == f"/schedules/{body['id']}"
    assert {k: body[k] for k in NIGHTLY} == NIGHTLY
    assert body["misfire"] == "latest" and body["every_seconds"] is None
    assert body["next_tick"].endswith("Z") and body["last_tick"] is None

    again = await api.post("/schedules", json=NIGHTLY)
    assert assert_problem(again, 409, "schedule_exists")["name"] == "nightly"
    other = await api.post(
        "/schedules", json={"name": "often", "kind": "report.often", "every_seconds": 60}
    )
    assert other.status_code == 201 and other.json()["every_seconds"] == 60

    listed = await api.get("/schedules")
    assert [s["name"] for s in listed.json()["items"]] == ["nightly", "often"]
    assert (await api.get(f"/schedules/{body['id']}")).json() == body

    paused = await api.post(f"/schedules/{body['id']}/pause")
    assert paused.status_code == 200 and paused.json()["paused"]
    resumed = await api.post(f"/schedules/{body['id']}/resume")
    assert resumed.status_code == 200 and not resumed.json()["paused"]

    deleted = await api.delete(f"/schedules/{other.json()['id']}")
    assert deleted.status_code == 204
    gone = assert_problem(
        await api.get(f"/schedules/{other.json()['id']}"), 404, "schedule_not_found"
    )
    assert gone["schedule_id"] == other.json()["id"]
    assert_problem(await api.delete(f"/schedules/{other.json()['id']}"), 404, "schedule_not_found")


@pytest.mark.parametrize(
    "change",
    [
        {"cron": "61 * * * *"},
        {"cron": "* * * * * *"},
        {"timezone": "Europe/Atlantis"},
        {"timezone": "Europe"},
        {"cron": None},
        {"every_seconds": 60},  # and cron: both
        {"misfire": "sometimes"},
        {"kind": "no spaces"},
    ],
)
async def test_bad_input_is_a_422_problem(api: httpx.AsyncClient, change: dict[str, Any]) -> None:
    response = await api.post("/schedules", json={**NIGHTLY, **change})
    assert_problem(response, 422, "validation_error")
    assert (await api.get("/schedules")).json()["items"] == []


async def test_another_tenants_schedule_is_not_found(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str
) -> None:
    theirs = await job_manager.create_schedule(
        f"{tenant}-other", "theirs", "report.x", cron="0 * * * *"
    )
    for method, path in (
        ("GET", ""),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("DELETE", ""),
    ):
        response = await api.request(method, f"/schedules/{theirs.id}{path}")
        assert_problem(response, 404, "schedule_not_found")
    assert (await api.get("/schedules")).json()["items"] == []
    assert_problem(await api.get("/schedules/not-a-uuid"), 422, "validation_error")


async def test_a_scheduled_job_shows_its_schedule_and_tick(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str
) -> None:
    kind = f"shown.{tenant}"
    created = await api.post(
        "/schedules", json={"name": "shown", "kind": kind, "every_seconds": 3600}
    )
    schedule_id = created.json()["id"]
    async with data_layer(job_manager).database.connection() as conn:  # an hour of downtime
        await conn.execute(
            "UPDATE schedules SET next_tick = next_tick - interval '1 hour' WHERE id = $1",
            created.json()["id"],
        )
    schedule = await job_manager.get_schedule(schedule_id, tenant=tenant)
    await Scheduler(job_manager, (), [kind]).fire_due()
    [job] = (await api.get("/jobs", params={"kind": kind})).json()["items"]
    assert job["schedule_id"] == schedule_id
    assert job["scheduled_for"] == schedule.next_tick.isoformat().replace("+00:00", "Z")
    shown = (await api.get(f"/jobs/{job['id']}")).json()
    assert (shown["schedule_id"], shown["scheduled_for"]) == (schedule_id, job["scheduled_for"])
    assert (await api.get(f"/schedules/{schedule_id}")).json()["last_tick"] == job["scheduled_for"]
