"""Request parameters and bodies, and response bodies, of the HTTP API (pydantic: validation and
the OpenAPI schema).

Responses are built by ``job_json`` directly (a hot path); ``JobOut`` describes the same shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Header, Query
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from jobkeeper.api.problems import ApiProblem
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import MAX_ATTEMPTS, MAX_PRIORITY, MAX_SEQUENCE
from jobkeeper.domain.values import Job

__all__ = ["AnswerIn", "JobOut", "JobPageOut", "ResumeAfter", "SubmitIn", "iso", "job_json"]

# an event sequence number (a job version), as ``after`` and ``Last-Event-ID`` take it
_SEQUENCE: dict[str, Any] = {"type": "integer", "minimum": 0, "maximum": MAX_SEQUENCE}


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


class SubmitIn(BaseModel):
    """``POST /jobs``: a new job."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(
        min_length=1,
        max_length=128,
        examples=["convert_pdf"],
        description="Letters, digits and _ . : / - (starting with a letter or digit).",
    )
    payload: Any = Field(default=None, description="Any JSON value (default: null).")
    priority: int = Field(default=0, ge=0, le=MAX_PRIORITY, description="Higher runs first.")
    concurrency_key: str | None = Field(default=None, min_length=1, max_length=255)
    max_attempts: int = Field(default=3, ge=1, le=MAX_ATTEMPTS)
    run_after: datetime | None = Field(default=None, description="Timezone-aware; not before.")
    pinned: bool = False


class AnswerIn(BaseModel):
    """``POST /jobs/{id}/input``: the answer to the job's open question."""

    model_config = ConfigDict(extra="forbid")

    answer: Any = Field(description="Must fit the question's JSON Schema and choices.")
    question_key: str | None = Field(default=None, min_length=1, max_length=255)


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
    }
