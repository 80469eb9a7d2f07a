"""Request parameters and bodies, and response bodies, of the HTTP API (pydantic: validation and
the OpenAPI schema).

Responses are built by ``job_json`` directly (a hot path); ``JobOut`` describes the same shape.
Where the manager checks a value itself (job ids, kinds, text and JSON Postgres cannot store), the
schema only describes the rule, so the problem a client gets is the manager's (``invalid_job_id``,
``"field": "kind"``).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    Strict,
    WithJsonSchema,
)

from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import KIND_PATTERN, MAX_ATTEMPTS, MAX_PRIORITY, MAX_SEQUENCE
from jobkeeper.domain.values import Job

__all__ = [
    "CURSOR_PATTERN",
    "AnswerIn",
    "BatchIn",
    "BatchItemIn",
    "BatchOut",
    "JobId",
    "JobOut",
    "JobPageOut",
    "ResumeAfter",
    "SubmitIn",
    "SubmittedOut",
    "iso",
    "job_json",
]

# --- parameters -----------------------------------------------------------------------------------

# what ``JobManager.list`` returns as ``next_cursor``: a job id, base64url without padding
CURSOR_PATTERN = "^[A-Za-z0-9_-]{22}$"
# an event sequence number (a job version), as ``after`` and ``Last-Event-ID`` take it
_SEQUENCE: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE}

JobId = Annotated[
    str,
    Path(description="The job's id; one that is not a UUID is 400 `invalid_job_id`."),
    WithJsonSchema({"type": "string", "format": "uuid"}),
]


async def _resume_after(
    last_event_id: Annotated[str | None, Header(), WithJsonSchema(_SEQUENCE)] = None,
    after: Annotated[int, Query(ge=0, le=MAX_SEQUENCE)] = 0,
) -> int:
    """Where an event stream starts: after ``Last-Event-ID`` (what ``EventSource`` sends when it
    reconnects), else after ``after``. A malformed header is 400 ``invalid_request``."""
    if last_event_id is None:
        return after
    digits = last_event_id.strip()
    if (
        not (digits.isascii() and digits.isdigit())
        or len(digits) > len(str(MAX_SEQUENCE))  # before int(): 5,000 digits would raise
        or int(digits) > MAX_SEQUENCE
    ):
        raise ApiProblem(
            "invalid_request",
            f"Last-Event-ID must be an event sequence number (0 to {MAX_SEQUENCE})",
        )
    return int(digits)


# the sequence number an event stream starts after
ResumeAfter = Annotated[int, Depends(_resume_after)]

# --- body fields: what the schema says, pydantic (lax) would read more widely --------------------

# text Postgres can store (``storable``): no U+0000
_STORABLE_TEXT = "^[^\\u0000]*$"
_JSON_VALUE = {"$ref": "#/components/schemas/StorableJson"}
# RFC 3339 date-time, the offset optional here: the manager refuses a naive one, naming the field
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


class StorableJson(RootModel[Any]):
    """Any JSON value Postgres ``jsonb`` can store: no string or key contains U+0000."""

    root: Annotated[
        Any,
        WithJsonSchema(
            {
                "anyOf": [
                    {"type": ["null", "boolean", "number"]},
                    {"type": "string", "pattern": _STORABLE_TEXT},
                    {"type": "array", "items": _JSON_VALUE},
                    {
                        "type": "object",
                        "propertyNames": {"pattern": _STORABLE_TEXT},
                        "additionalProperties": _JSON_VALUE,
                    },
                ]
            }
        ),
    ]


def _as_parsed(value: Any) -> Any:
    return value


def _json_integer(value: Any) -> Any:
    # pydantic reads "3" and true as integers too; JSON Schema's integer is a number (3.0 is one)
    if isinstance(value, str | bool):
        raise ValueError("an integer is required")
    return value


def _date_time(value: Any) -> Any:
    # pydantic also reads numbers and "1700000000" as Unix times, and a space for the T
    if not (isinstance(value, str) and _DATE_TIME.fullmatch(value)):
        raise ValueError("an RFC 3339 date-time is required, e.g. 2030-01-01T00:00:00Z")
    return value


# any JSON value, described as ``StorableJson`` and taken as parsed (the manager checks it)
JsonValue = Annotated[Any, PlainValidator(_as_parsed, json_schema_input_type=StorableJson)]
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
DateTime = Annotated[datetime, BeforeValidator(_date_time)]


class SubmitIn(BaseModel):
    """``POST /jobs``: a new job."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        min_length=1,
        max_length=128,
        examples=["convert_pdf"],
        description="Letters, digits and _ . : / - (starting with a letter or digit).",
        json_schema_extra={"pattern": KIND_PATTERN},
    )
    payload: JsonValue = Field(default=None, description="Any JSON value (default: null).")
    priority: JsonInt = Field(default=0, ge=0, le=MAX_PRIORITY, description="Higher runs first.")
    concurrency_key: str | None = Field(
        default=None, min_length=1, max_length=255, json_schema_extra={"pattern": _STORABLE_TEXT}
    )
    max_attempts: JsonInt = Field(default=3, ge=1, le=MAX_ATTEMPTS)
    run_after: DateTime | None = Field(
        default=None,
        description="Not before. With an offset; once in UTC, after 0001-01-01T00:00:00 and "
        "before 9999-12-31T23:59:59.999999.",
    )
    pinned: Annotated[bool, Strict()] = False


class BatchItemIn(SubmitIn):
    """One job of ``POST /jobs:batch``: ``POST /jobs``'s body, with its idempotency key."""

    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="As `POST /jobs` takes it in its `Idempotency-Key` header: the same key "
        "with the same job is a replay; with another job, 422 `idempotency_key_reused`.",
        json_schema_extra={"pattern": _STORABLE_TEXT},
    )


class BatchIn(BaseModel):
    """``POST /jobs:batch``: jobs to submit together, all or nothing."""

    model_config = ConfigDict(extra="forbid")

    jobs: list[BatchItemIn] = Field(
        min_length=1,
        description="At most `JOBKEEPER_MAX_BATCH` jobs (default 1,000): more is 413 "
        "`batch_too_large`. Items sharing an idempotency key must ask for the same job "
        "(they then name one job); otherwise 422 `validation_error` for the later one.",
    )


class AnswerIn(BaseModel):
    """``POST /jobs/{id}/input``: the answer to the job's open question."""

    model_config = ConfigDict(extra="forbid")

    answer: JsonValue = Field(description="Must fit the question's JSON Schema and choices.")
    question_key: str | None = Field(
        default=None, min_length=1, max_length=255, json_schema_extra={"pattern": _STORABLE_TEXT}
    )


class ProgressOut(BaseModel):
    fraction: float | None
    message: str | None


class ErrorOut(BaseModel):
    code: str | None
    message: str | None


class PromptOut(BaseModel):
    key: str
    text: str | None = None
    schema_: Any = Field(default=None, alias="schema")
    choices: list[Any] | None = None
    timeout: float | None = None
    on_timeout: str | None = None
    default: Any = None


class JobOut(BaseModel):
    """A job as the API shows it. Timestamps are UTC ISO-8601."""

    id: str
    kind: str
    status: JobStatus
    progress: ProgressOut
    payload: Any
    result: Any
    error: ErrorOut | None
    prompt: PromptOut | None
    attempts: int
    max_attempts: int
    priority: int
    concurrency_key: str | None
    cancel_requested: bool
    pinned: bool
    version: int
    run_after: str
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    schedule_id: str | None = Field(description="The schedule that submitted the job, if any.")
    scheduled_for: str | None = Field(description="The schedule's tick the job stands for.")
    parent_id: str | None = Field(
        default=None, description="The job whose handler spawned this one (ctx.spawn), if any."
    )
    waiting_for: list[str] | None = Field(
        default=None,
        description="The child jobs a waiting_children job waits for (ctx.wait_for).",
    )
    sleeping_until: str | None = Field(
        default=None,
        description="When a job parked by a durable sleep (ctx.sleep) wakes up (cleared when"
        " its re-run reaches that sleep).",
    )


class SubmittedOut(BaseModel):
    """What one item of a batch became: the job, and whether this request created it."""

    created: bool = Field(description="False: an idempotent replay (of a stored job or an item).")
    job: JobOut


class BatchOut(BaseModel):
    """The jobs of a batch, in the order of its items."""

    jobs: list[SubmittedOut]


class JobPageOut(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


def iso(moment: datetime | None) -> str | None:
    """UTC ISO-8601 with a ``Z``, as every timestamp of the API."""
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def job_json(job: Job) -> dict[str, Any]:
    """The ``JobOut`` shape as a plain dict, without pydantic on the hot path."""
    error = job.error
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status.value,
        "progress": {"fraction": job.progress.fraction, "message": job.progress.message},
        "payload": job.payload,
        "result": job.result,
        "error": None
        if error is None
        else {"code": error.get("code"), "message": error.get("message")},
        "prompt": job.prompt,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "concurrency_key": job.concurrency_key,
        "cancel_requested": job.cancel_requested,
        "pinned": job.pinned,
        "version": job.version,
        "run_after": iso(job.run_after),
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "schedule_id": None if job.schedule_id is None else str(job.schedule_id),
        "scheduled_for": iso(job.scheduled_for),
        "parent_id": None if job.parent_id is None else str(job.parent_id),
        "waiting_for": None if job.waiting_for is None else [str(c) for c in job.waiting_for],
        "sleeping_until": iso(job.sleeping_until),
    }
