"""The HTTP routes of periodic schedules (``/schedules``): thin, like ``routes.py``; the manager
validates the cron expression, the timezone and the job each tick submits.

No ``from __future__ import annotations``: the routes are built inside ``create_schedules_router``
with a local ``CallerDep`` type, which FastAPI can only resolve from real annotations.
"""

from datetime import timedelta
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict, WithJsonSchema

from jobkeeper.api.deps import CallerDependency, ServicesDep, api_key_caller, caller_router
from jobkeeper.api.problems import PROBLEM_RESPONSE
from jobkeeper.api.schemas import JsonInt, JsonValue, _json_integer, iso
from jobkeeper.domain.schedules import MAX_CATCH_UP, Schedule
from jobkeeper.domain.validate import KIND_PATTERN, MAX_ATTEMPTS, MAX_PRIORITY
from jobkeeper.domain.values import Caller

__all__ = [
    "ScheduleIn",
    "ScheduleOut",
    "SchedulesOut",
    "create_schedules_router",
    "schedule_json",
    "schedules_router",
]

_PROBLEM = PROBLEM_RESPONSE
_GET = "jobkeeper.get_schedule"
_TEXT = "^[^\\u0000]*$"
# a year, in whole seconds (domain/schedules.py)
_MAX_EVERY = 366 * 86_400

ScheduleId = Annotated[
    str,
    Path(description="The schedule's id; one that is not a UUID is 422."),
    WithJsonSchema({"type": "string", "format": "uuid"}),
]


class ScheduleIn(BaseModel):
    """``POST /schedules``: submit a ``kind`` job at each tick of ``cron`` (five fields, read on
    the wall clock of ``timezone``) or every ``every_seconds`` (exactly one of the two)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255, json_schema_extra={"pattern": _TEXT})
    kind: str = Field(min_length=1, max_length=128, json_schema_extra={"pattern": KIND_PATTERN})
    cron: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        examples=["*/5 * * * *"],
        json_schema_extra={"pattern": _TEXT},
    )
    # the bounds before the validator, so the schema's integer carries them
    every_seconds: Annotated[int, Ge(1), Le(_MAX_EVERY), BeforeValidator(_json_integer)] | None = (
        None
    )
    timezone: str = Field(default="UTC", min_length=1, max_length=64, examples=["Europe/Stockholm"])
    payload: JsonValue = Field(default=None, description="The payload of every tick's job.")
    misfire: Literal["latest", "all", "none"] = "latest"
    max_catch_up: JsonInt = Field(default=100, ge=1, le=MAX_CATCH_UP)
    priority: JsonInt = Field(default=0, ge=0, le=MAX_PRIORITY)
    max_attempts: JsonInt = Field(default=3, ge=1, le=MAX_ATTEMPTS)
    concurrency_key: str | None = Field(
        default=None, min_length=1, max_length=255, json_schema_extra={"pattern": _TEXT}
    )
    paused: Annotated[bool, Strict()] = False


class ScheduleOut(BaseModel):
    """A schedule as the API shows it. Timestamps are UTC ISO-8601."""

    id: str
    name: str
    kind: str
    cron: str | None
    every_seconds: int | None
    timezone: str
    misfire: str
    max_catch_up: int
    payload: Any
    computed_payload: bool
    priority: int
    max_attempts: int
    concurrency_key: str | None
    paused: bool
    declared: bool
    next_tick: str
    last_tick: str | None
    created_at: str
    updated_at: str


class SchedulesOut(BaseModel):
    items: list[ScheduleOut]


def schedule_json(schedule: Schedule) -> dict[str, Any]:
    """The ``ScheduleOut`` shape as a plain dict."""
    every = schedule.spec.every
    return {
        "id": str(schedule.id),
        "name": schedule.name,
        "kind": schedule.kind,
        "cron": schedule.spec.cron,
        "every_seconds": None if every is None else int(every.total_seconds()),
        "timezone": schedule.spec.timezone,
        "misfire": schedule.spec.misfire,
        "max_catch_up": schedule.spec.max_catch_up,
        "payload": schedule.payload,
        "computed_payload": schedule.computed_payload,
        "priority": schedule.priority,
        "max_attempts": schedule.max_attempts,
        "concurrency_key": schedule.concurrency_key,
        "paused": schedule.paused,
        "declared": schedule.declared,
        "next_tick": iso(schedule.next_tick),
        "last_tick": iso(schedule.last_tick),
        "created_at": iso(schedule.created_at),
        "updated_at": iso(schedule.updated_at),
    }


_ONE = {"model": ScheduleOut}


def create_schedules_router(*, caller: CallerDependency = api_key_caller) -> APIRouter:
    """The schedules routes (``/schedules``...), each asking ``caller`` who is calling (as
    ``create_router`` does for the jobs routes)."""
    CallerDep = Annotated[Caller, Depends(caller)]
    router = caller_router("/schedules", "schedules", caller)

    @router.post("", status_code=201, responses={201: _ONE, 409: _PROBLEM, 413: _PROBLEM})
    async def create_schedule(
        body: ScheduleIn, request: Request, svc: ServicesDep, who: CallerDep
    ) -> JSONResponse:
        """Create a schedule: 201 with ``Location``; 409 ``schedule_exists`` if the name is taken,
        422 for a bad cron expression or an unknown timezone."""
        schedule = await svc.jobs.create_schedule(
            who.tenant,
            body.name,
            body.kind,
            cron=body.cron,
            every=None if body.every_seconds is None else timedelta(seconds=body.every_seconds),
            timezone=body.timezone,
            payload=body.payload,
            misfire=body.misfire,
            max_catch_up=body.max_catch_up,
            priority=body.priority,
            max_attempts=body.max_attempts,
            concurrency_key=body.concurrency_key,
            paused=body.paused,
        )
        return JSONResponse(
            schedule_json(schedule),
            status_code=201,
            # the schedule's own route as the client reaches it (any prefix, any root_path)
            headers={"Location": request.url_for(_GET, schedule_id=str(schedule.id)).path},
        )

    @router.get("", response_model=SchedulesOut)
    async def list_schedules(svc: ServicesDep, who: CallerDep) -> JSONResponse:
        """The tenant's schedules, by name."""
        found = await svc.jobs.list_schedules(tenant=who.tenant)
        return JSONResponse({"items": [schedule_json(s) for s in found]})

    @router.get("/{schedule_id}", name=_GET, responses={200: _ONE, 404: _PROBLEM})
    async def get_schedule(
        schedule_id: ScheduleId, svc: ServicesDep, who: CallerDep
    ) -> JSONResponse:
        """The schedule."""
        return JSONResponse(
            schedule_json(await svc.jobs.get_schedule(schedule_id, tenant=who.tenant))
        )

    @router.post("/{schedule_id}/pause", responses={200: _ONE, 404: _PROBLEM})
    async def pause_schedule(
        schedule_id: ScheduleId, svc: ServicesDep, who: CallerDep
    ) -> JSONResponse:
        """Stop submitting jobs until resumed."""
        return JSONResponse(
            schedule_json(await svc.jobs.pause_schedule(schedule_id, tenant=who.tenant))
        )

    @router.post("/{schedule_id}/resume", responses={200: _ONE, 404: _PROBLEM})
    async def resume_schedule(
        schedule_id: ScheduleId, svc: ServicesDep, who: CallerDep
    ) -> JSONResponse:
        """Submit jobs again from the next tick (ticks that passed while paused do not run)."""
        return JSONResponse(
            schedule_json(await svc.jobs.resume_schedule(schedule_id, tenant=who.tenant))
        )

    @router.delete(
        "/{schedule_id}", status_code=204, response_class=Response, responses={404: _PROBLEM}
    )
    async def delete_schedule(
        schedule_id: ScheduleId, svc: ServicesDep, who: CallerDep
    ) -> Response:
        """Delete the schedule; the jobs it submitted stay."""
        await svc.jobs.delete_schedule(schedule_id, tenant=who.tenant)
        return Response(status_code=204)

    return router


# the schedules routes on jobkeeper's API keys
schedules_router = create_schedules_router()
