"""``POST /jobs:batch`` through httpx against the ASGI app (real Postgres): jobs in item order
with created flags, replays, problems that name the item, the size bound, backpressure, and the
typed client's ``submit_many``."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from jobkeeper import IdempotencyConflict, InvalidRequest, JobSpec, QueueFull
from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.client import AsyncJobClient, JobClient
from jobkeeper.manager import JobManager

from .support import (
    IDLE_KIND,
    Processes,
    assert_job,
    assert_problem,
    bearer,
    make_settings,
    serve,
)


async def count_jobs(manager: JobManager, tenant: str) -> int:
    return len((await manager.list(tenant=tenant, limit=500)).items)


async def test_a_batch_is_201_with_each_job_in_order(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str
) -> None:
    items = [
        {"kind": IDLE_KIND, "payload": {"n": 0}},
        {"kind": IDLE_KIND, "payload": [1], "priority": 5, "idempotency_key": "b-1"},
        {"kind": "other.kind", "run_after": "2031-01-01T00:00:00+02:00", "pinned": True},
    ]
    response = await api.post("/jobs:batch", json={"jobs": items})
    assert response.status_code == 201, response.text
    jobs = response.json()["jobs"]
    assert [entry["created"] for entry in jobs] == [True, True, True]
    for entry in jobs:
        assert_job(entry["job"])
    first, second, third = (entry["job"] for entry in jobs)
    assert (first["kind"], first["payload"], first["status"]) == (IDLE_KIND, {"n": 0}, "queued")
    assert (second["payload"], second["priority"]) == ([1], 5)
    assert (third["kind"], third["run_after"], third["pinned"]) == (
        "other.kind",
        "2030-12-31T22:00:00Z",
        True,
    )
    read = await api.get(f"/jobs/{second['id']}", headers={"Cache-Control": "no-cache"})
    assert read.json() == second
    assert await count_jobs(job_manager, tenant) == 3


async def test_a_replayed_batch_is_200_with_the_same_jobs(api: httpx.AsyncClient) -> None:
    items = [{"kind": IDLE_KIND, "payload": n, "idempotency_key": f"r-{n}"} for n in range(3)]
    first = await api.post("/jobs:batch", json={"jobs": items})
    again = await api.post("/jobs:batch", json={"jobs": items})
    assert (first.status_code, again.status_code) == (201, 200)
    assert [e["created"] for e in again.json()["jobs"]] == [False] * 3
    assert [e["job"]["id"] for e in again.json()["jobs"]] == [
        e["job"]["id"] for e in first.json()["jobs"]
    ]
    # one new item among replays makes it 201 again; the single submit replays a batch's job
    more = await api.post("/jobs:batch", json={"jobs": [*items, {"kind": IDLE_KIND}]})
    assert more.status_code == 201
    assert [e["created"] for e in more.json()["jobs"]] == [False, False, False, True]
    single = await api.post(
        "/jobs", json={"kind": IDLE_KIND, "payload": 1}, headers={"Idempotency-Key": "r-1"}
    )
    assert single.status_code == 200 and single.json() == first.json()["jobs"][1]["job"]


@pytest.mark.parametrize(
    ("bad", "loc"),
    [
        ({"kind": "has spaces"}, None),  # the manager's check: "field" and "index"
        ({"kind": IDLE_KIND, "payload": "\u0000"}, None),
        ({"kind": IDLE_KIND, "priority": 40_000}, ["body", "jobs", 2, "priority"]),
        ({"kind": IDLE_KIND, "surprise": 1}, ["body", "jobs", 2, "surprise"]),
        ({"kind": IDLE_KIND, "run_after": "2031-01-01T00:00:00"}, None),  # naive
    ],
)
async def test_a_bad_item_is_422_naming_it_and_nothing_is_written(
    api: httpx.AsyncClient,
    job_manager: JobManager,
    tenant: str,
    bad: dict[str, Any],
    loc: list[Any] | None,
) -> None:
    items: list[dict[str, Any]] = [{"kind": IDLE_KIND, "payload": n} for n in range(4)]
    items.insert(2, bad)
    problem = assert_problem(
        await api.post("/jobs:batch", json={"jobs": items}), 422, "validation_error"
    )
    if loc is None:
        assert problem["index"] == 2 and problem["detail"].startswith("item 2: ")
    else:
        assert [error["loc"] for error in problem["errors"]] == [loc]
    assert await count_jobs(job_manager, tenant) == 0


async def test_a_key_reused_for_another_job_is_422_naming_the_item(
    api: httpx.AsyncClient, job_manager: JobManager, tenant: str
) -> None:
    taken = await api.post("/jobs", json={"kind": IDLE_KIND}, headers={"Idempotency-Key": "k"})
    items = [{"kind": IDLE_KIND}, {"kind": IDLE_KIND, "payload": 2, "idempotency_key": "k"}]
    problem = assert_problem(
        await api.post("/jobs:batch", json={"jobs": items}), 422, "idempotency_key_reused"
    )
    assert (problem["index"], problem["job_id"], problem["idempotency_key"]) == (
        1,
        taken.json()["id"],
        "k",
    )
    # within one batch: the later item is refused
    twice = [{"kind": IDLE_KIND, "idempotency_key": "d"}, {"kind": "x", "idempotency_key": "d"}]
    problem = assert_problem(
        await api.post("/jobs:batch", json={"jobs": twice}), 422, "validation_error"
    )
    assert (problem["index"], problem["field"]) == (1, "idempotency_key")
    assert await count_jobs(job_manager, tenant) == 1


async def test_an_empty_batch_is_422(api: httpx.AsyncClient) -> None:
    problem = assert_problem(
        await api.post("/jobs:batch", json={"jobs": []}), 422, "validation_error"
    )
    assert problem["errors"][0]["loc"] == ["body", "jobs"]


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "DELETE"])
async def test_the_batch_resource_allows_post_only(api: httpx.AsyncClient, method: str) -> None:
    """Not ``/jobs/batch``, which ``GET /jobs/{job_id}`` would take for a job id (400)."""
    response = await api.request(method, "/jobs:batch")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


async def test_a_batch_over_the_bound_is_413_and_a_full_queue_429(
    database_url: str, job_manager: JobManager, tenant: str
) -> None:
    app = create_app(make_settings(database_url, max_batch=3, max_queued=4))
    key = (await ApiKeys(job_manager).create(tenant)).key
    async with serve(app, headers=bearer(key)) as served:
        api = served.client
        four = {"jobs": [{"kind": IDLE_KIND}] * 4}
        problem = assert_problem(await api.post("/jobs:batch", json=four), 413, "batch_too_large")
        assert problem["max_batch"] == 3
        three = {"jobs": [{"kind": IDLE_KIND}] * 3}
        assert (await api.post("/jobs:batch", json=three)).status_code == 201
        refused = await api.post("/jobs:batch", json=three)
        assert_problem(refused, 429, "queue_full")
        assert refused.headers["Retry-After"] == "5"
    assert await count_jobs(job_manager, tenant) == 3


# --- the typed client ---------------------------------------------------------------------------


async def test_the_async_client_submits_a_batch(served: Any, job_manager: JobManager) -> None:
    async with AsyncJobClient(http=served.client) as client:
        result = await client.submit_many(
            [
                JobSpec(IDLE_KIND, {"n": 1}, idempotency_key="c-1"),
                {"kind": IDLE_KIND, "payload": 2, "priority": 3},
            ]
        )
        assert [entry.created for entry in result] == [True, True]
        assert result[1].job.priority == 3 and result[0].job.payload == {"n": 1}
        again = await client.submit_many([JobSpec(IDLE_KIND, {"n": 1}, idempotency_key="c-1")])
        assert again[0].job.id == result[0].job.id and not again[0].created
        with pytest.raises(IdempotencyConflict) as conflict:
            await client.submit_many(
                [JobSpec(IDLE_KIND), JobSpec(IDLE_KIND, {"n": 9}, idempotency_key="c-1")]
            )
        assert conflict.value.index == 1 and conflict.value.idempotency_key == "c-1"
        assert str(conflict.value.job_id) == result[0].job.id
        with pytest.raises(InvalidRequest) as invalid:
            await client.submit_many([JobSpec(IDLE_KIND), JobSpec("bad kind")])
        assert invalid.value.index == 1 and invalid.value.field == "kind"


def _sync_batch(base: str, key: str) -> None:
    with JobClient(base, api_key=key) as client:
        result = client.submit_many([JobSpec(IDLE_KIND, n) for n in range(3)])
        assert [entry.created for entry in result] == [True, True, True]
        assert [entry.job.payload for entry in result] == [0, 1, 2]
        with pytest.raises(QueueFull) as full:  # the server runs with max_queued=5
            client.submit_many([JobSpec(IDLE_KIND)] * 3)
        assert full.value.retry_after > 0


async def test_the_blocking_client_submits_a_batch_to_a_real_server(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    processes.env["JOBKEEPER_MAX_QUEUED"] = "5"
    base = await processes.serve("api")
    await asyncio.to_thread(_sync_batch, base, key)
    assert await count_jobs(job_manager, tenant) == 3
