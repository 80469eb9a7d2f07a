"""Every field of every jobkeeper error reaches the problem body, and the typed client rebuilds
the same error from it: same class, same fields (``job_id``, ``expired_at``, ``limit``...)."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import APIRouter, FastAPI

from jobkeeper import errors
from jobkeeper.api.problems import ProblemRoute
from jobkeeper.client.errors import problem_error
from jobkeeper.errors import JobkeeperError

JOB = UUID("01a21000-0000-7000-8000-000000000001")
SAMPLES: list[JobkeeperError] = [
    errors.InvalidRequest("priority", "must be at most 100"),
    errors.TenantRequired(),
    errors.InvalidJobId("not-a-uuid"),
    errors.JobNotFound(JOB),
    errors.JobExpired(JOB, datetime(2026, 12, 1, 20, 59, 1, 500000, tzinfo=UTC)),
    errors.InvalidTransition(JOB, "running", "queued"),
    errors.JobFinished(JOB, "succeeded", "cancelled"),
    errors.IdempotencyConflict("order-17", JOB),
    errors.QueueFull("acme", 500, 2.5, "convert_pdf"),
    errors.QueueFull("acme", 50, 5.0),
    errors.InvalidAnswer(JOB, ["approve: 'yes' is not of type 'boolean'"]),
    errors.NotWaitingForInput(JOB, "running", "approval"),
    errors.SchemaMissing("jobkeeper"),
    errors.SchemaOutdated("jobkeeper"),
    errors.LeaseLost(JOB),
    errors.QuestionClaimed(JOB, "user:alice", datetime(2026, 12, 6, 4, 30, tzinfo=UTC)),
    errors.QuestionChanged(JOB, 2, 3),
    errors.QuestionChanged(JOB, 2, None),
    errors.ScheduleNotFound(UUID("01a21000-0000-7000-8000-000000000002")),
    errors.ScheduleExists("nightly-report"),
    errors.LifespanFailed(RuntimeError("no engine")),
    errors.DatabaseUnavailable("connection refused"),
]


def _fields(error: BaseException) -> dict[str, Any]:
    return {k: v for k, v in vars(error).items() if not k.startswith("_")}


def test_every_error_class_is_sampled() -> None:
    classes = {
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, JobkeeperError) and cls is not JobkeeperError
    }
    assert classes == {type(error) for error in SAMPLES}


@pytest.mark.parametrize("error", SAMPLES, ids=lambda e: f"{type(e).__name__}")
async def test_the_client_rebuilds_the_error_from_its_problem(error: JobkeeperError) -> None:
    router = APIRouter(route_class=ProblemRoute)

    @router.post("/jobs/{job_id}/cancel")
    async def failing(job_id: str) -> None:
        raise error

    app = FastAPI()
    app.include_router(router)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(f"/jobs/{uuid4()}/cancel")

    body = response.json()
    assert body["code"] == error.code
    for name in _fields(error):
        if name != "message":
            renamed = {"problems": "errors", "status": "job_status"}.get(name, name)
            assert renamed in body, (name, body)
    rebuilt = problem_error(response)
    assert type(rebuilt) is type(error)
    assert _fields(rebuilt) == _fields(error)
