"""Batch submit: the distinct jobs of a ``submit_many`` written by one statement (the rows sent
as arrays and unnested), each with its ``submitted`` event; idempotent replays and conflicts
found; the queue limits applied to the batch as a whole. All or nothing.

Two paths:

- **Optimistic** (the pool, no queue limit): one statement in autocommit, one round trip. It has
  no ``ON CONFLICT``: a key some job already holds raises a unique violation, which undoes the
  whole statement, and a key whose job expired (a tombstone) makes it insert nothing. Either
  way nothing was written and the careful path runs.
- **Careful** (a queue limit, the caller's connection, or after the optimistic path gave up):
  one transaction on the pool, or a savepoint in the caller's transaction (not ours to end).
  With a limit, the tenant's queue lock first (as ``JobStatements.insert`` takes it); then the
  jobs and tombstones of the batch's keys are read, replays and conflicts decided, and the rest
  inserted with ``ON CONFLICT DO NOTHING``. A key inserted by a concurrent transaction between
  that read and the insert leaves a row out: the round is rolled back and run again, and its
  read finds that job (``ON CONFLICT`` waited for the other transaction to end).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
from uuid_utils.compat import uuid7

from jobkeeper.domain.batch import Batch
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import FrozenDict, Job, NewJob, Progress, job_of
from jobkeeper.errors import DatabaseUnavailable, IdempotencyConflict, JobExpired
from jobkeeper.postgres.borrowed import Borrowed, job_of_text_row, json_as_text
from jobkeeper.postgres.compile import Sql, raw, with_event
from jobkeeper.postgres.jobs import _QUEUE_LOCK, _QUEUED_FOR, _SUBMITTED
from jobkeeper.postgres.notify import channels, encode
from jobkeeper.postgres.pool import Database, Pooled, loads

__all__ = ["BatchStatements", "Full"]

# the arrays of one batch, $2 onwards ($1 is the tenant), in the order of the input CTE's columns
_ARRAYS = (
    ("id", "uuid"),
    ("kind", "text"),
    ("payload", "text"),
    ("priority", "int"),
    ("max_attempts", "int"),
    ("run_after", "timestamptz"),
    ("idempotency_key", "text"),
    ("request_fingerprint", "text"),
    ("concurrency_key", "text"),
    ("pinned", "bool"),
)
# the arrays whose every element is NULL in a plain batch (no option of a job given)
_OPTIONAL = ("run_after", "idempotency_key", "request_fingerprint", "concurrency_key")
_KEY_INDEX = "uq_jobs_tenant_idempotency_key"
_QUEUED = JobStatus.QUEUED.value
_Q = f"'{_QUEUED}'"
_N = len(_ARRAYS) + 2  # the first parameter after the arrays
_PARAMS = (
    "tenant",
    *(name for name, _ in _ARRAYS),
    "max_queued",
    "max_queued_per_kind",
    "trace_context",
)


def _insert(*, on_conflict: str, select: str) -> Sql:
    """The batch's insert. Its conditions hold for the batch as a whole (they do not depend on
    the row, so Postgres checks each once): no key of the batch belongs to an expired job, and
    with a limit ($N, $N+1; CASE, so a count runs only when its limit is set) the tenant's
    queue, and each kind's, stays within it once the batch is in. Every job of the batch gets
    the one trace context ($N+2) of the span that submitted it.

    Rows go in by key: inserting a key another transaction has inserted but not committed waits
    for it, so two batches sharing keys would deadlock if each went through them in its own
    order; in one order, one waits for the other and no cycle forms."""
    arrays = ", ".join(f"${n}::{type_}[]" for n, (_, type_) in enumerate(_ARRAYS, start=2))
    names = ", ".join(name for name, _ in _ARRAYS)
    text = f"""WITH input AS (
    SELECT * FROM unnest({arrays}) AS i({names})
), changed AS (
    INSERT INTO jobs (tenant, {names}, trace_context)
    SELECT $1::text, id, kind, payload::jsonb, priority, max_attempts, coalesce(run_after, now()),
        idempotency_key, request_fingerprint, concurrency_key, pinned, ${_N + 2}::jsonb
    FROM input
    WHERE NOT EXISTS (
        SELECT 1 FROM job_tombstones AS t
        WHERE t.tenant = $1::text AND t.idempotency_key = ANY($8::text[])
    ) AND CASE WHEN ${_N}::int IS NULL THEN true ELSE
        (SELECT count(*) FROM jobs AS q WHERE q.status = {_Q} AND q.tenant = $1::text)
        + cardinality($2::uuid[]) <= ${_N}::int END
    AND CASE WHEN ${_N + 1}::int IS NULL THEN true ELSE NOT EXISTS (
        SELECT 1 FROM (SELECT k.kind, count(*) AS n FROM unnest($3::text[]) AS k(kind)
                       GROUP BY k.kind) AS added
        WHERE added.n + (SELECT count(*) FROM jobs AS q WHERE q.status = {_Q}
                         AND q.tenant = $1::text AND q.kind = added.kind) > ${_N + 1}::int
    ) END
    ORDER BY idempotency_key
    {on_conflict}
    RETURNING jobs.*
)"""
    return with_event(raw(text, *_PARAMS), *_SUBMITTED, select=select)


# What Postgres filled in, as one row for the whole batch (the rest is what was sent, or a
# column's default): the ids and payloads (as ``jsonb`` keeps them) in one order, both aggregates
# reading the same rows in the same order, and the statement's time, which is every new row's
# created_at and updated_at and the run_after of one sent without. One row of three values
# decodes in a fraction of the time of a thousand rows of five.
_INSERT = _insert(
    on_conflict="",
    select="array_agg(changed.id) AS ids, jsonb_agg(changed.payload) AS payloads, now() AS at",
)
_INSERT_CAREFUL = _insert(
    on_conflict="ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL "
    "DO NOTHING",
    select=json_as_text("changed"),
)
_BY_KEYS = raw(
    f"SELECT {json_as_text('jobs')} FROM jobs WHERE tenant = $1 AND idempotency_key = ANY($2)",
    "tenant",
    "keys",
)
_TOMBSTONES_BY_KEYS = raw(
    "SELECT idempotency_key, job_id, expired_at FROM job_tombstones"
    " WHERE tenant = $1 AND idempotency_key = ANY($2)",
    "tenant",
    "keys",
)
_QUEUED_BY_KIND = raw(
    f"SELECT kind, count(*) AS queued FROM jobs WHERE tenant = $1 AND status = {_Q}"
    " AND kind = ANY($2) GROUP BY kind",
    "tenant",
    "kinds",
)
# the new jobs' notifications, sent inside the caller's transaction: delivered at its commit
_NOTIFY_IN_TRANSACTION = raw(
    "SELECT count(pg_notify($1, p)), count(pg_notify($2, p)) FROM unnest($3::text[]) AS p",
    "changes_channel",
    "work_channel",
    "payloads",
)
_SAVEPOINT = "jobkeeper_batch"
# A careful round loses a key to a concurrent insert at most once per key in a row (the next
# read finds it); more rounds than this means rows keep vanishing (retention in a loop).
_ROUNDS = 5


@dataclass(frozen=True, slots=True)
class Full:
    """The batch would take a queue past its limit: the tenant's (``kind`` is ``None``) or
    ``kind``'s. Nothing was written."""

    kind: str | None


class _Lost(Exception):
    """A key of the batch was inserted by another transaction during this round."""


class _OnPool:
    """A pooled connection, in a transaction of ours, seen as ``Borrowed``."""

    def __init__(self, connection: Pooled) -> None:
        self._connection = connection

    async def fetch(self, text: str, args: Sequence[Any]) -> list[Any]:
        return list(await self._connection.fetch(text, *args))


class BatchStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def insert(
        self,
        batch: Batch,
        *,
        max_queued: int | None = None,
        max_queued_per_kind: int | None = None,
        on: Borrowed | None = None,
        notify: bool = True,
        trace_context: str | None = None,
    ) -> list[tuple[Job, bool]] | Full:
        """Each of ``batch.rows``'s job, and whether this call created it (``False``: its key
        holds the same request already), in the rows' order; or ``Full``. A key that holds
        another request raises ``IdempotencyConflict``, one of an expired job ``JobExpired``,
        both naming the item (``index``); nothing is written then.

        ``on`` the caller's connection, everything runs in the caller's transaction (in a
        savepoint of its own), the queue lock (with a limit) is held until it ends, and the new
        jobs are announced at its commit (``notify``: whether this install notifies at all).
        ``trace_context``: the submitting span's W3C context as JSON text, for every new job.
        """
        params = _params(batch, max_queued, max_queued_per_kind, trace_context)
        if on is None and max_queued is None and max_queued_per_kind is None:
            jobs = await self._optimistic(batch, params, trace_context)
            if jobs is not None:
                return [(job, True) for job in jobs]
        for _ in range(_ROUNDS):
            try:
                if on is None:
                    async with self._db.connection() as conn, conn.transaction():
                        outcome = await self._careful(_OnPool(conn), batch, params)
                    if not isinstance(outcome, Full):
                        self._db.announce([job_row for job_row, created in outcome if created])
                else:
                    outcome = await self._in_savepoint(on, batch, params, notify=notify)
            except _Lost:
                continue
            if isinstance(outcome, Full):
                return outcome
            return [(job_of_text_row(row), created) for row, created in outcome]
        raise RuntimeError("batch submit kept losing its rows; is something deleting jobs?")

    async def _optimistic(
        self, batch: Batch, params: Mapping[str, Any], trace_context: str | None
    ) -> list[Job] | None:
        """The optimistic path: the new jobs, or ``None`` if nothing was written (a key exists
        or expired). The jobs are drafted while Postgres runs the statement (the two CPUs work
        at once: building a thousand snapshots costs about what the statement does), and what
        Postgres filled in is set on them once it returns."""
        statement = asyncio.ensure_future(self._insert_all(params))
        try:
            await asyncio.sleep(0)  # the task takes a connection and sends the statement
            traced = None if trace_context is None else loads(trace_context)
            jobs = [
                _drafted(batch.tenant, new, job_id, traced)
                for new, job_id in zip(batch.rows, params["id"], strict=True)
            ]
            row = await statement
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != _KEY_INDEX:
                raise
            return None
        except BaseException:
            statement.cancel()  # (a no-op once it is done)
            raise
        if row["ids"] is None:  # no row: the statement inserts every row or none
            return None
        payload_of = dict(zip(row["ids"], row["payloads"], strict=True))
        at = row["at"]
        for job, new in zip(jobs, batch.rows, strict=True):
            _filled(job, new, payload_of[job.id], at)
        self._db.announce([_announced(job) for job in jobs])
        return jobs

    async def _insert_all(self, params: Mapping[str, Any]) -> asyncpg.Record:
        # An array of nothing but NULLs is sent as NULL: unnest pads it with a NULL per row all
        # the same, and asyncpg checks and encodes every element of an array it sends.
        args = {**params, **{n: None for n in _OPTIONAL if params[n].count(None) == len(params[n])}}
        async with self._db.connection() as conn:
            row = await conn.fetchrow(self._db.text(_INSERT), *_INSERT.args(args))
        assert row is not None  # aggregates: one row, NULLs when nothing was inserted
        return row

    async def _in_savepoint(
        self, on: Borrowed, batch: Batch, params: Mapping[str, Any], *, notify: bool
    ) -> list[tuple[Mapping[str, Any], bool]] | Full:
        await on.fetch(f"SAVEPOINT {_SAVEPOINT}", [])
        try:
            outcome = await self._careful(on, batch, params)
            if notify and not isinstance(outcome, Full):
                new = [row for row, created in outcome if created]
                if new:
                    payloads = encode([(r["id"], r["version"], r["status"]) for r in new])
                    changes_channel, work_channel = channels(self._db.schema)
                    await on.fetch(
                        _NOTIFY_IN_TRANSACTION.text, [changes_channel, work_channel, payloads]
                    )
        except BaseException:
            with contextlib.suppress(DatabaseUnavailable):  # a lost link: its error, not ours
                await on.fetch(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}", [])
                await on.fetch(f"RELEASE SAVEPOINT {_SAVEPOINT}", [])
            raise
        await on.fetch(f"RELEASE SAVEPOINT {_SAVEPOINT}", [])
        return outcome

    async def _careful(
        self, on: Borrowed, batch: Batch, params: Mapping[str, Any]
    ) -> list[tuple[Mapping[str, Any], bool]] | Full:
        """One round of the careful path, in a transaction (or savepoint) the caller ends: rows
        as text (``json_as_text``), with whether each was created."""
        if params["max_queued"] is not None or params["max_queued_per_kind"] is not None:
            await on.fetch(_QUEUE_LOCK.text, [f"{self._db.schema}.queue:{batch.tenant}"])
        keys = [key for key in params["idempotency_key"] if key is not None]
        existing: dict[str, Mapping[str, Any]] = {}
        expired: dict[str, Mapping[str, Any]] = {}
        if keys:
            args = [batch.tenant, keys]
            for row in await on.fetch(self._db.text(_BY_KEYS), args):
                existing[row["idempotency_key"]] = row
            for row in await on.fetch(self._db.text(_TOMBSTONES_BY_KEYS), args):
                expired[row["idempotency_key"]] = row
        outcome: list[tuple[Mapping[str, Any], bool] | None] = []
        fresh: list[int] = []
        for position, new in enumerate(batch.rows):
            key = new.idempotency_key
            found = None if key is None else existing.get(key)
            if key is not None and found is not None:
                if found["request_fingerprint"] != new.fingerprint:
                    raise IdempotencyConflict(key, found["id"]).at_item(batch.first[position])
                outcome.append((found, False))
            elif key is not None and key in expired:
                gone = expired[key]
                raise JobExpired(gone["job_id"], gone["expired_at"]).at_item(batch.first[position])
            else:
                outcome.append(None)
                fresh.append(position)
        if fresh:
            subset = {
                **params,
                **{name: [params[name][p] for p in fresh] for name, _ in _ARRAYS},
            }
            rows = await on.fetch(self._db.text(_INSERT_CAREFUL), _INSERT_CAREFUL.args(subset))
            if not rows:
                full = await self._full(on, batch, subset)
                if full is not None:
                    return full
            if len(rows) < len(fresh):
                raise _Lost()
            by_id = {row["id"]: row for row in rows}
            for position, job_id in zip(fresh, subset["id"], strict=True):
                outcome[position] = (by_id[job_id], True)
        return [entry for entry in outcome if entry is not None]

    async def _full(self, on: Borrowed, batch: Batch, subset: Mapping[str, Any]) -> Full | None:
        """Which limit refused the batch's new jobs (``subset``): the tenant's, unless only a
        kind's is reached; ``None`` if neither is (jobs left the queue, or a key's job expired,
        meanwhile: the round is run again)."""
        max_queued, per_kind = subset["max_queued"], subset["max_queued_per_kind"]
        adding = len(subset["id"])
        if max_queued is not None:
            rows = await on.fetch(self._db.text(_QUEUED_FOR), [batch.tenant])
            if rows[0]["count"] + adding > max_queued:
                return Full(None)
        if per_kind is not None:
            kinds = Counter(subset["kind"])
            rows = await on.fetch(self._db.text(_QUEUED_BY_KIND), [batch.tenant, list(kinds)])
            queued = {row["kind"]: row["queued"] for row in rows}
            for kind, n in kinds.items():
                if queued.get(kind, 0) + n > per_kind:
                    return Full(kind)
        return None


_NO_PROGRESS = Progress(None, None)


# what a drafted job holds until Postgres has filled it in (``_filled``)
_UNFILLED = datetime.min.replace(tzinfo=UTC)
# read once: an enum member looked up on its class, and a field's default factory, cost more per
# job than the rest of a draft's fields (a frozen empty object can be shared)
_QUEUED_STATUS = JobStatus.QUEUED
_NONE_YET = FrozenDict()


def _drafted(tenant: str, new: NewJob, job_id: UUID, trace_context: Any) -> Job:
    """A new job of ``_INSERT`` before it returns: what was sent, and the columns' defaults
    for what was not. Decoding every column of a thousand rows cost about as much as inserting
    them; tests compare such a job with its row read back."""
    return job_of(  # Job's fields, in order
        job_id,
        tenant,
        new.kind,
        _QUEUED_STATUS,
        None,  # payload: as jsonb keeps it (_filled)
        None,  # result
        None,  # error
        _NO_PROGRESS,
        new.priority,
        0,  # attempts
        new.max_attempts,
        _UNFILLED,  # run_after
        new.idempotency_key,
        new.concurrency_key,
        False,  # cancel_requested
        new.pinned,
        1,  # version
        _UNFILLED,  # created_at
        _UNFILLED,  # updated_at
        None,  # started_at
        None,  # finished_at
        None,  # prompt
        _NONE_YET,  # answers
        _NONE_YET,  # checkpoints
        None,  # schedule_id
        None,  # scheduled_for
        None,  # input_deadline
        None,  # question_version
        None,  # claimed_by
        None,  # claim_expires_at
        None,  # parent_id
        None,  # waiting_for
        None,  # sleeping_until
        trace_context,
    )


def _filled(job: Job, new: NewJob, payload: Any, at: datetime) -> None:
    """Set on a drafted job what Postgres filled in: the payload as ``jsonb`` keeps it, and the
    statement's time. The snapshot is frozen for everyone else; nobody else holds it yet."""
    set_field = object.__setattr__
    set_field(job, "payload", payload)
    set_field(job, "run_after", at if new.run_after is None else new.run_after)
    set_field(job, "created_at", at)
    set_field(job, "updated_at", at)


def _announced(job: Job) -> dict[str, Any]:
    """What the announcer reads of a new job's row."""
    return {"id": job.id, "version": 1, "status": _QUEUED}


def _params(
    batch: Batch, max_queued: int | None, max_queued_per_kind: int | None, trace_context: str | None
) -> dict[str, Any]:
    rows = batch.rows
    return {
        "tenant": batch.tenant,
        "id": [uuid7() for _ in rows],
        "kind": [row.kind for row in rows],
        "payload": [row.payload_json for row in rows],
        "priority": [row.priority for row in rows],
        "max_attempts": [row.max_attempts for row in rows],
        "run_after": [row.run_after for row in rows],
        "idempotency_key": [row.idempotency_key for row in rows],
        "request_fingerprint": [row.fingerprint for row in rows],
        "concurrency_key": [row.concurrency_key for row in rows],
        "pinned": [row.pinned for row in rows],
        "max_queued": max_queued,
        "max_queued_per_kind": max_queued_per_kind,
        "trace_context": trace_context,
    }
