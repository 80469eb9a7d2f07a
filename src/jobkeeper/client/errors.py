"""What the client raises: jobkeeper's own errors for the API's problems, mapped in one place.

A problem response (``application/problem+json``) becomes the ``jobkeeper.errors`` class that owns
its ``code`` (``_BUILDERS`` is keyed by those classes' ``code`` attributes), with the fields the
problem and the request tell (``job_id``, ``expired_at``, ``retry_after``, ``problems``...) and the
server's ``detail`` as its message. A note on the error names the request, the status and the
request id. Codes of the HTTP layer alone get ``ApiError``, and no response at all
``ApiConnectionError``:

    JobkeeperError
    ├── InvalidRequest, JobNotFound, JobExpired, ...   the API's problem, as jobkeeper raises it
    ├── ApiError                api_error             a problem no jobkeeper class owns
    │                                                 (unauthorized, payload_too_large,
    │                                                 not_found, internal_error, ...), or an error
    │                                                 response that is not a problem
    └── ApiConnectionError      api_connection_error  no response: connect, read or write failed
                                                      or timed out (a write may have happened)

A problem body carries every field of its error (``job_id``, ``expired_at``, ``limit``,
``current``...; a job's ``status`` as ``job_status``); a field a server older than these bodies
left out is ``UNKNOWN``, ``0`` for ``QueueFull.limit``, and the nil UUID for a ``job_id`` neither
the body nor the path names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import httpx

from jobkeeper.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidAnswer,
    InvalidJobId,
    InvalidRequest,
    InvalidTransition,
    JobExpired,
    JobFinished,
    JobkeeperError,
    JobNotFound,
    LeaseLost,
    LifespanFailed,
    NotWaitingForInput,
    QuestionChanged,
    QuestionClaimed,
    QueueFull,
    ScheduleExists,
    ScheduleNotFound,
    SchemaMissing,
    SchemaOutdated,
    TenantRequired,
)

__all__ = ["UNKNOWN", "ApiConnectionError", "ApiError", "connection_error", "problem_error"]

PROBLEM_JSON = "application/problem+json"
# a field of an error class that the problem body does not carry
UNKNOWN = "unknown"
_NIL = UUID(int=0)
# the parts of a parser error's location that name where a value was, not which one
_LOCATIONS = frozenset({"body", "query", "header", "path", "cookie"})


class ApiError(JobkeeperError):
    """An error response without a jobkeeper class: ``status``, the problem's ``problem_code``
    (``None`` when the body is not a problem), ``detail``, the parsed ``body`` (or its text) and
    the ``request_id``. ``code`` is ``api_error``, as for every error of this class."""

    code = "api_error"

    def __init__(
        self,
        status: int,
        problem_code: str | None,
        detail: str,
        *,
        body: Any = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(f"HTTP {status} {problem_code or 'error'}: {detail}")
        self.status = status
        self.problem_code = problem_code
        self.detail = detail
        self.body = body
        self.request_id = request_id


class ApiConnectionError(JobkeeperError):
    """No response: the server could not be reached, or the connection broke or timed out. A
    write may or may not have happened; retry a submit with the same ``idempotency_key``."""

    code = "api_connection_error"

    def __init__(self, method: str, url: str, reason: str) -> None:
        super().__init__(f"{method} {url}: {reason}")
        self.method = method
        self.url = url


def connection_error(request: httpx.Request, exc: httpx.TransportError) -> ApiConnectionError:
    """The error for a request that got no response (raise it ``from exc``)."""
    reason = str(exc) or type(exc).__name__
    return ApiConnectionError(request.method, str(request.url), reason)


@dataclass(frozen=True, slots=True)
class _Problem:
    """A problem body with what the request adds to it (the job id of its path, its key)."""

    body: Mapping[str, Any]
    response: httpx.Response
    path_job_id: str | None

    @property
    def message(self) -> str:
        """The server's ``detail``; for the parser's ``validation_error`` also its messages."""
        detail = str(self.body.get("detail", ""))
        if "errors" not in self.body or self.body.get("code") != InvalidRequest.code:
            return detail
        return f"{detail}: " + "; ".join(
            f"{_field(e['loc'])}: {e['msg']}" for e in self.body["errors"]
        )

    @property
    def field(self) -> str:
        """The value the manager refused, or the first one the parser refused."""
        if "field" in self.body:
            return str(self.body["field"])
        return _field(self.body["errors"][0]["loc"])

    @property
    def job_id(self) -> UUID:
        named = self.body.get("job_id") or self.path_job_id
        return _NIL if named is None else UUID(str(named))

    @property
    def retry_after(self) -> float:
        if "retry_after" in self.body:
            return float(self.body["retry_after"])
        return float(self.response.headers.get("retry-after", 0))

    @property
    def transition(self) -> tuple[str, str]:
        """An ``InvalidTransition``'s ``current`` and ``requested`` statuses."""
        return self.text("current"), self.text("requested")

    def text(self, name: str) -> str:
        """A text field of the body, ``UNKNOWN`` if it has none."""
        return str(self.body.get(name, UNKNOWN))

    @property
    def expired_at(self) -> datetime:
        return datetime.fromisoformat(str(self.body["expired_at"]))


def _field(loc: list[Any]) -> str:
    return ".".join(str(part) for part in loc if part not in _LOCATIONS) or "request"


# code -> the jobkeeper error for that problem: the one mapping of the client
_BUILDERS: dict[str, Callable[[_Problem], JobkeeperError]] = {
    InvalidRequest.code: lambda p: InvalidRequest(p.field, p.message),
    TenantRequired.code: lambda p: TenantRequired(),
    InvalidJobId.code: lambda p: InvalidJobId(p.body.get("value", p.path_job_id)),
    JobNotFound.code: lambda p: JobNotFound(p.job_id),
    JobExpired.code: lambda p: JobExpired(p.job_id, p.expired_at),
    InvalidTransition.code: lambda p: InvalidTransition(p.job_id, *p.transition),
    JobFinished.code: lambda p: JobFinished(p.job_id, *p.transition),
    IdempotencyConflict.code: lambda p: IdempotencyConflict(
        p.body.get("idempotency_key", p.response.request.headers.get("idempotency-key", UNKNOWN)),
        p.job_id,
    ),
    QueueFull.code: lambda p: QueueFull(
        p.text("tenant"), int(p.body.get("limit", 0)), p.retry_after, p.body.get("kind")
    ),
    InvalidAnswer.code: lambda p: InvalidAnswer(p.job_id, [str(e) for e in p.body["errors"]]),
    NotWaitingForInput.code: lambda p: NotWaitingForInput(
        p.job_id, p.text("job_status"), p.body.get("question_key")
    ),
    QuestionClaimed.code: lambda p: QuestionClaimed(
        p.job_id, p.text("claimed_by"), datetime.fromisoformat(p.text("claim_expires_at"))
    ),
    QuestionChanged.code: lambda p: QuestionChanged(
        p.job_id, int(p.body["expected_version"]), p.body.get("current_version")
    ),
    SchemaMissing.code: lambda p: SchemaMissing(p.text("schema"), p.message),
    SchemaOutdated.code: lambda p: SchemaOutdated(p.text("schema")),
    LifespanFailed.code: lambda p: LifespanFailed(RuntimeError(p.message)),
    LeaseLost.code: lambda p: LeaseLost(p.job_id),
    DatabaseUnavailable.code: lambda p: DatabaseUnavailable(p.message),
    ScheduleNotFound.code: lambda p: ScheduleNotFound(UUID(str(p.body["schedule_id"]))),
    ScheduleExists.code: lambda p: ScheduleExists(str(p.body["name"])),
}


def problem_error(response: httpx.Response, *, job_id: str | None = None) -> JobkeeperError:
    """The error an error response stands for (its body already read). ``job_id`` is the job
    the request's path named, for the problems whose body does not repeat it."""
    request = response.request
    body = _problem_body(response)
    if body is None:
        text = response.text[:500] or response.reason_phrase
        return ApiError(response.status_code, None, text, body=response.text)
    code = str(body["code"])
    request_id = body.get("request_id") or response.headers.get("x-request-id")
    problem = _Problem(body, response, job_id)
    build = _BUILDERS.get(code)
    try:
        error = None if build is None else _with_message(build(problem), problem.message)
    except (KeyError, IndexError, TypeError, ValueError):
        error = None  # a body without the fields its code promises: reported as it is
    if error is None:
        return ApiError(
            response.status_code, code, problem.message, body=body, request_id=request_id
        )
    if isinstance(body.get("index"), int):  # about an item of a batch
        error.index = body["index"]
    error.add_note(
        f"{request.method} {request.url}: HTTP {response.status_code} {code}"
        f" (request id {request_id})"
    )
    return error


def _problem_body(response: httpx.Response) -> dict[str, Any] | None:
    if not response.headers.get("content-type", "").startswith(PROBLEM_JSON):
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("code"), str) else None


def _with_message(error: JobkeeperError, message: str) -> JobkeeperError:
    error.message = message
    error.args = (message,)
    return error
