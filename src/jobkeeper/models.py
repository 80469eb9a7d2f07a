"""The job domain: immutable values, the status machine and input validation. No I/O here.

A ``Job`` is a frozen snapshot of one committed row. Its JSON fields (payload, result, error) are
deep-frozen (``FrozenDict`` and tuples), so a job handed out by the cache cannot be mutated by one
caller under another's feet, yet it still serialises with ``json.dumps`` as plain JSON.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn
from uuid import UUID

import jsonschema

from jobkeeper.errors import InvalidJobId, InvalidRequest, TenantRequired

__all__ = [
    "ON_TIMEOUT",
    "TERMINAL",
    "TERMINAL_EVENTS",
    "TRANSITIONS",
    "FrozenDict",
    "Job",
    "JobEvent",
    "JobPage",
    "JobStatus",
    "Lease",
    "NewJob",
    "Progress",
    "WorkerInfo",
    "answer_problems",
    "build_prompt",
    "can_transition",
    "freeze_json",
    "optional_text",
    "parse_job_id",
    "same_json",
    "sources_of",
    "validate_kind",
    "validate_new_job",
    "validate_progress",
    "validate_tenant",
]


class JobStatus(StrEnum):
    """Where a job is in its life. ``succeeded``, ``failed`` and ``cancelled`` are terminal."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING_INPUT = "waiting_input"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobStatus] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)

# The one table of allowed transitions. The repository derives every conditional
# ``UPDATE ... WHERE status IN (...)`` from it, so Python and SQL cannot disagree.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    # claimed by a worker; cancelled before it ran
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED}),
    # finished; re-queued (retry, lease recovery, graceful release); paused for a person
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.SUCCEEDED,
            JobStatus.FAILED,
            JobStatus.CANCELLED,
            JobStatus.QUEUED,
            JobStatus.WAITING_INPUT,
        }
    ),
    # answered (back to the queue); cancelled; input deadline passed
    JobStatus.WAITING_INPUT: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    """Whether a job in ``current`` may move to ``target``."""
    return target in TRANSITIONS[current]


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Every status from which ``target`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


class FrozenDict(dict[str, Any]):
    """A ``dict`` that refuses mutation; ``json.dumps`` still sees a plain JSON object."""

    __slots__ = ()

    def _readonly(self, *args: object, **kwargs: object) -> NoReturn:
        raise TypeError("job snapshots are immutable; copy with dict(...) to change one")

    __setitem__ = _readonly
    __delitem__ = _readonly
    __ior__ = _readonly
    clear = _readonly
    pop = _readonly
    popitem = _readonly
    setdefault = _readonly
    update = _readonly

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenDict, (dict(self),))


def freeze_json(value: Any) -> Any:
    """Deep-freeze a JSON value: objects become ``FrozenDict``, arrays become tuples."""
    if isinstance(value, dict):
        return FrozenDict({k: freeze_json(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_json(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a running job got: a fraction in [0, 1] and a short message, both optional."""

    fraction: float | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Job:
    """One committed version of a job. Newer versions have a larger ``version``."""

    id: UUID
    tenant: str
    kind: str
    status: JobStatus
    payload: Any
    result: Any
    error: Any
    progress: Progress
    priority: int
    attempts: int
    max_attempts: int
    run_after: datetime
    idempotency_key: str | None
    concurrency_key: str | None
    cancel_requested: bool
    pinned: bool
    version: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    prompt: Any = None  # the open question while waiting_input, else None
    answers: Any = field(default_factory=lambda: FrozenDict())  # key -> answer, who, when
    checkpoints: Any = field(default_factory=lambda: FrozenDict())  # key -> stored result

    @property
    def terminal(self) -> bool:
        """Whether the job reached succeeded, failed or cancelled."""
        return self.status in TERMINAL


@dataclass(frozen=True, slots=True)
class Lease:
    """A claimed job and the token that fences every write of the worker holding it."""

    job: Job
    token: UUID


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker process, as recorded in the ``workers`` table."""

    id: UUID
    host: str
    pid: int
    kinds: tuple[str, ...] | None
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One entry of a job's history. ``seq`` equals the job's ``version`` after the change."""

    seq: int
    type: str
    data: Any
    at: datetime


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of a listing, newest first; pass ``next_cursor`` back for the next page."""

    items: tuple[Job, ...]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to insert. ``fingerprint`` identifies the request (only
    one with an idempotency key needs it: it tells a replay from a reuse of the key)."""

    tenant: str
    kind: str
    payload_json: str
    priority: int
    max_attempts: int
    run_after: datetime | None
    idempotency_key: str | None
    concurrency_key: str | None
    pinned: bool
    fingerprint: str | None


MAX_PRIORITY = 32_767
MAX_ATTEMPTS = 1_000
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}")
_KEY_MAX = 255
_TENANT_MAX = 128
# a \u0000 escape that is not itself an escaped backslash followed by "u0000"
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def validate_tenant(tenant: object) -> str:
    """Return the tenant if usable, else raise ``TenantRequired`` or ``InvalidRequest``."""
    if not isinstance(tenant, str) or not tenant.strip():
        raise TenantRequired()
    if len(tenant) > _TENANT_MAX or not tenant.isprintable():
        raise InvalidRequest("tenant", f"at most {_TENANT_MAX} printable characters")
    return tenant


def parse_job_id(job_id: object) -> UUID:
    """Accept a ``UUID`` or its string form; anything else is ``InvalidJobId``."""
    if isinstance(job_id, UUID):
        return job_id
    if isinstance(job_id, str):
        try:
            return UUID(job_id)
        except ValueError:
            pass
    raise InvalidJobId(job_id)


def _int_in(field: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(field, f"an integer from {low} to {high} is required")
    return value


def _storable(field: str, text: str) -> str:
    """Postgres text cannot hold NUL, and UTF-8 cannot hold a lone surrogate."""
    if "\x00" in text:
        raise InvalidRequest(field, "NUL characters cannot be stored")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(field, "unpaired surrogate characters cannot be stored") from None
    return text


def optional_text(field: str, value: object) -> str | None:
    """``None``, or a storable string of 1 to 255 characters (keys, names)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > _KEY_MAX:
        raise InvalidRequest(field, f"a string of 1 to {_KEY_MAX} characters is required")
    return _storable(field, value)


def validate_kind(kind: object) -> str:
    """A job kind: 1 to 128 letters, digits and ``_ . : / -``, starting alphanumeric."""
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise InvalidRequest(
            "kind", "1 to 128 characters: letters, digits and _ . : / - (starting alphanumeric)"
        )
    return kind


def aware_utc(field: str, value: object) -> datetime:
    """Require a timezone-aware datetime and return it in UTC; naive ones are ambiguous."""
    if not isinstance(value, datetime):
        raise InvalidRequest(field, "a datetime is required")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(field, "naive datetime; pass a timezone-aware one (UTC)")
    return value.astimezone(UTC)


def encode_json(field: str, value: Any) -> str:
    """Serialise a JSON value (compact, sorted keys); ``InvalidRequest`` naming the field if not."""
    if value is None:  # what most handlers return
        return "null"
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
        )
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(field, f"not JSON-serialisable: {exc}") from None
    if _NUL_ESCAPE.search(text):
        raise InvalidRequest(field, "JSON strings may not contain NUL characters (Postgres jsonb)")
    return _storable(field, text)


def validate_progress(fraction: object, message: object) -> Progress:
    """A progress report: ``fraction`` in [0, 1] or ``None``; ``message`` up to 1,000 characters."""
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise InvalidRequest("fraction", "a number from 0 to 1 is required")
        if not 0.0 <= fraction <= 1.0:  # also refuses NaN
            raise InvalidRequest("fraction", "a number from 0 to 1 is required")
        fraction = float(fraction)
    if message is not None:
        if not isinstance(message, str) or len(message) > 1_000:
            raise InvalidRequest("message", "a string of at most 1,000 characters is required")
        _storable("message", message)
    return Progress(fraction, message)


def validate_new_job(
    *,
    tenant: object,
    kind: object,
    payload: Any,
    priority: object,
    max_attempts: object,
    run_after: object,
    idempotency_key: object,
    concurrency_key: object,
    pinned: object,
) -> NewJob:
    """Check every field of a submission; raise a typed error on the first bad one."""
    tenant = validate_tenant(tenant)
    kind = validate_kind(kind)
    payload_json = encode_json("payload", payload)
    priority = _int_in("priority", priority, 0, MAX_PRIORITY)
    max_attempts = _int_in("max_attempts", max_attempts, 1, MAX_ATTEMPTS)
    when = None if run_after is None else aware_utc("run_after", run_after)
    if not isinstance(pinned, bool):
        raise InvalidRequest("pinned", "a boolean is required")
    idempotency_key = optional_text("idempotency_key", idempotency_key)
    concurrency_key = optional_text("concurrency_key", concurrency_key)
    fingerprint = (
        None
        if idempotency_key is None
        else _fingerprint(kind, payload_json, priority, max_attempts, when, concurrency_key, pinned)
    )
    return NewJob(
        tenant=tenant,
        kind=kind,
        payload_json=payload_json,
        priority=priority,
        max_attempts=max_attempts,
        run_after=when,
        idempotency_key=idempotency_key,
        concurrency_key=concurrency_key,
        pinned=pinned,
        fingerprint=fingerprint,
    )


def _fingerprint(
    kind: str,
    payload_json: str,
    priority: int,
    max_attempts: int,
    when: datetime | None,
    concurrency_key: str | None,
    pinned: bool,
) -> str:
    """SHA-256 of the request's canonical JSON."""
    request = {
        "kind": kind,
        "payload": payload_json,
        "priority": priority,
        "max_attempts": max_attempts,
        "run_after": None if when is None else when.isoformat(),
        "concurrency_key": concurrency_key,
        "pinned": pinned,
    }
    return hashlib.sha256(
        json.dumps(request, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


ON_TIMEOUT = ("fail", "cancel", "default")
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled", "expired"})


def build_prompt(
    *,
    key: str,
    text: object,
    schema: object,
    choices: object,
    timeout: object,
    on_timeout: object,
    default: Any,
) -> dict[str, Any]:
    """Validate a question's parts and return the prompt stored with a waiting job."""
    if not isinstance(text, str) or not text.strip() or len(text) > 10_000:
        raise InvalidRequest("prompt", "a question of 1 to 10,000 characters is required")
    _storable("prompt", text)
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
