"""RFC 9457 problem details: every error of the HTTP API, mapped from stable codes in one place.

A problem body is ``{"type", "title", "status", "detail", "code", "instance", "request_id"}`` plus
fields of the error (``expired_at``, ``errors``, ...), served as ``application/problem+json``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from jobkeeper.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidAnswer,
    JobExpired,
    JobkeeperError,
    QuestionChanged,
    QuestionClaimed,
    QueueFull,
)

__all__ = ["PROBLEM_JSON", "STATUS", "ApiProblem", "install", "problem"]

log = logging.getLogger("jobkeeper.api")

# code -> HTTP status: the only place this mapping lives
STATUS: dict[str, int] = {
    "validation_error": 422,
    "tenant_required": 422,
    "invalid_job_id": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "job_not_found": 404,
    "job_expired": 404,
    "not_found": 404,
    "method_not_allowed": 405,
    "invalid_transition": 409,
    "job_finished": 409,
    "not_waiting_for_input": 409,
    "question_claimed": 409,
    "precondition_failed": 412,
    "payload_too_large": 413,
    "idempotency_key_reused": 422,
    "invalid_answer": 422,
    "queue_full": 429,
    "internal_error": 500,
    "database_unavailable": 503,
    "schema_missing": 503,
    "schema_outdated": 503,
    "lifespan_failed": 500,
}
# the methods an ``Allow`` header can name: those FastAPI has a route decorator for
_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")
_TITLES = {code: code.replace("_", " ").capitalize() for code in STATUS}
PROBLEM_JSON = "application/problem+json"


class ApiProblem(Exception):
    """An HTTP-level problem that is not a jobkeeper domain error (auth, body size, headers)."""

    def __init__(self, code: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.extra = extra


def problem(
    request: Request,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    status = STATUS.get(code, 500)
    body = {
        "type": f"urn:jobkeeper:problem:{code}",
        "title": _TITLES.get(code, "Error"),
        "status": status,
        "detail": detail,
        "code": code,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobkeeperError)
    headers: dict[str, str] = {}
    extra: dict[str, Any] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        extra["retry_after"] = exc.retry_after
    elif isinstance(exc, DatabaseUnavailable):
        headers["Retry-After"] = "1"
    elif isinstance(exc, InvalidAnswer):
        extra["errors"] = exc.problems
    elif isinstance(exc, IdempotencyConflict):
        extra["job_id"] = str(exc.job_id)
    elif isinstance(exc, QuestionClaimed):
        extra.update(claimed_by=exc.holder, claim_expires_at=_iso(exc.until))
    elif isinstance(exc, QuestionChanged):
        extra["current_version"] = exc.current
    elif isinstance(exc, JobExpired):
        extra["expired_at"] = _iso(exc.expired_at)
    field = getattr(exc, "field", None)
    if field is not None:
        extra["field"] = field
    if exc.code not in STATUS:
        log.error("error code %r has no HTTP status", exc.code)
    return problem(request, exc.code, exc.message, headers=headers, **extra)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _api(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiProblem)
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "unauthorized" else None
    return problem(request, exc.code, exc.detail, headers=headers, **exc.extra)


def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return problem(request, "validation_error", "the request is not valid", errors=errors)


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's body parser: not UTF-8
        return problem(request, "validation_error", "the request body is not UTF-8 JSON")
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    response = problem(request, code, str(exc.detail))
    response.status_code = exc.status_code
    if exc.headers:
        response.headers.update(exc.headers)
    if exc.status_code == 405:
        response.headers["Allow"] = _allowed_methods(request)
    return response


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's ``Allow`` names only the methods
    of the first route that matched the path (``POST`` for ``/jobs``, which ``GET`` serves too)."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    )


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""
    app.add_exception_handler(JobkeeperError, _domain)
    app.add_exception_handler(ApiProblem, _api)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
