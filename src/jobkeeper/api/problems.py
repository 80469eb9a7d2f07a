"""RFC 9457 problem details: every error of the HTTP API, mapped from stable codes in one place.

A problem body is ``{"type", "title", "status", "detail", "code", "instance", "request_id"}`` plus
fields of the error (``job_id``, ``expired_at``, ``errors``, ...), served as
``application/problem+json``.

Two ways in. ``ProblemRoute``, the route class of jobkeeper's routers, answers the errors of
jobkeeper's own routes (domain errors, ``ApiProblem``, request validation) wherever they are
mounted, and touches nothing else: a host application's own errors keep its own responses.
``install(app)`` makes every error of an app a problem (unknown routes, wrong methods, the app's
own ``HTTPException``): ``create_app`` does it for jobkeeper's own service; a host app need not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from jobkeeper.clock import utc_text
from jobkeeper.errors import (
    DatabaseUnavailable,
    JobkeeperError,
    QueueFull,
)

__all__ = [
    "PROBLEM_JSON",
    "PROBLEM_RESPONSE",
    "STATUS",
    "ApiProblem",
    "ProblemRoute",
    "answering_problems",
    "install",
    "problem",
    "problem_of",
]

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
    "schedule_not_found": 404,
    "schedule_exists": 409,
    "method_not_allowed": 405,
    "invalid_transition": 409,
    "job_finished": 409,
    "not_waiting_for_input": 409,
    "lease_lost": 409,
    "question_claimed": 409,
    "precondition_failed": 412,
    "payload_too_large": 413,
    "batch_too_large": 413,
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
# how OpenAPI describes a problem response
PROBLEM_RESPONSE: dict[str, Any] = {
    "content": {PROBLEM_JSON: {}},
    "description": "A problem (RFC 9457).",
}


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
    status: int | None = None,
    **extra: Any,
) -> JSONResponse:
    """The problem response of ``code``, with the status ``STATUS`` maps it to (``status``: an
    ``HTTPException``'s own)."""
    status = status or STATUS.get(code, 500)
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


# an error's attribute -> its name in a problem body, where the two differ (a job's ``status``
# must not replace the problem's)
_RENAMED = {"problems": "errors", "status": "job_status"}


def _error_fields(exc: JobkeeperError) -> dict[str, Any]:
    """Every field of the error (``job_id``, ``expired_at``, ``limit``...), as JSON, so a client
    can rebuild the error it stands for."""
    fields: dict[str, Any] = {}
    for name, value in vars(exc).items():
        if name == "message" or name.startswith("_"):
            continue
        if isinstance(value, datetime):
            value = utc_text(value)
        elif not isinstance(value, str | int | float | list | None):  # a UUID, say
            value = str(value)
        fields[_RENAMED.get(name, name)] = value
    return fields


def _domain(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, JobkeeperError)
    headers: dict[str, str] = {}
    if isinstance(exc, QueueFull):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    elif isinstance(exc, DatabaseUnavailable):
        headers["Retry-After"] = "1"
    if exc.code not in STATUS:
        log.error("error code %r has no HTTP status", exc.code)
    return problem(request, exc.code, exc.message, headers=headers, **_error_fields(exc))


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


# an HTTPException's status -> its code; any other keeps its status, with code invalid_request
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def _not_utf8(request: Request) -> JSONResponse:
    return problem(request, "validation_error", "the request body is not UTF-8 JSON")


def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's body parser: not UTF-8
        return _not_utf8(request)
    code = _HTTP_CODES.get(exc.status_code, "invalid_request")
    headers = dict(exc.headers or {})
    response = problem(request, code, str(exc.detail), headers=headers, status=exc.status_code)
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


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def problem_of(request: Request, exc: Exception) -> Response | None:
    """The problem a jobkeeper route answers for ``exc`` (a domain error, ``ApiProblem``, a
    request that fails validation, a body that is not UTF-8), ``None`` for any other."""
    if isinstance(exc, JobkeeperError):
        return _domain(request, exc)
    if isinstance(exc, ApiProblem):
        return _api(request, exc)
    if isinstance(exc, RequestValidationError):
        return _validation(request, exc)
    # FastAPI's body parser, before any dependency ran; any other HTTPException (the caller's
    # own 401, say) is the application's to answer
    if isinstance(exc, StarletteHTTPException) and isinstance(exc.__cause__, UnicodeDecodeError):
        return _not_utf8(request)
    return None


def answering_problems(handle: Handler) -> Handler:
    """``handle`` with its own errors (``problem_of``) answered as problems; every other
    exception goes on untouched."""

    async def answered(request: Request) -> Response:
        try:
            return await handle(request)
        except Exception as exc:
            answer = problem_of(request, exc)
            if answer is None:
                raise
            return answer

    return answered


class ProblemRoute(APIRoute):
    """The route class of jobkeeper's routers: the route's own errors (domain errors,
    ``ApiProblem``, a request that fails validation) are answered as problems by the route
    itself, with or without ``install``; every other exception (the host's ``HTTPException``
    from its own ``caller`` dependency, say) goes on to the application's handlers untouched."""

    def get_route_handler(self) -> Handler:
        return answering_problems(super().get_route_handler())


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem response."""
    app.add_exception_handler(JobkeeperError, _domain)
    app.add_exception_handler(ApiProblem, _api)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
