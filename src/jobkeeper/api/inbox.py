"""The work queue over HTTP: ``GET /inbox``; and the models of a job's open question, whose
routes (``GET /jobs/{id}/input``, ``POST .../input/claim``, ``POST .../input/release``) belong to
the jobs router (``routes.py``).

``create_inbox_router(caller=...)`` takes the dependency that says who is asking (a ``Caller``:
tenant, principal, roles), so an application decides identity its own way (a cookie, a header)
and ``jobkeeper serve`` uses its API keys. The route is thin: parse, call the manager, serialise.
A question's ``ETag`` is its version; ``POST /jobs/{id}/input`` takes it as ``If-Match``.
"""

# no ``from __future__ import annotations``: the route's annotations name the ``caller`` given to
# ``create_inbox_router``, which FastAPI could not resolve from a string
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, Strict, WithJsonSchema

from jobkeeper.api.deps import CallerDependency, ServicesDep, api_key_caller, caller_router
from jobkeeper.api.problems import ApiProblem
from jobkeeper.api.schemas import iso
from jobkeeper.domain.questions import Question, QuestionPage
from jobkeeper.domain.validate import KIND_PATTERN
from jobkeeper.domain.values import Caller

__all__ = [
    "ASSIGNEE_PATTERN",
    "IF_MATCH_PATTERN",
    "INBOX_CURSOR_PATTERN",
    "ClaimIn",
    "IfMatch",
    "InboxPageOut",
    "QuestionOut",
    "create_inbox_router",
    "if_match_version",
    "inbox_router",
    "question_json",
    "question_response",
]

# what JobManager.inbox returns as next_cursor: 24 bytes in base64url
INBOX_CURSOR_PATTERN = "^[A-Za-z0-9_-]{32}$"
# a question version (1 to 18 digits), quoted as an ETag or bare, or * (any)
IF_MATCH_PATTERN = '^(\\*|(W/)?"[1-9][0-9]{0,17}"|[1-9][0-9]{0,17})$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
# "user:<name>" or "role:<name>" (domain.questions checks the same)
ASSIGNEE_PATTERN = "^(user|role):[^\\u0000-\\u001f\\u007f]{1,200}$"


class QuestionOut(BaseModel):
    """A waiting job's open question. ``version`` is its ``ETag`` (``If-Match`` of an answer);
    ``claimed_by`` holds it until ``claim_expires_at`` (both null when nobody does)."""

    job_id: str
    kind: str
    key: str
    text: str | None
    schema_: Any = Field(alias="schema", description="The answer's JSON Schema, if any.")
    choices: list[Any] | None
    assignee: str | None = Field(description="user:<name>, role:<name>, or null: anyone.")
    deadline: str | None
    version: int
    claimed_by: str | None
    claim_expires_at: str | None
    asked_at: str | None


class InboxPageOut(BaseModel):
    items: list[QuestionOut]
    next_cursor: str | None


class ClaimIn(BaseModel):
    """``POST /jobs/{id}/input/claim``: ``takeover`` to take a question someone else holds."""

    model_config = ConfigDict(extra="forbid")

    takeover: Annotated[bool, Strict()] = False


def question_json(question: Question) -> dict[str, Any]:
    """The ``QuestionOut`` shape as a plain dict."""
    return {
        "job_id": str(question.job_id),
        "kind": question.kind,
        "key": question.key,
        "text": question.text,
        "schema": question.schema,
        "choices": None if question.choices is None else list(question.choices),
        "assignee": question.assignee,
        "deadline": iso(question.deadline),
        "version": question.version,
        "claimed_by": question.claimed_by,
        "claim_expires_at": iso(question.claim_expires_at),
        "asked_at": iso(question.asked_at),
    }


def question_response(question: Question) -> JSONResponse:
    """The question, its version as its ``ETag``."""
    return JSONResponse(question_json(question), headers={"ETag": f'"{question.version}"'})


def _page_json(page: QuestionPage) -> dict[str, Any]:
    return {"items": [question_json(q) for q in page.items], "next_cursor": page.next_cursor}


def if_match_version(if_match: str | None) -> int | None:
    """The question version an ``If-Match`` names (``IF_MATCH_PATTERN``); ``*`` or none: any
    version. Anything else is 400 ``invalid_request``."""
    if if_match is None or if_match.strip() == "*":
        return None
    if not _IF_MATCH.fullmatch(if_match.strip()):
        raise ApiProblem("invalid_request", 'If-Match must be a question version, e.g. "12"')
    return int(if_match.strip().removeprefix("W/").strip('"'))


# the If-Match header as the schema describes it (FastAPI would add null for the optional value)
IfMatch = Annotated[
    str | None,
    Header(description='The question\'s version (its ETag, e.g. "12"): 412 if it changed.'),
    WithJsonSchema({"type": "string", "pattern": IF_MATCH_PATTERN}),
]


def create_inbox_router(*, caller: CallerDependency = api_key_caller) -> APIRouter:
    """``GET /inbox``, with ``caller`` (a FastAPI dependency) saying who asks."""
    CallerDep = Annotated[Caller, Depends(caller)]
    router = caller_router("", "inbox", caller)

    @router.get("/inbox", operation_id="listInbox", response_model=InboxPageOut)
    async def inbox(
        svc: ServicesDep,
        who: CallerDep,
        kind: Annotated[
            str | None, Query(max_length=128, json_schema_extra={"pattern": KIND_PATTERN})
        ] = None,
        assignee: Annotated[
            str | None, Query(max_length=205, json_schema_extra={"pattern": ASSIGNEE_PATTERN})
        ] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(pattern=INBOX_CURSOR_PATTERN)] = None,
    ) -> JSONResponse:
        """The open questions of the caller's tenant that the caller may answer (for anyone,
        for the caller, or for one of its roles), oldest deadline first and those without one
        last; pass ``next_cursor`` as ``cursor`` for the next page."""
        page = await svc.jobs.inbox(
            who.tenant,
            principal=who.principal,
            roles=who.roles,
            kind=kind,
            assignee=assignee,
            limit=limit,
            cursor=cursor,
        )
        return JSONResponse(_page_json(page))

    return router


# the inbox on jobkeeper's API keys
inbox_router = create_inbox_router()
