"""The loan office end to end, against a real Postgres: its own Alembic check with jobkeeper
migrated beside it, a row and its job created atomically, a worker using the application's own
sessions, a loan that waits for an underwriter who answers through the application's own route
as the application's own user, and jobkeeper's routes on the application's auth: its users are
who answered and who cancelled, its 401 stays its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic import command
from jobkeeper import JobManager, Worker
from sqlalchemy.ext.asyncio import create_async_engine

from loanapp.models import User
from loanapp.tasks import tasks

from .conftest import alembic_config

CLERK = {"Authorization": "Bearer clerk-token"}
UNDERWRITER = {"Authorization": "Bearer underwriter-token"}


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = 20.0) -> Any:
    end = time.monotonic() + within
    while not (value := await check()):
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
    return value


@pytest.fixture(scope="module", autouse=True)
async def staff(app_database: str) -> None:
    engine = create_async_engine(app_database)
    async with engine.begin() as conn:
        await conn.execute(
            sa.insert(User),
            [
                {"name": "carol", "token": "clerk-token", "office": "north", "underwriter": False},
                {
                    "name": "uma",
                    "token": "underwriter-token",
                    "office": "north",
                    "underwriter": True,
                },
            ],
        )
    await engine.dispose()


@pytest.fixture
async def worker(client: httpx.AsyncClient, job_manager: JobManager) -> AsyncIterator[Worker]:
    """A worker on the application's jobs, as `jobkeeper worker loanapp.tasks:tasks` runs one
    (its own manager, beside the application's)."""
    running = Worker(job_manager, tasks, concurrency=2, lease_seconds=10, poll_interval=0.2)
    task = asyncio.create_task(running.run())
    try:
        yield running
    finally:
        running.stop()
        await task


def test_the_applications_alembic_check_passes_with_jobkeeper_beside_it(app_database: str) -> None:
    command.check(alembic_config(app_database))


async def test_the_applications_own_auth_answers_for_itself(client: httpx.AsyncClient) -> None:
    response = await client.post("/documents", json={"title": "x"})
    assert response.status_code == 401
    assert response.json() == {"detail": "who are you?"}  # the application's body, untouched


async def test_a_document_and_its_job_commit_together_and_the_worker_converts_it(
    client: httpx.AsyncClient, worker: Worker
) -> None:
    created = await client.post("/documents", json={"title": "a short lease"}, headers=CLERK)
    assert created.status_code == 201, created.text
    document_id = created.json()["id"]

    async def converted() -> Any:
        found = await client.get(f"/documents/{document_id}", headers=CLERK)
        return found.json()["pages"]

    assert await eventually(converted, "the worker to convert the document") == 3


async def test_a_large_loan_waits_for_an_underwriter_who_answers_as_herself(
    client: httpx.AsyncClient, worker: Worker
) -> None:
    applied = await client.post(
        "/loans", json={"applicant": "Ada", "amount": "50000.00"}, headers=CLERK
    )
    assert applied.status_code == 201, applied.text
    loan_id = applied.json()["id"]

    async def waiting() -> Any:
        loan = (await client.get(f"/loans/{loan_id}", headers=CLERK)).json()
        return loan if loan["job"]["status"] == "waiting_input" else None

    loan = await eventually(waiting, "the loan's job to ask")
    assert loan["job"]["question"]["key"] == "decision"
    refused = await client.post(f"/loans/{loan_id}/decision", json={"approve": True}, headers=CLERK)
    assert refused.status_code == 403  # a clerk does not decide loans
    decided = await client.post(
        f"/loans/{loan_id}/decision", json={"approve": True, "note": "ok"}, headers=UNDERWRITER
    )
    assert decided.status_code == 202, decided.text

    async def approved() -> Any:
        # the handler approves the loan, then its job succeeds: wait for both
        loan = (await client.get(f"/loans/{loan_id}", headers=CLERK)).json()
        return loan if loan["job"]["status"] == "succeeded" else None

    final = await eventually(approved, "the resumed job to approve the loan")
    assert (final["status"], final["decided_by"]) == ("approved", "user:uma")


async def test_a_small_loan_is_approved_without_asking(
    client: httpx.AsyncClient, worker: Worker
) -> None:
    applied = await client.post("/loans", json={"applicant": "Bo", "amount": "500"}, headers=CLERK)
    loan_id = applied.json()["id"]

    async def decided() -> Any:
        loan = (await client.get(f"/loans/{loan_id}", headers=CLERK)).json()
        return loan if loan["status"] != "submitted" else None

    loan = await eventually(decided, "the automatic approval")
    assert (loan["status"], loan["decided_by"]) == ("approved", None)


async def waiting_loan(client: httpx.AsyncClient, amount: str) -> dict[str, Any]:
    applied = await client.post("/loans", json={"applicant": "Cy", "amount": amount}, headers=CLERK)
    assert applied.status_code == 201, applied.text

    async def waiting() -> Any:
        loan = (await client.get(f"/loans/{applied.json()['id']}", headers=CLERK)).json()
        return loan if loan["job"]["status"] == "waiting_input" else None

    loan: dict[str, Any] = await eventually(waiting, "the loan's job to ask")
    return {**loan, "job_id": applied.json()["job_id"]}


async def test_jobkeepers_routes_on_the_applications_auth_record_its_user(
    client: httpx.AsyncClient, worker: Worker, job_manager: JobManager
) -> None:
    """An underwriter answers through jobkeeper's own route (``/api/jobs/{id}/input``): the
    application's caller says who she is, and that is who the loan records."""
    loan = await waiting_loan(client, "75000")
    job_id = loan["job_id"]
    seen = await client.get(f"/api/jobs/{job_id}", headers=UNDERWRITER)
    assert seen.json()["prompt"]["key"] == "decision"
    answered = await client.post(
        f"/api/jobs/{job_id}/input",
        json={"answer": {"approve": False, "note": "too much"}},
        headers=UNDERWRITER,
    )
    assert answered.status_code == 200, answered.text

    async def declined() -> Any:
        found = (await client.get(f"/loans/{loan['id']}", headers=CLERK)).json()
        return found if found["status"] == "declined" else None

    assert (await eventually(declined, "the declined loan"))["decided_by"] == "user:uma"
    history = await job_manager.events(job_id, tenant="north")
    (answered_event,) = [e.data for e in history if e.type == "answered"]
    # who answered, and from which replica (host:pid) the answer came
    assert answered_event == {
        "key": "decision",
        "answered_by": "user:uma",
        "replica": answered_event["replica"],
    }
    assert answered_event["replica"].rsplit(":", 1)[1].isdigit()


async def test_a_clerk_cancels_through_jobkeepers_route_as_herself(
    client: httpx.AsyncClient, worker: Worker, job_manager: JobManager
) -> None:
    loan = await waiting_loan(client, "90000")
    cancelled = await client.post(f"/api/jobs/{loan['job_id']}/cancel", headers=CLERK)
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    history = await job_manager.events(loan["job_id"], tenant="north")
    assert (history[-1].type, history[-1].data) == ("cancelled", {"cancelled_by": "user:carol"})


async def test_jobkeepers_errors_are_problems_and_the_applications_stay_its_own(
    client: httpx.AsyncClient,
) -> None:
    missing = await client.get(f"/api/jobs/{uuid.uuid4()}", headers=CLERK)
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "job_not_found"
    anonymous = await client.get("/api/jobs")
    assert (anonymous.status_code, anonymous.json()) == (401, {"detail": "who are you?"})
    submitted = await client.post("/api/jobs", json={"kind": "audit.report"}, headers=CLERK)
    assert submitted.headers["location"] == f"/api/jobs/{submitted.json()['id']}"
    # jobkeeper's routes ask for the application's scheme in its OpenAPI
    spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/api/jobs"]["post"]["security"] == [{"loanOfficeToken": []}]
