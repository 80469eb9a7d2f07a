"""The read clients poll, ``GET /jobs/{job_id}`` on jobkeeper's API keys, answered in front of
``create_app``'s whole middleware stack.

The profile in docs/benchmarks.md found most of a cached read's server time in the layers every
request crosses: FastAPI's and Starlette's middleware (each a coroutine and a ``send`` wrapper),
jobkeeper's request-id and body-limit middleware, routing and dependency resolution.
``PolledReads`` takes the polled read past all of them and does their work for it in one pass:
the request id (``X-Request-ID`` on the response and in the log context, as ``RequestContext``
gives it), the body limit (it takes only requests without a body), the key check, the read,
``ETag``/304 and the route's problems. Its answers are the route's, byte for byte but for the
request id; everything else, and every request it cannot answer the same way, goes on to the
stack: another method or path, a ``root_path``, ``app.dependency_overrides``, tracing on (the
caller's trace is attached by ``RequestContext``), a request that may carry a body.
"""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from jobkeeper import tracing
from jobkeeper.api.deps import Services, bearer_token, caller_of_token
from jobkeeper.api.middleware import answer_internal_error, request_id_of
from jobkeeper.api.problems import problem_of
from jobkeeper.api.routes import consistency_of, not_modified
from jobkeeper.logs import request_id_var

__all__ = ["PolledReads"]

_PREFIX = "/jobs/"
_HTTP1 = ("1.0", "1.1")


class PolledReads:
    """ASGI layer in front of ``app`` (the middleware stack of ``owner``, a ``create_app``
    application): answers the polled read itself, hands everything else to ``app``."""

    def __init__(self, app: ASGIApp, owner: FastAPI) -> None:
        self.app = app
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "GET"
            or scope.get("root_path")
            or scope.get("http_version") not in _HTTP1
            or self.owner.dependency_overrides
        ):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        job_id = path[len(_PREFIX) :]
        state: dict[str, object] | None = scope.get("state")
        svc = state.get("jobkeeper") if state else None
        if (
            not path.startswith(_PREFIX)
            or not job_id
            or "/" in job_id
            or state is None
            or not isinstance(svc, Services)
            or tracing.enabled()
        ):
            await self.app(scope, receive, send)
            return
        # one pass over the headers: the first of each, as Starlette's ``Headers.get`` reads
        # them, and the last X-Request-ID, as ``RequestContext`` does
        authorization = if_none_match = cache_control = None
        incoming_id = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value if authorization is None else authorization
            elif name == b"if-none-match":
                if_none_match = value if if_none_match is None else if_none_match
            elif name == b"cache-control":
                cache_control = value if cache_control is None else cache_control
            elif name == b"x-request-id":
                incoming_id = value
            elif name in (b"content-length", b"transfer-encoding"):
                # a body: ``BodyLimit`` decides on it (RFC 9112 6.3: without either, none)
                await self.app(scope, receive, send)
                return
        request_id = request_id_of(incoming_id)
        state["request_id"] = request_id
        token = request_id_var.set(request_id)  # until the response is sent: the access log
        try:
            try:
                answer = await self._answer(
                    scope,
                    receive,
                    svc,
                    job_id,
                    None if authorization is None else authorization.decode("latin-1"),
                    None if if_none_match is None else if_none_match.decode("latin-1"),
                    None if cache_control is None else cache_control.decode("latin-1"),
                )
            except Exception:  # as RequestContext: the last line of defence, nothing re-raised
                await answer_internal_error(scope, send, request_id)
                return
            tag = (b"x-request-id", request_id.encode())
            if isinstance(answer, Response):
                answer.raw_headers.append(tag)
                await answer(scope, receive, send)
                return
            status, headers, body = answer
            start = {"type": "http.response.start", "status": status, "headers": [*headers, tag]}
            await send(start)
            await send({"type": "http.response.body", "body": body})
        finally:
            request_id_var.reset(token)

    @staticmethod
    async def _answer(
        scope: Scope,
        receive: Receive,
        svc: Services,
        job_id: str,
        authorization: str | None,
        if_none_match: str | None,
        cache_control: str | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes] | Response:
        """What ``_KeyedReadRoute`` answers: a problem as a ``Response``, else the status, the
        headers and the body."""
        try:
            who = await caller_of_token(svc, bearer_token(authorization))
            consistency = consistency_of(cache_control)
            job = await svc.jobs.get(job_id, tenant=who.tenant, consistency=consistency)
        except Exception as exc:
            problem = problem_of(Request(scope, receive), exc)
            if problem is None:
                raise
            return problem
        encoded = svc.encoded_job(job)
        if not_modified(encoded.etag, if_none_match):
            return 304, encoded.headers[:1], b""  # the ETag alone, as a 304 of Starlette's
        return 200, encoded.headers, encoded.body
