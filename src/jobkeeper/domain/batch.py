"""A batch of submissions (``JobManager.submit_many``): what one item asks for, what it became,
and the batch's rules checked before any I/O.

Every item is validated as ``submit`` validates its arguments; an idempotency key may appear on
several items only with the same request (they then name one job), and the batch's distinct jobs
are what gets written. Errors name the item (``JobkeeperError.index``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import KW_ONLY, dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

from jobkeeper.domain.validate import validate_new_job, validate_tenant
from jobkeeper.domain.values import Job, NewJob
from jobkeeper.errors import InvalidRequest, JobkeeperError

__all__ = ["Batch", "JobSpec", "Submitted", "validate_batch"]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job of a batch, with the options of ``JobManager.submit`` (same names, same
    defaults, keywords after ``payload``). ``submit_many`` also takes a mapping with these
    keys, such as ``{"kind": "resize", "payload": {...}, "idempotency_key": "upload-7"}``."""

    kind: str
    payload: Any = None
    _: KW_ONLY
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    priority: int = 0
    max_attempts: int = 3
    run_after: datetime | None = None
    pinned: bool = False


_SPEC_FIELDS = frozenset(f.name for f in fields(JobSpec))


class Submitted(NamedTuple):
    """What one item of a batch became: its ``job``, and whether this batch ``created`` it
    (``False``: an idempotent replay, of an earlier request or of an earlier item)."""

    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class Batch:
    """A validated batch: the distinct jobs to write (``rows``), the item that first asked for
    each (``first``), and each item's row (``row_of``)."""

    tenant: str
    rows: tuple[NewJob, ...]
    first: tuple[int, ...]
    row_of: tuple[int, ...]


def _spec(item: object) -> JobSpec:
    if isinstance(item, JobSpec):
        return item
    if not isinstance(item, Mapping):
        raise InvalidRequest("item", "a JobSpec or a mapping of its fields is required")
    unknown = sorted(str(name) for name in item if name not in _SPEC_FIELDS)
    if unknown:
        raise InvalidRequest(unknown[0], f"not an option of a job (one of {sorted(_SPEC_FIELDS)})")
    if "kind" not in item:
        raise InvalidRequest("kind", "a kind is required")
    return JobSpec(**item)


def validate_batch(tenant: object, items: Iterable[JobSpec | Mapping[str, Any]]) -> Batch:
    """Check every item (errors name it: ``index``) and the keys' use across the batch."""
    tenant = validate_tenant(tenant)
    rows: list[NewJob] = []
    first: list[int] = []
    row_of: list[int] = []
    by_key: dict[str, int] = {}
    for index, item in enumerate(items):
        try:
            spec = _spec(item)
            new = validate_new_job(
                tenant=tenant,
                kind=spec.kind,
                payload=spec.payload,
                priority=spec.priority,
                max_attempts=spec.max_attempts,
                run_after=spec.run_after,
                idempotency_key=spec.idempotency_key,
                concurrency_key=spec.concurrency_key,
                pinned=spec.pinned,
            )
        except JobkeeperError as exc:
            raise exc.at_item(index) from None
        key = new.idempotency_key
        earlier = None if key is None else by_key.get(key)
        if earlier is not None:
            if rows[earlier].fingerprint != new.fingerprint:
                raise InvalidRequest(
                    "idempotency_key",
                    f"item {first[earlier]} has this key with a different request",
                ).at_item(index)
            row_of.append(earlier)  # the same request twice: one job
            continue
        if key is not None:
            by_key[key] = len(rows)
        row_of.append(len(rows))
        first.append(index)
        rows.append(new)
    return Batch(tenant, tuple(rows), tuple(first), tuple(row_of))
