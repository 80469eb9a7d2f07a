"""The HTTP API contract, row by row, through httpx against the ASGI app (lifespan running, real
Postgres): submit, idempotent replay, validation, backpressure, body limits, reads with ETags and
consistency, listing, cancel and input."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest

from jobkeeper.api.app import create_app
from jobkeeper.domain.batch import JobSpec
from jobkeeper.errors import InvalidRequest
from jobkeeper.manager import JobManager

from .support import (
    IDLE_KIND,
    assert_job,
    assert_problem,
    bearer,
    job_status,
    make_settings,
    running_worker,
    serve,
)

NO_CACHE = {"Cache-Control": "no-cache"}


async def submit(client: httpx.AsyncClient, kind: str = IDLE_KIND, **body: Any) -> dict[str, Any]:
    response = await client.post("/jobs", json={"kind": kind, **body})
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


async def listed(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    response = await client.get("/jobs", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


# --- submit --------------------------------------------------------------------------------------


async def test_submit_returns_201_with_location_etag_and_the_whole_job(
    api: httpx.AsyncClient,
) -> None:
    body = {
        "kind": IDLE_KIND,
        "payload": {"file": "loan-1234.pdf", "pages": [1, 2], "note": "ünïcode"},
        "priority": 7,
        "concurrency_key": "customer-42",
        "max_attempts": 2,
        "run_after": "2030-01-01T02:00:00+02:00",
        "pinned": True,
    }
    response = await api.post("/jobs", json=body)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    job = assert_job(response.json())
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert response.headers["etag"] == '"1"'
    assert uuid.UUID(job["id"])
    assert job["kind"] == IDLE_KIND
    assert job["status"] == "queued"
    assert job["progress"] == {"fraction": None, "message": None}
    assert job["payload"] == body["payload"]
    assert job["result"] is None and job["error"] is None and job["prompt"] is None
    assert job["attempts"] == 0
    assert job["max_attempts"] == 2
    assert job["priority"] == 7
    assert job["concurrency_key"] == "customer-42"
    assert job["cancel_requested"] is False
    assert job["pinned"] is True
    assert job["version"] == 1
    assert job["run_after"] == "2030-01-01T00:00:00Z"
    assert job["created_at"] == job["updated_at"]
    assert job["started_at"] is None and job["finished_at"] is None

    again = await api.get(response.headers["location"])
    assert again.status_code == 200
    assert again.json() == job


async def test_submit_defaults(api: httpx.AsyncClient) -> None:
    job = assert_job(await submit(api))
    assert job["payload"] is None
    assert job["priority"] == 0
    assert job["max_attempts"] == 3
    assert job["pinned"] is False
    assert job["concurrency_key"] is None
    assert datetime.fromisoformat(job["run_after"]) <= datetime.fromisoformat(job["created_at"])


async def test_replaying_an_idempotency_key_returns_the_same_job(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"upload-{uuid.uuid4()}"}
    body = {"kind": IDLE_KIND, "payload": {"loan": 1234}}
    first = await api.post("/jobs", json=body, headers=key)
    replay = await api.post("/jobs", json=body, headers=key)

    assert first.status_code == 201, first.text
    assert replay.status_code == 200, replay.text
    assert replay.json() == first.json()
    assert replay.headers["location"] == first.headers["location"]
    assert replay.headers["etag"] == first.headers["etag"]

    other = await api.post("/jobs", json={**body, "payload": {"loan": 9999}}, headers=key)
    problem = assert_problem(other, 422, "idempotency_key_reused")
    assert first.json()["id"] in problem["detail"]
    assert [j["id"] for j in await listed(api)] == [first.json()["id"]]


async def test_an_integral_number_is_an_integer(api: httpx.AsyncClient) -> None:
    """As in JSON Schema: ``5.0`` is the integer 5."""
    job = await submit(api, priority=5.0, max_attempts=2.0)
    assert (job["priority"], job["max_attempts"]) == (5, 2)


async def test_the_same_body_without_a_key_creates_two_jobs(api: httpx.AsyncClient) -> None:
    a, b = await submit(api), await submit(api)
    assert a["id"] != b["id"]


@pytest.mark.parametrize(
    ("content", "where"),
    [
        (b"{}", "kind"),
        (b'{"kind": ""}', "kind"),
        (b'{"kind": 5}', "kind"),
        (b'{"kind": "' + b"k" * 129 + b'"}', "kind"),
        (b'{"kind": "report", "colour": "blue"}', "colour"),
        (b'{"kind": "report", "priority": -1}', "priority"),
        (b'{"kind": "report", "priority": 32768}', "priority"),
        (b'{"kind": "report", "priority": "high"}', "priority"),
        (b'{"kind": "report", "priority": 9223372036854775808}', "priority"),
        (b'{"kind": "report", "priority": 1e300}', "priority"),
        (b'{"kind": "report", "max_attempts": 18446744073709551616}', "max_attempts"),
        (b'{"kind": "report", "max_attempts": 0}', "max_attempts"),
        (b'{"kind": "report", "concurrency_key": ""}', "concurrency_key"),
        (b'{"kind": "report", "run_after": "tomorrow"}', "run_after"),
        (b'{"kind": "report", "pinned": "maybe"}', "pinned"),
        # what the schema refuses, pydantic's lax mode read: text and booleans as numbers,
        # numbers as booleans, numbers and digits as Unix times (schemathesis found these)
        (b'{"kind": "report", "priority": "5"}', "priority"),
        (b'{"kind": "report", "max_attempts": true}', "max_attempts"),
        (b'{"kind": "report", "pinned": 0}', "pinned"),
        (b'{"kind": "report", "run_after": 1900000000}', "run_after"),
        (b'{"kind": "report", "run_after": "1900000000"}', "run_after"),
        (b'{"kind": "report", "run_after": "2030-01-01 00:00:00Z"}', "run_after"),
        (b'{"kind": "report",', ""),
        (b"[]", ""),
        (b"", ""),
    ],
    ids=lambda value: value.decode()[:40] if isinstance(value, bytes) else value,
)
async def test_invalid_bodies_are_422_validation_errors(
    api: httpx.AsyncClient, content: bytes, where: str
) -> None:
    response = await api.post(
        "/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    problem = assert_problem(response, 422, "validation_error")
    assert isinstance(problem["errors"], list) and problem["errors"]
    if where:
        assert any(where in map(str, error["loc"]) for error in problem["errors"]), problem
    assert await listed(api) == []


@pytest.mark.parametrize(
    "content",
    [b'{"kind": "report", "payload": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000],
    ids=["5000-digit-number", "nested-100000-deep"],
)
async def test_a_body_python_cannot_read_is_400(api: httpx.AsyncClient, content: bytes) -> None:
    response = await api.post(
        "/jobs", content=content, headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "invalid_request")
    assert await listed(api) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "no spaces allowed"}, "kind"),
        ({"kind": "report", "run_after": "2030-01-01T00:00:00"}, "run_after"),
        ({"kind": "report", "payload": {"text": "nul \u0000 inside"}}, "payload"),
        # in UTC these are 10000-01-01T13:59:59Z and 0000-12-31T10:00:00Z: past Python's datetime
        ({"kind": "report", "run_after": "9999-12-31T23:59:59-14:00"}, "run_after"),
        ({"kind": "report", "run_after": "0001-01-01T00:00:00+14:00"}, "run_after"),
        # Python's first and last instants: asyncpg stores them as -infinity and infinity
        ({"kind": "report", "run_after": "0001-01-01T00:00:00Z"}, "run_after"),
        ({"kind": "report", "run_after": "9999-12-31T23:59:59.999999Z"}, "run_after"),
        ({"kind": "report", "concurrency_key": "nul \u0000"}, "concurrency_key"),
    ],
    ids=[
        "kind-pattern",
        "naive-run_after",
        "nul-in-payload",
        "run_after-after-9999-in-utc",
        "run_after-before-0001-in-utc",
        "run_after-first-instant",
        "run_after-last-instant",
        "nul-in-concurrency_key",
    ],
)
async def test_values_the_manager_refuses_are_422_validation_errors(
    api: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    problem = assert_problem(await api.post("/jobs", json=body), 422, "validation_error")
    assert problem["field"] == field
    assert await listed(api) == []


@pytest.mark.parametrize(
    "run_after",
    [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14))),
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
    ids=["after-9999-in-utc", "before-0001-in-utc", "first-instant", "last-instant"],
)
async def test_the_library_refuses_a_run_after_past_the_ends_of_utc(
    job_manager: JobManager, tenant: str, run_after: datetime
) -> None:
    """Past the ends it was an ``OverflowError`` from converting to UTC (a 500 over HTTP); the
    ends themselves were stored as -infinity and infinity and read back naive."""
    with pytest.raises(InvalidRequest) as refused:
        await job_manager.submit(tenant, IDLE_KIND, None, run_after=run_after)
    assert refused.value.code == "validation_error"
    assert refused.value.field == "run_after"
    assert (await job_manager.list(tenant=tenant)).items == ()


@pytest.mark.parametrize(
    ("run_after", "stored"),
    [
        ("0001-01-01T00:00:00.000001Z", "0001-01-01T00:00:00.000001Z"),
        ("0001-01-01T00:00:00-14:00", "0001-01-01T14:00:00Z"),
        ("9999-12-31T23:59:59.999998Z", "9999-12-31T23:59:59.999998Z"),
        ("9999-12-31T23:59:59+14:00", "9999-12-31T09:59:59Z"),
    ],
)
async def test_a_run_after_inside_the_ends_of_utc_is_stored_exactly(
    api: httpx.AsyncClient, run_after: str, stored: str
) -> None:
    """Postgres timestamptz (4713 BC to 294276 AD) holds everything between Python's ends."""
    job = await submit(api, run_after=run_after)
    assert job["run_after"] == stored
    read = await api.get(f"/jobs/{job['id']}", headers=NO_CACHE)
    assert read.json()["run_after"] == stored


@pytest.mark.parametrize("key", ["", "k" * 256], ids=["empty", "overlong"])
async def test_an_empty_or_overlong_idempotency_key_is_a_validation_error(
    api: httpx.AsyncClient, key: str
) -> None:
    response = await api.post("/jobs", json={"kind": IDLE_KIND}, headers={"Idempotency-Key": key})
    assert_problem(response, 422, "validation_error")
    assert await listed(api) == []


async def test_a_full_queue_is_429_with_retry_after(database_url: str, api_key: str) -> None:
    app = create_app(make_settings(database_url, max_queued=1, queue_full_retry_after=7))
    async with serve(app, bearer(api_key)) as served:
        first = await submit(served.client)
        refused = await served.client.post("/jobs", json={"kind": IDLE_KIND})
        problem = assert_problem(refused, 429, "queue_full")
        assert refused.headers["retry-after"] == "7"
        assert problem["retry_after"] == 7
        assert [j["id"] for j in await listed(served.client)] == [first["id"]]

        cancelled = await served.client.post(f"/jobs/{first['id']}/cancel")
        assert cancelled.status_code == 202
        await submit(served.client)  # room again


@pytest.fixture
async def small_body_api(database_url: str, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(make_settings(database_url, max_payload_bytes=200))
    async with serve(app, bearer(api_key)) as served:
        yield served.client


async def test_a_body_over_the_limit_with_content_length_is_413(
    small_body_api: httpx.AsyncClient,
) -> None:
    response = await small_body_api.post("/jobs", json={"kind": IDLE_KIND, "payload": "x" * 300})
    problem = assert_problem(response, 413, "payload_too_large")
    assert "200" in problem["detail"]
    assert await listed(small_body_api) == []
    await submit(small_body_api, payload="x" * 100)  # under the limit: accepted


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_a_chunked_body_over_the_limit_is_413(small_body_api: httpx.AsyncClient) -> None:
    parts = (b'{"kind": "report", "payload": "', *(b"x" * 50 for _ in range(8)), b'"}')
    response = await small_body_api.post(
        "/jobs", content=_chunks(*parts), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload_too_large")


async def test_a_chunked_body_under_the_limit_is_accepted(
    small_body_api: httpx.AsyncClient,
) -> None:
    response = await small_body_api.post(
        "/jobs",
        content=_chunks(b'{"kind": "report", ', b'"payload": "small"}'),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text


async def test_a_413_has_one_request_id_header(small_body_api: httpx.AsyncClient) -> None:
    response = await small_body_api.post("/jobs", json={"kind": IDLE_KIND, "payload": "x" * 300})
    assert response.status_code == 413
    assert len(response.headers.get_list("x-request-id")) == 1


# --- read ----------------------------------------------------------------------------------------


async def test_get_has_an_etag_and_if_none_match_gives_304(api: httpx.AsyncClient) -> None:
    job = await submit(api)
    path = f"/jobs/{job['id']}"
    response = await api.get(path)
    assert response.status_code == 200
    assert response.headers["etag"] == '"1"'
    assert assert_job(response.json()) == job

    for tag in ('"1"', "*", '"7", "1"'):
        not_modified = await api.get(path, headers={"If-None-Match": tag})
        assert not_modified.status_code == 304, tag
        assert not_modified.content == b""
        assert not_modified.headers["etag"] == '"1"'
    assert (await api.get(path, headers={"If-None-Match": '"0"'})).status_code == 200

    assert (await api.post(f"{path}/cancel")).status_code == 202
    changed = await api.get(path, headers={"If-None-Match": '"1"'})
    assert changed.status_code == 200
    assert changed.headers["etag"] == '"2"'
    assert changed.json()["status"] == "cancelled"
    assert (await api.get(path, headers={"If-None-Match": '"2"'})).status_code == 304


@pytest.mark.parametrize(
    "tag",
    ['"9223372036854775808"', "9" * 5000, '"1', "W/", "", ","],
    ids=["past-int64", "5000-digits", "unquoted", "weak-prefix-only", "empty", "comma"],
)
async def test_an_if_none_match_that_names_no_version_is_a_200(
    api: httpx.AsyncClient, tag: str
) -> None:
    """Tags are compared as text, never parsed as numbers: any value is just another tag."""
    job = await submit(api)
    response = await api.get(f"/jobs/{job['id']}", headers={"If-None-Match": tag})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"1"'


async def test_no_cache_reads_postgres_while_the_cache_is_stale(
    database_url: str, api_key: str, job_manager: JobManager, tenant: str
) -> None:
    # catch-up polling once an hour: this replica's cache does not hear of other processes' writes
    app = create_app(make_settings(database_url, feed_mode="poll", feed_interval=3600))
    async with serve(app, bearer(api_key)) as served:
        api = served.client
        job = await submit(api)
        path = f"/jobs/{job['id']}"
        assert (await api.get(path)).json()["version"] == 1  # cached now

        await job_manager.cancel(job["id"], tenant=tenant)  # another process changes it

        cached = await api.get(path)
        assert cached.json()["version"] in (1, 2)  # may be stale
        strong = await api.get(path, headers=NO_CACHE)
        assert strong.status_code == 200
        assert strong.json()["status"] == "cancelled"
        assert strong.json()["version"] == 2
        assert strong.headers["etag"] == '"2"'
        fresh_304 = await api.get(path, headers={**NO_CACHE, "If-None-Match": '"1"'})
        assert fresh_304.status_code == 200
        # the strong read refreshed this replica: cached reads do not go back in time
        assert (await api.get(path)).json()["version"] == 2


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/cancel"), ("POST", "/input"), ("GET", "/events")],
)
async def test_a_malformed_job_id_is_400_and_an_unknown_one_404(
    api: httpx.AsyncClient, method: str, suffix: str
) -> None:
    body = {"answer": {"approve": True}} if suffix == "/input" else None
    bad = await api.request(method, f"/jobs/not-a-uuid{suffix}", json=body)
    assert_problem(bad, 400, "invalid_job_id")
    missing = await api.request(method, f"/jobs/{uuid.uuid4()}{suffix}", json=body)
    assert_problem(missing, 404, "job_not_found")


# --- list ----------------------------------------------------------------------------------------


async def test_list_filters_and_pages_newest_first(api: httpx.AsyncClient) -> None:
    reports = [(await submit(api, "report.build", payload={"n": n}))["id"] for n in range(5)]
    mails = [(await submit(api, "mail.send"))["id"] for _ in range(2)]
    assert (await api.post(f"/jobs/{reports[1]}/cancel")).status_code == 202
    newest_first = list(reversed(reports + mails))

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await api.get("/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"items", "next_cursor"}
        assert len(page["items"]) <= 2
        for item in page["items"]:
            assert_job(item)
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10
    assert seen == newest_first

    assert [j["id"] for j in await listed(api, status="cancelled")] == [reports[1]]
    assert [j["id"] for j in await listed(api, kind="mail.send")] == list(reversed(mails))
    queued_reports = await listed(api, status="queued", kind="report.build")
    assert [j["id"] for j in queued_reports] == [r for r in reversed(reports) if r != reports[1]]
    assert await listed(api, kind="nothing.like.this") == []
    assert len(await listed(api, limit=500)) == 7
    assert (await api.get("/jobs", params={"limit": 7})).json()["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"limit": "many"},
        {"status": "sleeping"},
        {"limit": 2**63},
        {"limit": "9" * 5000},
        {"cursor": "not a cursor!"},
        {"cursor": "A" * 22 + "=="},
        {"kind": "k" * 129},
    ],
    ids=[
        "limit-0",
        "limit-501",
        "limit-text",
        "limit-past-int64",
        "limit-5000-digits",
        "status",
        "cursor",
        "cursor-padded",
        "kind",
    ],
)
async def test_bad_list_parameters_are_422(api: httpx.AsyncClient, params: dict[str, Any]) -> None:
    assert_problem(await api.get("/jobs", params=params), 422, "validation_error")


# --- cancel --------------------------------------------------------------------------------------


async def test_cancel_a_queued_job_cancels_it_at_once(api: httpx.AsyncClient) -> None:
    job = await submit(api)
    response = await api.post(f"/jobs/{job['id']}/cancel")
    assert response.status_code == 202, response.text
    cancelled = assert_job(response.json())
    assert cancelled["status"] == "cancelled"
    assert cancelled["version"] == 2
    assert response.headers["etag"] == '"2"'
    assert cancelled["finished_at"] is not None

    again = await api.post(f"/jobs/{job['id']}/cancel")
    assert_problem(again, 409, "job_finished")
    assert (await api.get(f"/jobs/{job['id']}", headers=NO_CACHE)).json()["version"] == 2


async def test_cancel_a_running_job_requests_it_and_the_worker_stops(
    api: httpx.AsyncClient, job_manager: JobManager
) -> None:
    job = await submit(api, "demo.sleep", payload={"seconds": 60, "steps": 600})
    async with running_worker(job_manager, ["demo.sleep"]):
        await job_status(api, job["id"], ["running"], **NO_CACHE)
        response = await api.post(f"/jobs/{job['id']}/cancel")
        assert response.status_code == 202, response.text
        requested = assert_job(response.json())
        assert requested["cancel_requested"] is True
        assert requested["status"] in ("running", "cancelled")

        done = await job_status(api, job["id"], ["cancelled"], **NO_CACHE)
        assert done["finished_at"] is not None
    assert_problem(await api.post(f"/jobs/{job['id']}/cancel"), 409, "job_finished")


# --- input ---------------------------------------------------------------------------------------


async def test_answer_a_waiting_job(api: httpx.AsyncClient, job_manager: JobManager) -> None:
    job = await submit(api, "demo.ask", payload={"question": "Ship release 1.2?"})
    path = f"/jobs/{job['id']}"
    async with running_worker(job_manager, ["demo.ask"]):
        waiting = await job_status(api, job["id"], ["waiting_input"], **NO_CACHE)
        prompt = waiting["prompt"]
        assert prompt["text"] == "Ship release 1.2?"
        assert prompt["schema"]["required"] == ["approve"]
        assert isinstance(prompt["key"], str)

        for wrong in ({"approve": "yes"}, {"comment": "no approve"}, {"approve": True, "x": 1}):
            refused = await api.post(f"{path}/input", json={"answer": wrong})
            problem = assert_problem(refused, 422, "invalid_answer")
            assert isinstance(problem["errors"], list) and problem["errors"]
        unchanged = (await api.get(path, headers=NO_CACHE)).json()
        assert unchanged["version"] == waiting["version"]

        other_question = await api.post(
            f"{path}/input", json={"answer": {"approve": True}, "question_key": "not-asked"}
        )
        assert_problem(other_question, 409, "not_waiting_for_input")

        answer = {"approve": True, "comment": "go"}
        response = await api.post(f"{path}/input", json={"answer": answer})
        assert response.status_code == 200, response.text
        answered = assert_job(response.json())
        assert answered["version"] > waiting["version"]
        assert answered["prompt"] is None or answered["status"] != "waiting_input"
        assert response.headers["etag"] == f'"{answered["version"]}"'

        done = await job_status(api, job["id"], ["succeeded"], **NO_CACHE)
        assert done["result"] == {"question": "Ship release 1.2?", "answer": answer}

    # the accepted answer again is a safe retry; another answer is refused
    retry = await api.post(f"{path}/input", json={"answer": answer})
    assert retry.status_code == 200, retry.text
    different = await api.post(f"{path}/input", json={"answer": {"approve": False}})
    assert_problem(different, 409, "not_waiting_for_input")


async def test_answer_a_job_that_asked_nothing_is_409(api: httpx.AsyncClient) -> None:
    job = await submit(api)
    response = await api.post(f"/jobs/{job['id']}/input", json={"answer": {"approve": True}})
    assert_problem(response, 409, "not_waiting_for_input")
    assert (await api.get(f"/jobs/{job['id']}", headers=NO_CACHE)).json()["version"] == 1


@pytest.mark.parametrize(
    "body",
    [{}, {"answer": True, "extra": 1}, {"answer": True, "question_key": ""}],
    ids=["missing-answer", "unknown-field", "empty-key"],
)
async def test_a_malformed_input_body_is_422(api: httpx.AsyncClient, body: dict[str, Any]) -> None:
    job = await submit(api)
    response = await api.post(f"/jobs/{job['id']}/input", json=body)
    assert_problem(response, 422, "validation_error")


async def test_get_shows_a_parents_children_and_a_sleepers_wake_up_time(
    api: httpx.AsyncClient, job_manager: JobManager
) -> None:
    kind = f"parent-{uuid.uuid4().hex[:10]}"
    parent = await submit(api, kind)
    [lease] = await job_manager.claim(uuid.uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    child, _ = await job_manager.spawn(lease, "spawn:c1", JobSpec(IDLE_KIND, {"n": 1}))
    await job_manager.wait_for_children(lease, [child.id])
    shown = assert_job((await api.get(f"/jobs/{parent['id']}", headers=NO_CACHE)).json())
    assert shown["status"] == "waiting_children"
    assert shown["waiting_for"] == [str(child.id)] and shown["parent_id"] is None
    shown_child = assert_job((await api.get(f"/jobs/{child.id}", headers=NO_CACHE)).json())
    assert shown_child["parent_id"] == parent["id"] and shown_child["waiting_for"] is None

    sleeper = await submit(api, kind)
    [lease] = await job_manager.claim(uuid.uuid4(), kinds=[kind], limit=1, lease_seconds=30)
    await job_manager.sleep(lease, "sleep:s1", seconds=3600.0)
    shown = assert_job((await api.get(f"/jobs/{sleeper['id']}", headers=NO_CACHE)).json())
    assert shown["status"] == "queued" and shown["sleeping_until"] == shown["run_after"]
    assert datetime.fromisoformat(shown["sleeping_until"]) > datetime.now(UTC) + timedelta(
        minutes=59
    )
