"""The operations of the jobkeeper API as ``Call``s: the request each one sends and how its
response is read, without I/O, so that the async and the sync client speak one contract."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx
from pydantic import ValidationError

from jobkeeper.api.schemas import BatchOut, JobOut, JobPageOut, SubmittedOut
from jobkeeper.client.errors import ApiError, problem_error
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import Consistency

__all__ = [
    "Call",
    "JobRef",
    "ListFilters",
    "ListQuery",
    "SubmitOptions",
    "answer",
    "cancel",
    "get",
    "list_jobs",
    "next_page",
    "pin",
    "submit",
    "submit_many",
    "unpin",
]

T = TypeVar("T")
# a job as the caller names it: its id, or the job itself (``get`` then sends its ETag)
JobRef = str | UUID | JobOut


class SubmitOptions(TypedDict, total=False):
    """Keywords of ``submit``. One left out (or ``None``) is not sent: the server's default
    applies.

    - ``idempotency_key``: sent as ``Idempotency-Key``. The same key with the same request
      returns the job the first one created; with a different request it raises
      ``IdempotencyConflict``.
    - ``priority`` (0 to 32767, higher first; 0), ``max_attempts`` (3), ``concurrency_key``
      (one running job per key), ``pinned`` (``False``): as ``POST /jobs`` takes them.
    - ``run_after``: a timezone-aware ``datetime``; the job does not run before it.
    """

    idempotency_key: str | None
    priority: int | None
    max_attempts: int | None
    run_after: datetime | None
    concurrency_key: str | None
    pinned: bool | None


class ListFilters(TypedDict, total=False):
    """Which jobs a listing returns (``None`` or left out: any), and how many per page (the
    server's default: 50, at most 500)."""

    status: JobStatus | str | None
    kind: str | None
    limit: int | None


class ListQuery(ListFilters, total=False):
    """``ListFilters`` and the page to read: a ``next_cursor`` a listing returned."""

    cursor: str | None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how to read its answer: ``ok`` statuses through ``read``, any other
    status as the error its problem stands for."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    ok: frozenset[int]
    job_id: str | None = None
    params: Mapping[str, str] | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, response: httpx.Response) -> T:
        """The value of ``response`` (its body read), or raise the error it stands for."""
        if response.status_code not in self.ok:
            raise problem_error(response, job_id=self.job_id)
        try:
            return self.read(response)
        except ValidationError as exc:
            raise ApiError(
                response.status_code, None, f"unexpected response: {exc}", body=response.text
            ) from exc


def job_id_of(job: JobRef) -> str:
    return job.id if isinstance(job, JobOut) else str(job)


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{suffix}"


def _job(response: httpx.Response) -> JobOut:
    return JobOut.model_validate_json(response.content)


def _page(response: httpx.Response) -> JobPageOut:
    return JobPageOut.model_validate_json(response.content)


def _change(job: JobRef, suffix: str, ok: int, body: Any = None) -> Call[JobOut]:
    job_id = job_id_of(job)
    return Call("POST", job_path(job_id, suffix), _job, frozenset({ok}), job_id, body=body)


def submit(kind: str, payload: Any, options: SubmitOptions) -> Call[JobOut]:
    """``POST /jobs``: 201 created, 200 an idempotent replay."""
    body: dict[str, Any] = {"kind": kind, "payload": payload}
    body.update((name, value) for name, value in options.items() if value is not None)
    key = body.pop("idempotency_key", None)
    if isinstance(run_after := body.get("run_after"), datetime):
        body["run_after"] = run_after.isoformat()
    headers = {} if key is None else {"Idempotency-Key": str(key)}
    return Call("POST", "/jobs", _job, frozenset({200, 201}), body=body, headers=headers)


def _batch(response: httpx.Response) -> list[SubmittedOut]:
    return BatchOut.model_validate_json(response.content).jobs


def submit_many(items: Iterable[JobSpec | Mapping[str, Any]]) -> Call[list[SubmittedOut]]:
    """``POST /jobs:batch``: 201 (some created), 200 (every item a replay). An item is a
    ``JobSpec`` or a mapping of its fields; ``None`` fields are not sent (the server's default
    applies)."""
    jobs = []
    for item in items:
        fields = asdict(item) if isinstance(item, JobSpec) else dict(item)
        body = {name: value for name, value in fields.items() if value is not None}
        if isinstance(run_after := body.get("run_after"), datetime):
            body["run_after"] = run_after.isoformat()
        jobs.append(body)
    return Call("POST", "/jobs:batch", _batch, frozenset({200, 201}), body={"jobs": jobs})


def get(job: JobRef, consistency: Consistency) -> Call[JobOut]:
    """``GET /jobs/{id}``; for a ``JobOut``, conditional on its ETag, and a 304 reads as that
    same job. ``consistency="strong"`` sends ``Cache-Control: no-cache`` (read Postgres)."""
    known = job if isinstance(job, JobOut) else None
    headers = {} if known is None else {"If-None-Match": f'"{known.version}"'}
    if consistency == "strong":
        headers["Cache-Control"] = "no-cache"

    def read(response: httpx.Response) -> JobOut:
        if response.status_code == 304 and known is not None:
            return known
        return _job(response)

    job_id = job_id_of(job)
    ok = frozenset({200} if known is None else {200, 304})
    return Call("GET", job_path(job_id), read, ok, job_id, headers=headers)


def list_jobs(query: ListFilters, cursor: str | None = None) -> Call[JobPageOut]:
    """``GET /jobs``: one page, newest first (``query`` may be a ``ListQuery``)."""
    given = {**query, "cursor": cursor} if cursor is not None else query
    params = {name: str(value) for name, value in given.items() if value is not None}
    return Call("GET", "/jobs", _page, frozenset({200}), params=params)


def next_page(filters: ListFilters, page: JobPageOut) -> Call[JobPageOut] | None:
    """The page after ``page`` of the same listing, or ``None`` after the last one."""
    return None if page.next_cursor is None else list_jobs(filters, page.next_cursor)


def cancel(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/cancel``: 202 with the job (cancelled, or ``cancel_requested``)."""
    return _change(job, "/cancel", 202)


def pin(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/pin``: exempt from retention."""
    return _change(job, "/pin", 200)


def unpin(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/unpin``: subject to retention again."""
    return _change(job, "/unpin", 200)


def answer(job: JobRef, value: Any, question_key: str | None) -> Call[JobOut]:
    """``POST /jobs/{id}/input``: the answer to the open question (``question_key``: only if
    it is still that one)."""
    body: dict[str, Any] = {"answer": value}
    if question_key is not None:
        body["question_key"] = question_key
    return _change(job, "/input", 200, body)
