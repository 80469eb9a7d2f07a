"""The operations of the jobkeeper API as ``Call``s: the request each one sends and how its
response is read, without I/O, so that the async and the sync client speak one contract."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Generic, Literal, Protocol, TypedDict, TypeVar
from urllib.parse import quote
from uuid import UUID

import httpx
from pydantic import BaseModel, ValidationError

from jobkeeper.api.inbox import InboxPageOut, QuestionOut
from jobkeeper.api.schedules import ScheduleOut, SchedulesOut
from jobkeeper.api.schemas import BatchOut, JobOut, JobPageOut, SubmittedOut
from jobkeeper.client.errors import ApiError, problem_error
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import Consistency

__all__ = [
    "Call",
    "InboxFilters",
    "InboxQuery",
    "JobRef",
    "ListFilters",
    "ListQuery",
    "Page",
    "Pages",
    "ScheduleOptions",
    "ScheduleRef",
    "SubmitOptions",
    "answer",
    "cancel",
    "claim_question",
    "create_schedule",
    "delete_schedule",
    "get",
    "get_schedule",
    "inbox",
    "list_jobs",
    "list_schedules",
    "pause_schedule",
    "pin",
    "question",
    "release_question",
    "resume_schedule",
    "submit",
    "submit_many",
    "unpin",
]

T = TypeVar("T")
# covariant: a call read as a ``JobPageOut`` is one read as a ``Page[JobOut]`` (``Pages``)
T_co = TypeVar("T_co", covariant=True)
I_co = TypeVar("I_co", covariant=True)
M = TypeVar("M", bound=BaseModel)
# a job as the caller names it: its id, the job itself (``get`` then sends its ETag), or its open
# question (``answer`` then sends the question's version as ``If-Match``)
JobRef = str | UUID | JobOut | QuestionOut
# a schedule as the caller names it: its id, or the schedule itself
ScheduleRef = str | UUID | ScheduleOut


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


class InboxFilters(TypedDict, total=False):
    """Which open questions ``GET /inbox`` returns (``None`` or left out: any the caller may
    answer): a job ``kind``, an ``assignee`` (``user:<name>`` or ``role:<name>``); and how many
    per page (50, at most 500)."""

    kind: str | None
    assignee: str | None
    limit: int | None


class InboxQuery(InboxFilters, total=False):
    """``InboxFilters`` and the page to read: a ``next_cursor`` the inbox returned."""

    cursor: str | None


class ScheduleOptions(TypedDict, total=False):
    """Keywords of ``create_schedule``, the fields of ``POST /schedules``. One left out (or
    ``None``) is not sent: the server's default applies.

    - ``cron`` (five fields, on the wall clock of ``timezone``, ``"UTC"``) or ``every_seconds``:
      exactly one of the two.
    - ``misfire`` (``"latest"``, ``"all"`` or ``"none"``: which ticks missed while nothing ran
      are submitted; ``"latest"``) and ``max_catch_up`` (100).
    - ``priority``, ``max_attempts``, ``concurrency_key``: those of every tick's job.
    - ``paused`` (``False``): created paused.
    """

    cron: str | None
    every_seconds: int | None
    timezone: str | None
    misfire: Literal["latest", "all", "none"] | None
    max_catch_up: int | None
    priority: int | None
    max_attempts: int | None
    concurrency_key: str | None
    paused: bool | None


@dataclass(frozen=True, slots=True)
class Call(Generic[T_co]):
    """One request and how to read its answer: ``ok`` statuses through ``read``, any other
    status as the error its problem stands for."""

    method: str
    path: str
    read: Callable[[httpx.Response], T_co]
    ok: frozenset[int]
    job_id: str | None = None
    params: Mapping[str, str] | None = None
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def outcome(self, response: httpx.Response) -> T_co:
        """The value of ``response`` (its body read), or raise the error it stands for."""
        if response.status_code not in self.ok:
            raise problem_error(response, job_id=self.job_id)
        try:
            return self.read(response)
        except ValidationError as exc:
            raise ApiError(
                response.status_code, None, f"unexpected response: {exc}", body=response.text
            ) from exc


class Page(Protocol[I_co]):
    """A page of a keyset listing (``JobPageOut``, ``InboxPageOut``): its items, and the cursor
    of the next page (``None``: this is the last)."""

    @property
    def items(self) -> Sequence[I_co]: ...

    @property
    def next_cursor(self) -> str | None: ...


# the call that reads one page of a listing, given its cursor (``None``: the first page)
Pages = Callable[[str | None], Call[Page[I_co]]]


def job_id_of(job: JobRef) -> str:
    if isinstance(job, JobOut):
        return job.id
    return job.job_id if isinstance(job, QuestionOut) else str(job)


def job_path(job_id: str, suffix: str = "") -> str:
    return f"/jobs/{quote(job_id, safe='')}{suffix}"


def _body(model: type[M]) -> Callable[[httpx.Response], M]:
    """A ``Call.read`` that parses the response body as ``model``."""

    def read(response: httpx.Response) -> M:
        return model.model_validate_json(response.content)

    return read


def _nothing(response: httpx.Response) -> None:
    """A ``Call.read`` of a response without a body (204)."""


_job = _body(JobOut)
_job_page = _body(JobPageOut)
_question = _body(QuestionOut)
_inbox_page = _body(InboxPageOut)
_schedule = _body(ScheduleOut)


def _on_job(
    method: str,
    job: JobRef,
    suffix: str,
    read: Callable[[httpx.Response], T],
    ok: int = 200,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Call[T]:
    """A call on one job's route (the job id also names it in the errors of its problems)."""
    job_id = job_id_of(job)
    path = job_path(job_id, suffix)
    return Call(method, path, read, frozenset({ok}), job_id, body=body, headers=headers or {})


def _listing(
    path: str, read: Callable[[httpx.Response], T], query: Mapping[str, Any], cursor: str | None
) -> Call[T]:
    """``GET path`` with the filters of ``query`` that are set, at ``cursor`` if given."""
    given = {**query, "cursor": cursor} if cursor is not None else query
    params = {name: str(value) for name, value in given.items() if value is not None}
    return Call("GET", path, read, frozenset({200}), params=params)


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
    return _listing("/jobs", _job_page, query, cursor)


def cancel(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/cancel``: 202 with the job (cancelled, or ``cancel_requested``)."""
    return _on_job("POST", job, "/cancel", _job, 202)


def pin(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/pin``: exempt from retention."""
    return _on_job("POST", job, "/pin", _job)


def unpin(job: JobRef) -> Call[JobOut]:
    """``POST /jobs/{id}/unpin``: subject to retention again."""
    return _on_job("POST", job, "/unpin", _job)


def answer(job: JobRef, value: Any, question_key: str | None, version: int | None) -> Call[JobOut]:
    """``POST /jobs/{id}/input``: the answer to the open question (``question_key``: only if
    it is still that one). ``version`` (else that of the ``QuestionOut`` given as ``job``) is
    sent as ``If-Match``: 412 ``precondition_failed`` if the question changed since."""
    body: dict[str, Any] = {"answer": value}
    if question_key is not None:
        body["question_key"] = question_key
    if version is None and isinstance(job, QuestionOut):
        version = job.version
    headers = None if version is None else {"If-Match": f'"{version}"'}
    return _on_job("POST", job, "/input", _job, body=body, headers=headers)


# --- a job's open question, and the inbox of them ------------------------------------------------


def question(job: JobRef) -> Call[QuestionOut]:
    """``GET /jobs/{id}/input``: the open question and who holds it."""
    return _on_job("GET", job, "/input", _question)


def claim_question(job: JobRef, takeover: bool) -> Call[QuestionOut]:
    """``POST /jobs/{id}/input/claim``: hold (or renew) the question; ``takeover`` takes it from
    whoever holds it."""
    return _on_job("POST", job, "/input/claim", _question, body={"takeover": takeover})


def release_question(job: JobRef) -> Call[QuestionOut]:
    """``POST /jobs/{id}/input/release``: give the question back."""
    return _on_job("POST", job, "/input/release", _question)


def inbox(query: InboxFilters, cursor: str | None = None) -> Call[InboxPageOut]:
    """``GET /inbox``: one page of the open questions the caller may answer, oldest deadline
    first (``query`` may be an ``InboxQuery``)."""
    return _listing("/inbox", _inbox_page, query, cursor)


# --- schedules -----------------------------------------------------------------------------------


def _schedule_path(schedule: ScheduleRef, suffix: str = "") -> str:
    schedule_id = schedule.id if isinstance(schedule, ScheduleOut) else str(schedule)
    return f"/schedules/{quote(schedule_id, safe='')}{suffix}"


def create_schedule(
    name: str, kind: str, payload: Any, options: ScheduleOptions
) -> Call[ScheduleOut]:
    """``POST /schedules``: 201 with the new schedule."""
    body: dict[str, Any] = {"name": name, "kind": kind, "payload": payload}
    body.update((option, value) for option, value in options.items() if value is not None)
    return Call("POST", "/schedules", _schedule, frozenset({201}), body=body)


def _schedules(response: httpx.Response) -> list[ScheduleOut]:
    return SchedulesOut.model_validate_json(response.content).items


def list_schedules() -> Call[list[ScheduleOut]]:
    """``GET /schedules``: every schedule of the tenant, by name (one response, no pages)."""
    return Call("GET", "/schedules", _schedules, frozenset({200}))


def get_schedule(schedule: ScheduleRef) -> Call[ScheduleOut]:
    """``GET /schedules/{id}``."""
    return Call("GET", _schedule_path(schedule), _schedule, frozenset({200}))


def pause_schedule(schedule: ScheduleRef) -> Call[ScheduleOut]:
    """``POST /schedules/{id}/pause``: no jobs until resumed."""
    return Call("POST", _schedule_path(schedule, "/pause"), _schedule, frozenset({200}))


def resume_schedule(schedule: ScheduleRef) -> Call[ScheduleOut]:
    """``POST /schedules/{id}/resume``: jobs again from the next tick."""
    return Call("POST", _schedule_path(schedule, "/resume"), _schedule, frozenset({200}))


def delete_schedule(schedule: ScheduleRef) -> Call[None]:
    """``DELETE /schedules/{id}``: 204; the jobs it submitted stay."""
    return Call("DELETE", _schedule_path(schedule), _nothing, frozenset({204}))
