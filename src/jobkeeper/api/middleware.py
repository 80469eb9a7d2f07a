"""Pure ASGI middleware: a request id on every response (and every unhandled error turned into a
problem that carries it), and a cap on request body size."""

from __future__ import annotations

import json
import logging
from typing import Any

import uuid_utils
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jobkeeper import tracing
from jobkeeper.api.problems import PROBLEM_JSON, STATUS
from jobkeeper.logs import request_id_var

__all__ = ["BodyLimit", "RequestContext", "answer_internal_error", "request_id_of"]

log = logging.getLogger("jobkeeper.api")


async def _send_problem(send: Send, status: int, body: dict[str, Any], request_id: str) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _body(code: str, detail: str, scope: Scope, request_id: str) -> dict[str, Any]:
    return {
        "type": f"urn:jobkeeper:problem:{code}",
        "title": code.replace("_", " ").capitalize(),
        "status": STATUS[code],
        "detail": detail,
        "code": code,
        "instance": scope.get("path", ""),
        "request_id": request_id,
    }


def _header(scope: Scope, name: bytes) -> bytes:
    """The last value of header ``name`` (lower case, as ASGI gives names), ``b""`` if none."""
    found = b""
    for key, value in scope["headers"]:
        if key == name:
            found = value
    return bytes(found)


def request_id_of(incoming: bytes) -> str:
    """A request's id: its ``X-Request-ID`` when it sent a sane one (1-128 printable
    characters), else a new random one."""
    text = incoming.decode("latin-1")
    if 0 < len(text) <= 128 and text.isprintable():
        return text
    # uuid_utils: a random UUID without the system call uuid.uuid4 makes each time
    return uuid_utils.uuid4().hex


async def answer_internal_error(
    scope: Scope, send: Send, request_id: str, *, started: bool = False
) -> None:
    """Log the exception being handled and, unless a response has ``started``, answer a 500
    problem that leaks nothing but the request id."""
    log.exception(
        "unhandled error in %s %s (request %s)", scope["method"], scope["path"], request_id
    )
    if not started:
        detail = "an internal error occurred; quote the request id"
        body = _body("internal_error", detail, scope, request_id)
        await _send_problem(send, 500, body, request_id)


class RequestContext:
    """Gives each request an id (``X-Request-ID``, taken from the request if it has a sane one),
    and answers an unhandled exception with a 500 problem that leaks nothing but that id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = False

        async def tagged(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            with tracing.extracted(scope["headers"]):  # the caller's trace, if it sent one
                await self.app(scope, receive, tagged)
        except Exception:  # answered here; re-raised nowhere: this is the last line of defence
            await answer_internal_error(scope, send, request_id, started=started)
        finally:
            request_id_var.reset(token)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 ``payload_too_large``, by the declared
    length or while reading, so an oversized body is never held in memory."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if (
            not declared
            and scope.get("http_version") in ("1.0", "1.1")
            and not _header(scope, b"transfer-encoding")
        ):
            # HTTP/1 (RFC 9112 6.3): a request with neither header has no body to count (an
            # HTTP/2 one may: its body is framed, so it is counted below)
            await self.app(scope, receive, send)
            return
        request_id = scope.get("state", {}).get("request_id", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send, request_id)
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            # Over the limit: answer 413 ourselves and tell the app the client left, so it stops
            # reading (an exception here would be turned into a 400 by the body parser).
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                refused = True
                await self._refuse(scope, send, request_id)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise  # the app's own failure: RequestContext answers it

    async def _refuse(self, scope: Scope, send: Send, request_id: str) -> None:
        detail = f"the request body is larger than {self.max_bytes} bytes"
        await _send_problem(
            send, 413, _body("payload_too_large", detail, scope, request_id), request_id
        )
