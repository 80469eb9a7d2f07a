"""Input validation: every argument is checked before any I/O, so bad input raises a typed error
and writes nothing."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from jobkeeper.domain.values import NewJob, Progress, new_job_of
from jobkeeper.errors import InvalidJobId, InvalidRequest, TenantRequired

__all__ = [
    "DEFAULT_SCHEMA",
    "KIND_PATTERN",
    "MAX_ATTEMPTS",
    "MAX_PRIORITY",
    "MAX_SEQUENCE",
    "aware_utc",
    "encode_json",
    "optional_text",
    "parse_job_id",
    "storable",
    "validate_kind",
    "validate_new_job",
    "validate_progress",
    "validate_schema",
    "validate_tenant",
]

MAX_PRIORITY = 32_767
MAX_ATTEMPTS = 1_000
# versions and event sequence numbers are Postgres bigints
MAX_SEQUENCE = 2**63 - 1
_KIND = "[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}"
_NAME = re.compile(_KIND)
# the same rule as a JSON Schema pattern (ECMA-262 searches, so it is anchored), for OpenAPI
KIND_PATTERN = f"^{_KIND}$"
_KEY_MAX = 255
_FIRST, _LAST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)
_TENANT_MAX = 128
# a \u0000 escape that is not itself an escaped backslash followed by "u0000"
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


DEFAULT_SCHEMA = "jobkeeper"
# lower case, so it needs no quoting to mean itself; short enough that "<schema>_changes" stays
# under Postgres's 63-byte identifier limit (channel names are identifiers)
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def validate_schema(schema: object) -> str:
    """A Postgres schema name for jobkeeper's tables: lower-case letters, digits and ``_``,
    starting with a letter or ``_``, at most 48 characters (and not a system schema)."""
    if (
        not isinstance(schema, str)
        or not _SCHEMA.fullmatch(schema)
        or schema.startswith("pg_")
        or schema == "information_schema"
    ):
        raise InvalidRequest(
            "schema", "1 to 48 lower-case letters, digits and _, starting with a letter or _"
        )
    return schema


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


def storable(field: str, text: str) -> str:
    """Postgres text cannot hold NUL, and UTF-8 cannot hold a lone surrogate."""
    if "\x00" in text:
        raise InvalidRequest(field, "NUL characters cannot be stored")
    if text.isascii():  # (a flag of the string: no surrogate to look for)
        return text
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
    return storable(field, value)


def validate_kind(kind: object) -> str:
    """A job kind: 1 to 128 letters, digits and ``_ . : / -``, starting alphanumeric."""
    if not isinstance(kind, str) or not _NAME.fullmatch(kind):
        raise InvalidRequest(
            "kind", "1 to 128 characters: letters, digits and _ . : / - (starting alphanumeric)"
        )
    return kind


def aware_utc(field: str, value: object) -> datetime:
    """Require a timezone-aware datetime and return it in UTC; naive ones are ambiguous.

    Postgres ``timestamptz`` (4713 BC to 294276 AD) holds every instant Python can, but in UTC a
    datetime at either end of Python's range may not exist (``9999-12-31T23:59-14:00`` is in
    year 10000), and asyncpg stores the first and last instants themselves as ``-infinity`` and
    ``infinity``, which it reads back naive: those are refused too.
    """
    if not isinstance(value, datetime):
        raise InvalidRequest(field, "a datetime is required")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRequest(field, "naive datetime; pass a timezone-aware one (UTC)")
    try:
        moment = value.astimezone(UTC)
    except OverflowError:  # past either end of Python's range: refused below, as the ends are
        moment = _FIRST
    if not _FIRST < moment < _LAST:
        raise InvalidRequest(
            field,
            "out of range: in UTC it must fall after 0001-01-01T00:00:00 and before "
            "9999-12-31T23:59:59.999999",
        )
    return moment


# one encoder for every value: ``json.dumps`` with options builds a new one per call, which cost
# more than encoding a small payload
_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False
)


def encode_json(field: str, value: Any) -> str:
    """Serialise a JSON value (compact, sorted keys); ``InvalidRequest`` naming the field if not."""
    if value is None:  # what most handlers return
        return "null"
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequest(field, f"not JSON-serialisable: {exc}") from None
    if "\\u0000" in text and _NUL_ESCAPE.search(text):  # the plain search rules most out
        raise InvalidRequest(field, "JSON strings may not contain NUL characters (Postgres jsonb)")
    return storable(field, text)


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
        storable("message", message)
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
    return new_job_of(  # NewJob's fields, in order (a batch builds thousands)
        tenant,
        kind,
        payload_json,
        priority,
        max_attempts,
        when,
        idempotency_key,
        concurrency_key,
        pinned,
        fingerprint,
        None,  # parent_id
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
