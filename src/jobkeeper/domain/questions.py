"""Questions a job asks a person: building the stored prompt, checking answers against it, who
a question is for (its assignee), what its deadline does (``on_timeout``, ``Escalate``), and the
question as a work queue shows it (``Question``).

The stored prompt is the open question as it stands: ``assignee`` is whom it is for now, and
``escalate`` the escalation steps still to come (``[{"to", "after"}]``, the first one next);
``on_timeout`` is what the last deadline does: ``fail``, ``cancel`` or ``default``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias
from uuid import UUID

import jsonschema

from jobkeeper.domain.validate import encode_json, storable
from jobkeeper.domain.values import Job
from jobkeeper.errors import InvalidRequest

__all__ = [
    "ON_TIMEOUT",
    "Escalate",
    "OnTimeout",
    "Question",
    "QuestionPage",
    "addressees",
    "answer_problems",
    "build_prompt",
    "question_of",
    "same_json",
    "validate_assignee",
]

ON_TIMEOUT = ("fail", "cancel", "default")
# "user:<name>" or "role:<name>": a name of 1 to 200 characters without control characters
_ASSIGNEE = re.compile(r"(user|role):[^\x00-\x1f\x7f]{1,200}")


@dataclass(frozen=True, slots=True)
class Escalate:
    """``on_timeout=Escalate(to="role:manager", after=timedelta(hours=4))``: at the deadline the
    question goes to ``to`` (any claim on it ends) with a new deadline ``after`` from then; at
    that deadline ``then`` applies: ``"fail"`` (default), ``"cancel"``, ``"default"`` or another
    ``Escalate``."""

    to: str
    after: timedelta | float
    then: OnTimeout = "fail"


OnTimeout: TypeAlias = Literal["fail", "cancel", "default"] | Escalate


@dataclass(frozen=True, slots=True)
class Question:
    """A waiting job's open question as a work queue shows it.

    ``version`` changes whenever the question does (asked, escalated): an answer may name it
    (``expected_version``, HTTP ``If-Match``) to be refused if it changed since it was read.
    ``claimed_by`` holds it until ``claim_expires_at`` (both ``None`` when nobody does).
    """

    job_id: UUID
    tenant: str
    kind: str
    key: str
    text: str | None
    schema: Any
    choices: Any
    assignee: str | None
    deadline: datetime | None
    version: int
    claimed_by: str | None
    claim_expires_at: datetime | None
    asked_at: datetime | None


@dataclass(frozen=True, slots=True)
class QuestionPage:
    """One page of an inbox, oldest deadline first; pass ``next_cursor`` back for the next."""

    items: tuple[Question, ...]
    next_cursor: str | None


def question_of(job: Job, *, now: datetime) -> Question:
    """The open question of a waiting job (its claim shown only while it lasts at ``now``)."""
    prompt = job.prompt
    held = job.claim_expires_at is not None and job.claim_expires_at > now
    asked_at = prompt.get("asked_at")
    return Question(
        job_id=job.id,
        tenant=job.tenant,
        kind=job.kind,
        key=prompt["key"],
        text=prompt.get("text"),
        schema=prompt.get("schema"),
        choices=prompt.get("choices"),
        assignee=prompt.get("assignee"),
        deadline=job.input_deadline,
        version=job.question_version or 0,
        claimed_by=job.claimed_by if held else None,
        claim_expires_at=job.claim_expires_at if held else None,
        asked_at=None if asked_at is None else datetime.fromisoformat(asked_at),
    )


def validate_assignee(field: str, value: object) -> str | None:
    """``None`` (anyone in the tenant), ``"user:<name>"`` or ``"role:<name>"``."""
    if value is None:
        return None
    if not isinstance(value, str) or not _ASSIGNEE.fullmatch(value):
        raise InvalidRequest(field, "None, 'user:<name>' or 'role:<name>' is required")
    return value


def addressees(principal: str, roles: Collection[str]) -> list[str]:
    """The assignees a principal with ``roles`` answers for: itself (a bare ``alice`` is
    ``user:alice``) and ``role:<r>`` for each role."""
    names = [principal] if ":" in principal else [principal, f"user:{principal}"]
    return names + [f"role:{role}" for role in sorted(roles)]


def _seconds(field: str, value: object) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise InvalidRequest(field, "a positive number of seconds (or a timedelta) is required")
    return float(seconds)


def _plan(on_timeout: object) -> tuple[object, list[dict[str, Any]]]:
    """``on_timeout`` as the final action and the escalation steps before it."""
    steps: list[dict[str, Any]] = []
    while isinstance(on_timeout, Escalate):
        if len(steps) >= 10:
            raise InvalidRequest("on_timeout", "at most 10 escalations")
        to = validate_assignee("on_timeout.to", on_timeout.to)
        steps.append({"to": to, "after": _seconds("on_timeout.after", on_timeout.after)})
        on_timeout = on_timeout.then
    return on_timeout, steps


def build_prompt(
    *,
    key: str,
    text: object,
    schema: object,
    choices: object,
    timeout: object,
    on_timeout: object,
    default: Any,
    assignee: object = None,
) -> dict[str, Any]:
    """Validate a question's parts and return the prompt stored with a waiting job."""
    if not isinstance(text, str) or not text.strip() or len(text) > 10_000:
        raise InvalidRequest("prompt", "a question of 1 to 10,000 characters is required")
    storable("prompt", text)
    if schema is not None:
        if not isinstance(schema, dict):
            raise InvalidRequest("schema", "a JSON Schema object is required")
        plain: dict[str, Any] = _thaw(schema)  # from a frozen payload: tuples are arrays here
        schema = plain
        try:
            jsonschema.Draft202012Validator.check_schema(plain)
        except jsonschema.SchemaError as exc:
            raise InvalidRequest("schema", f"not a valid JSON Schema: {exc.message}") from None
    if choices is not None and (not isinstance(choices, list | tuple) or not choices):
        raise InvalidRequest("choices", "a non-empty list of allowed answers is required")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise InvalidRequest("timeout", "a positive number of seconds is required")
    on_timeout, escalate = _plan(on_timeout)
    if escalate and timeout is None:
        raise InvalidRequest("timeout", "an escalation needs a first deadline (timeout)")
    if on_timeout not in ON_TIMEOUT:
        raise InvalidRequest("on_timeout", f"one of {list(ON_TIMEOUT)}")
    prompt = {
        "key": key,
        "text": text,
        "schema": schema,
        "choices": None if choices is None else list(choices),
        "timeout": timeout,
        "on_timeout": on_timeout,
        "default": default,
        "assignee": validate_assignee("assignee", assignee),
        "escalate": escalate,
    }
    if on_timeout == "default":
        problems = answer_problems(prompt, default)
        if problems:
            raise InvalidRequest("default", "; ".join(problems))
    encode_json("prompt", prompt)
    return prompt


def answer_problems(prompt: Mapping[str, Any], answer: Any) -> list[str]:
    """Why ``answer`` does not fit the question (empty: it fits)."""
    choices = prompt.get("choices")
    if choices is not None and not any(same_json(answer, choice) for choice in choices):
        return [f"{answer!r} is not one of the choices {_thaw(choices)}"]
    schema = prompt.get("schema")
    if schema is None:
        return []
    validator = jsonschema.Draft202012Validator(_thaw(schema))
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(answer)'}: {error.message}"
        for error in validator.iter_errors(_thaw(answer))
    ]


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: arrays whether list or tuple, numbers by value (Postgres may rewrite
    ``1e16`` as ``10000000000000000``), but ``true`` is never ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _thaw(value: Any) -> Any:
    """Plain dicts and lists again (jsonschema type checks want list, not tuple)."""
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value
