"""All SQL lives here: inserts, conditional transitions and reads of jobs and their events.

Every change is a single statement in autocommit mode: a conditional
``UPDATE ... WHERE status IN (...) RETURNING`` (or ``INSERT ... ON CONFLICT``) in a CTE that also
appends the ``job_events`` row. One statement is one transaction and one round trip, so a change and
its event commit together or not at all, and no Python code reads a row and then writes it back.

Right after the commit, the change is announced on the ``jobkeeper_changes`` channel
(``pg_notify`` of JSON arrays ``[[job_id, version, status], ...]`` under the 8,000-byte
cap), and the changes workers act on also on ``jobkeeper_work``, by the repository's announcer
task, which sends what concurrent writes committed meanwhile in one transaction of its own,
committed asynchronously (``_ANNOUNCE``), unless the repository was created with
``notify=False`` (poll mode, for poolers). Not in the writing statement: Postgres serialises
committing transactions that notify on one database-wide lock, held through the commit's WAL flush,
so durable commits that notify run one at a time; a notification-only transaction that does not
wait for the flush holds it for microseconds. A process that dies between the two leaves a change
unannounced, which the catch-up finds (``docs/consistency.md``). The change feed's dedicated
connection (``FeedConnection``) listens there; its catch-up query runs on the pool (``catch_up``).

Statements are written with SQLAlchemy Core and compiled to SQL text once, at import; they run on
an asyncpg pool (see ``JobRepository``). Measured on this project's machine, building
and executing the CTE through SQLAlchemy per call cost about 1.3 ms of Python time against 0.5 ms
for the statement itself (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.sql.compiler import SQLCompiler
from uuid_utils.compat import uuid7

from jobkeeper.domain.status import TERMINAL, JobStatus, sources_of
from jobkeeper.domain.values import (
    FrozenDict,
    Job,
    JobEvent,
    Lease,
    NewJob,
    Progress,
    WorkerInfo,
    freeze_json,
)
from jobkeeper.errors import (
    DatabaseUnavailable,
    InvalidTransition,
    JobExpired,
    JobFinished,
    JobNotFound,
    SchemaMissing,
)
from jobkeeper.schema import job_events, job_tombstones, jobs
from jobkeeper.settings import asyncpg_dsn

__all__ = ["CHANNEL", "WORK_CHANNEL", "CatchUp", "FeedConnection", "JobRepository"]

CHANNEL = "jobkeeper_changes"  # every change: what caches follow
# the changes workers act on, also sent here: a job queued (new work) and a cancel request for a
# running job; a worker process listens only here, so it does not parse every claim and
# completion of every other worker (in a drain, that was a third of a worker's CPU)
WORK_CHANNEL = "jobkeeper_work"
log = logging.getLogger("jobkeeper.repository")
# Postgres caps a notification payload at 8000 bytes. An entry is at most 76 bytes (a 36-character
# id, a version of at most 19 digits, a status of at most 13 characters, JSON punctuation) and 77
# with its comma, so 90 of them always fit.
_PER_PAYLOAD = 90
# every table of the current schema exists (a cheap check at connect)
_SCHEMA_PRESENT = (
    "SELECT to_regclass('job_events') IS NOT NULL AND to_regclass('job_tombstones') IS NOT NULL"
    " AND to_regclass('api_keys') IS NOT NULL AND to_regclass('workers') IS NOT NULL"
)
# an expired job is gone for good: its "version" outranks every real one, so caches drop it
EXPIRED_VERSION = 2**63 - 1
_NOW = sa.func.now()
_CANCELLABLE_AT_ONCE = (JobStatus.QUEUED, JobStatus.WAITING_INPUT)

# errors that mean the connection (not the statement) failed
_LINK_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.ConnectionDoesNotExistError,
    # a pooled connection the server dropped: "connection is closed", or a protocol left
    # mid-operation ("cannot switch to state ...; another operation is in progress")
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)


_EMPTY_OBJECT = FrozenDict()


def _loads(text: str) -> Any:
    if text == "{}":  # answers, checkpoints and many payloads: skip the parser
        return _EMPTY_OBJECT
    return freeze_json(json.loads(text))


_STATUS = {status.value: status for status in JobStatus}  # a dict lookup, not Enum.__call__


def _to_job(row: asyncpg.Record) -> Job:
    return Job(
        id=row["id"],
        tenant=row["tenant"],
        kind=row["kind"],
        status=_STATUS[row["status"]],
        payload=row["payload"],
        result=row["result"],
        error=row["error"],
        progress=Progress(row["progress_fraction"], row["progress_message"]),
        priority=row["priority"],
        attempts=row["attempts"],
        max_attempts=row["max_attempts"],
        run_after=row["run_after"],
        idempotency_key=row["idempotency_key"],
        concurrency_key=row["concurrency_key"],
        cancel_requested=row["cancel_requested"],
        pinned=row["pinned"],
        prompt=row["prompt"],
        answers=row["answers"],
        checkpoints=row["checkpoints"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


# --- statements, compiled once ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sql:
    """A statement compiled for asyncpg: SQL text with ``$n`` parameters.

    ``slots`` lists, per position, the caller's parameter name or ``None`` and a constant that the
    statement carries itself (such as the ``1`` of ``version + 1``).
    """

    text: str
    slots: tuple[tuple[str | None, Any], ...]

    def args(self, params: Mapping[str, Any]) -> list[Any]:
        return [value if name is None else params[name] for name, value in self.slots]


_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]


def _compile(statement: sa.ClauseElement) -> _Sql:
    compiled = statement.compile(dialect=_DIALECT, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    slots = []
    for name in compiled.positiontup or ():
        bind = compiled.binds[name]
        slots.append((name, None) if bind.required else (None, bind.effective_value))
    return _Sql(str(compiled), tuple(slots))


def _p(name: str, type_: sa.types.TypeEngine[Any] | None = None) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _statuses(statuses: Sequence[JobStatus]) -> list[sa.ColumnElement[Any]]:
    """Status constants rendered inline, so each statement has a fixed text."""
    return [sa.literal_column(f"'{s.value}'") for s in statuses]


_THIS_JOB = (jobs.c.id == _p("job_id", sa.Uuid()), jobs.c.tenant == _p("tenant", sa.Text()))


def _update(changes: Mapping[str, Any], *conditions: sa.ColumnElement[bool]) -> sa.Update:
    """``UPDATE jobs`` of one job, bumping ``version`` and ``updated_at``, returning the new row."""
    return (
        sa.update(jobs)
        .where(*_THIS_JOB, *conditions)
        .values(version=jobs.c.version + 1, updated_at=_NOW, **changes)
        .returning(*jobs.c)
    )


# Sends notifications: each payload of $1 on CHANNEL, of $2 on WORK_CHANNEL. Its transaction
# commits without waiting for the WAL flush (set_config(..., true) lasts until that commit): only
# notifications are lost if the server crashes, and listeners then reconnect and catch up anyway.
_ANNOUNCE = f"""SELECT set_config('synchronous_commit', 'off', true),
  (SELECT count(pg_notify('{CHANNEL}', payload)) FROM unnest($1::text[]) AS payload),
  (SELECT count(pg_notify('{WORK_CHANNEL}', payload)) FROM unnest($2::text[]) AS payload)"""


def _notification_payloads(changes: Sequence[tuple[UUID, int, str]]) -> list[str]:
    """``[[job_id, version, status], ...]`` of ``changes`` as JSON, ``_PER_PAYLOAD`` a payload
    (built here: in SQL it cost Postgres a few µs per change). Ids, versions and statuses need no
    JSON escaping, so plain formatting builds each entry."""
    entries = [f'["{job_id}",{version},"{status}"]' for job_id, version, status in changes]
    return [
        "[" + ",".join(entries[start : start + _PER_PAYLOAD]) + "]"
        for start in range(0, len(entries), _PER_PAYLOAD)
    ]


# Appends one event per row of "changed"; its seq is the row's new version.
_RECORD = """recorded AS (
    INSERT INTO job_events (job_id, seq, type, data, at)
    SELECT changed.id, changed.version, {type}, {data}, changed.updated_at FROM changed
)"""


def _with_event(
    statement: sa.Update | sa.Insert,
    event_type: str | Callable[[sa.CTE], sa.ColumnElement[str]],
) -> _Sql:
    """Wrap a ``RETURNING`` write in a CTE that appends its event; select the changed row.

    The event's ``seq`` is the job's new ``version``: one change, one version, one event. Its data
    is the ``event_data`` parameter (JSON text).
    """
    changed = statement.cte("changed")
    kind = sa.literal(event_type, sa.Text()) if isinstance(event_type, str) else event_type(changed)
    record = (
        sa.insert(job_events)
        .from_select(
            ["job_id", "seq", "type", "data", "at"],
            sa.select(
                changed.c.id,
                changed.c.version,
                kind,
                sa.cast(_p("event_data", sa.Text()), job_events.c.data.type),
                changed.c.updated_at,
            ),
        )
        .cte("recorded")
    )
    return _compile(sa.select(changed).add_cte(record))


_NEW_JOB: dict[str, sa.ColumnElement[Any]] = {
    "id": _p("id", sa.Uuid()),
    "tenant": _p("tenant", sa.Text()),
    "kind": _p("kind", sa.Text()),
    "payload": sa.cast(_p("payload", sa.Text()), jobs.c.payload.type),
    "priority": _p("priority", sa.Integer()),
    "max_attempts": _p("max_attempts", sa.Integer()),
    "run_after": sa.func.coalesce(_p("run_after", sa.DateTime(timezone=True)), _NOW),
    "idempotency_key": _p("idempotency_key", sa.Text()),
    "request_fingerprint": _p("request_fingerprint", sa.Text()),
    "concurrency_key": _p("concurrency_key", sa.Text()),
    "pinned": _p("pinned", sa.Boolean()),
}
# the key of an expired job stays refused while its tombstone lives
_KEY_NOT_EXPIRED = ~sa.exists().where(
    job_tombstones.c.tenant == _NEW_JOB["tenant"],
    job_tombstones.c.idempotency_key == _NEW_JOB["idempotency_key"],
)
# the partial unique index uq_jobs_tenant_idempotency_key, as ON CONFLICT names it
_IDEMPOTENCY_KEY = [jobs.c.tenant, jobs.c.idempotency_key]
_HAS_KEY = jobs.c.idempotency_key.is_not(None)
_INSERT = _with_event(
    insert(jobs)
    .from_select(list(_NEW_JOB), sa.select(*_NEW_JOB.values()).where(_KEY_NOT_EXPIRED))
    .on_conflict_do_nothing(index_elements=_IDEMPOTENCY_KEY, index_where=_HAS_KEY)
    .returning(*jobs.c),
    "submitted",
)


def _queued(*conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(jobs.c.status == sa.literal_column("'queued'"), *conditions)
        .scalar_subquery()
    )


def _under(limit: sa.BindParameter[Any], count: sa.ScalarSelect[int]) -> sa.ColumnElement[bool]:
    # CASE, not OR: the count runs only when that limit is set
    return sa.case((limit.is_(None), sa.true()), else_=count < limit)


# The same insert, admitted only while the tenant's queue (and the kind's) is under its limit.
# Run after _QUEUE_LOCK in one transaction: the lock serialises submits of one tenant, and this
# statement's snapshot, taken after the lock, counts every job admitted before it.
_INSERT_LIMITED = _with_event(
    insert(jobs)
    .from_select(
        list(_NEW_JOB),
        sa.select(*_NEW_JOB.values()).where(
            _KEY_NOT_EXPIRED,
            _under(_p("max_queued", sa.Integer()), _queued(jobs.c.tenant == _NEW_JOB["tenant"])),
            _under(
                _p("max_queued_per_kind", sa.Integer()),
                _queued(jobs.c.tenant == _NEW_JOB["tenant"], jobs.c.kind == _NEW_JOB["kind"]),
            ),
        ),
    )
    .on_conflict_do_nothing(index_elements=_IDEMPOTENCY_KEY, index_where=_HAS_KEY)
    .returning(*jobs.c),
    "submitted",
)


@functools.cache
def _transition_sql(target: JobStatus) -> _Sql:
    changes: dict[str, Any] = {"status": sa.literal_column(f"'{target.value}'")}
    if target in TERMINAL:
        changes["finished_at"] = _NOW
    if target is JobStatus.RUNNING:
        # a lease for whoever moved it (the status/lease CHECK requires one); workers use claim()
        changes["started_at"] = sa.func.coalesce(jobs.c.started_at, _NOW)
        changes["lease_token"] = sa.func.gen_random_uuid()
        changes["lease_expires_at"] = _NOW + sa.func.make_interval(
            0, 0, 0, 0, 0, 0, _p("lease_seconds", sa.Double())
        )
    else:
        changes.update(lease_token=None, lease_expires_at=None, worker_id=None)
    if target is JobStatus.WAITING_INPUT:
        # a bare question for whoever moved it (the status/prompt CHECK requires one)
        changes["prompt"] = sa.cast(sa.literal_column("""'{"key": "manual"}'"""), JSONB)
    else:
        changes.update(prompt=None, input_deadline=None)
    condition = jobs.c.status.in_(_statuses(sorted(sources_of(target))))
    return _with_event(_update(changes, condition), lambda _: _p("event_type", sa.Text()))


_PROGRESS_VALUES = {
    "progress_fraction": _p("fraction", sa.Double()),
    "progress_message": _p("message", sa.Text()),
}
_IS_RUNNING = jobs.c.status == sa.literal_column(f"'{JobStatus.RUNNING.value}'")
_PROGRESS = _with_event(_update(_PROGRESS_VALUES, _IS_RUNNING), "progress")
# the same, written by the worker holding the lease (and only by it)
_PROGRESS_FENCED = _with_event(
    _update(_PROGRESS_VALUES, jobs.c.lease_token == _p("token", sa.Uuid())),
    "progress",
)

_AT_ONCE = jobs.c.status.in_(_statuses(_CANCELLABLE_AT_ONCE))
_CANCEL = _with_event(
    _update(
        {
            "status": sa.case(
                (_AT_ONCE, sa.literal_column(f"'{JobStatus.CANCELLED.value}'")),
                else_=jobs.c.status,
            ),
            "finished_at": sa.case((_AT_ONCE, _NOW), else_=jobs.c.finished_at),
            "cancel_requested": sa.true(),
            # a running job has no question (CHECK), so this only clears a waiting job's
            "prompt": None,
            "input_deadline": None,
        },
        sa.or_(
            _AT_ONCE,
            sa.and_(
                jobs.c.status == sa.literal_column(f"'{JobStatus.RUNNING.value}'"),
                ~jobs.c.cancel_requested,
            ),
        ),
    ),
    lambda changed: sa.case(
        (changed.c.status == JobStatus.CANCELLED.value, "cancelled"), else_="cancel_requested"
    ),
)

_GET = _compile(sa.select(jobs).where(*_THIS_JOB))
_BY_KEY = _compile(
    sa.select(jobs).where(
        jobs.c.tenant == _p("tenant", sa.Text()),
        jobs.c.idempotency_key == _p("idempotency_key", sa.Text()),
    )
)
_EVENTS = _compile(
    sa.select(job_events.c.seq, job_events.c.type, job_events.c.data, job_events.c.at)
    .join(jobs, jobs.c.id == job_events.c.job_id)
    .where(job_events.c.job_id == _p("job_id", sa.Uuid()), jobs.c.tenant == _p("tenant", sa.Text()))
    .where(job_events.c.seq > _p("after", sa.BigInteger()))
    .order_by(job_events.c.seq)
)


# --- worker statements: batches over arrays, written as SQL (one purpose each) -------------------


def _raw(text: str, *names: str) -> _Sql:
    """A hand-written statement whose ``$1..$n`` are ``names`` in order."""
    return _Sql(text, tuple((name, None) for name in names))


def _text_change(
    ctes: str, event_type: str, event_data: str, *names: str, select: str = "changed.*"
) -> _Sql:
    """``ctes`` ends with a CTE named "changed" returning job rows (at least id, version, tenant,
    status and updated_at); append the event, like ``_with_event`` does for Core statements, and
    return the ``select`` columns (at least id, version, tenant and status) of each changed row."""
    head = f"{ctes}, {_RECORD.format(type=event_type, data=event_data)} SELECT {select}"
    return _raw(f"{head} FROM changed", *names)


_LEASE = "now() + make_interval(secs => {})"


def _retry_or_fail(*, retryable: str, delay: str, base: str, cap: str) -> str:
    """SET clauses for a run that ended without success: cancelled if that was asked; queued
    again after ``delay`` (NULL: exponential backoff with jitter, base * 2^(attempts-1) capped,
    times 0.5..1) while ``retryable`` and attempts remain; else failed."""
    again = f"NOT jobs.cancel_requested AND {retryable} AND jobs.attempts < jobs.max_attempts"
    backoff = (
        f"least({cap}, {base} * power(2, greatest(jobs.attempts - 1, 0))) * (0.5 + random() * 0.5)"
    )
    return f"""status = CASE WHEN jobs.cancel_requested THEN 'cancelled'
                      WHEN {again} THEN 'queued' ELSE 'failed' END,
        run_after = CASE WHEN {again}
                    THEN now() + make_interval(secs => coalesce({delay}, {backoff}))
                    ELSE jobs.run_after END,
        finished_at = CASE WHEN {again} THEN NULL ELSE now() END"""


_EVENT_BY_STATUS = (
    "CASE changed.status WHEN 'queued' THEN 'retried' WHEN 'cancelled' THEN 'cancelled'"
    " ELSE 'failed' END"
)
# A lease token matches only while its job runs (ck_jobs_lease: a token if and only if running), so
# fenced writes match on id and token alone, and batches find their rows by id (= ANY, the primary
# key). Naming the status would invite the planner to read the running jobs' index range whole,
# which keeps an entry for every run since the last vacuum.
_CLEAR_LEASE = "lease_token = NULL, lease_expires_at = NULL, worker_id = NULL"
_BUMP = "version = jobs.version + 1, updated_at = now()"

# Claim up to $3 runnable jobs for worker $1 (kinds $2, NULL = any) with a fresh lease of $4 s.
# SKIP LOCKED lets many workers claim at once without waiting on each other; a job whose
# concurrency key already runs is skipped, at most one job per key is taken per batch, and the
# partial unique index uq_jobs_running_concurrency_key rejects the rare race between two batches.
_CLAIM = _text_change(
    f"""WITH candidates AS (
    SELECT j.id, j.tenant, j.concurrency_key, j.priority, j.run_after FROM jobs AS j
    WHERE j.status = 'queued' AND j.run_after <= now()
      AND ($2::text[] IS NULL OR j.kind = ANY($2::text[]))
      AND (j.concurrency_key IS NULL OR NOT EXISTS (
          SELECT 1 FROM jobs AS r WHERE r.status = 'running' AND r.tenant = j.tenant
            AND r.concurrency_key = j.concurrency_key))
    ORDER BY j.priority DESC, j.run_after, j.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED
), chosen AS (
    SELECT DISTINCT ON (c.tenant, coalesce(c.concurrency_key, c.id::text)) c.id FROM candidates AS c
    ORDER BY c.tenant, coalesce(c.concurrency_key, c.id::text), c.priority DESC, c.run_after, c.id
), changed AS (
    UPDATE jobs SET status = 'running', attempts = jobs.attempts + 1,
        lease_token = gen_random_uuid(), lease_expires_at = {_LEASE.format("$4::float8")},
        worker_id = $1::uuid, started_at = coalesce(jobs.started_at, now()), {_BUMP}
    WHERE jobs.id = ANY(ARRAY(SELECT id FROM chosen))
    RETURNING jobs.*
)""",
    "'claimed'",
    "jsonb_build_object('attempt', changed.attempts, 'worker', changed.worker_id)",
    "worker_id",
    "kinds",
    "limit",
    "lease_seconds",
)

# Extend the leases a worker still holds; report which it holds and which were asked to cancel.
# No version bump: a lease is bookkeeping, not a change anyone watches.
_HEARTBEAT = _raw(
    f"""UPDATE jobs SET lease_expires_at = {_LEASE.format("$3::float8")}
FROM unnest($1::uuid[], $2::uuid[]) AS held(id, token)
WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = held.id AND jobs.lease_token = held.token
RETURNING jobs.id, jobs.cancel_requested""",
    "ids",
    "tokens",
    "lease_seconds",
)


def _complete(returning: str, select: str) -> _Sql:
    return _text_change(
        f"""WITH done AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[])
        AS d(id, token, result, fraction, message)
), changed AS (
    UPDATE jobs SET status = 'succeeded', result = done.result::jsonb, finished_at = now(),
        progress_fraction = coalesce(done.fraction, jobs.progress_fraction),
        progress_message = coalesce(done.message, jobs.progress_message),
        {_CLEAR_LEASE}, {_BUMP}
    FROM done
    WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = done.id AND jobs.lease_token = done.token
    RETURNING {returning}
)""",
        "'succeeded'",
        "'{}'::jsonb",
        "ids",
        "tokens",
        "results",
        "fractions",
        "messages",
        select=select,
    )


# Record successes in one statement, with any progress report not yet written; a row whose lease
# was lost is simply not updated. _COMPLETE returns the new rows; _COMPLETE_IDS only the ids, for a
# worker that keeps no cache (decoding rows it would throw away is most of its work per job).
_COMPLETE = _complete("jobs.*", "changed.*")
_COMPLETE_IDS = _complete(
    "jobs.id, jobs.version, jobs.tenant, jobs.status, jobs.updated_at",
    "changed.id, changed.version, changed.tenant, changed.status",
)

# A handler failed ($3 error): retry after $5 s (NULL: backoff from base $6, cap $7) while $4 says
# retryable and attempts remain, else fail; a job asked to cancel is cancelled instead.
_FAIL = _text_change(
    f"""WITH changed AS (
    UPDATE jobs SET
        {
        _retry_or_fail(
            retryable="$4::boolean", delay="$5::float8", base="$6::float8", cap="$7::float8"
        )
    },
        error = $3::jsonb, {_CLEAR_LEASE}, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid
    RETURNING jobs.*
)""",
    _EVENT_BY_STATUS,
    "jsonb_build_object('error', changed.error, 'run_after', changed.run_after)",
    "job_id",
    "token",
    "error",
    "retryable",
    "delay",
    "backoff_base",
    "backoff_max",
)

# The handler stopped because the job was cancelled.
_CANCELLED = _text_change(
    f"""WITH changed AS (
    UPDATE jobs SET status = 'cancelled', finished_at = now(), {_CLEAR_LEASE}, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid
    RETURNING jobs.*
)""",
    "'cancelled'",
    "'{}'::jsonb",
    "job_id",
    "token",
)

# Graceful shutdown: give leases back; the attempt does not count (a cancel request wins).
_RELEASE = _text_change(
    f"""WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS g(id, token)
), changed AS (
    UPDATE jobs SET
        status = CASE WHEN jobs.cancel_requested THEN 'cancelled' ELSE 'queued' END,
        finished_at = CASE WHEN jobs.cancel_requested THEN now() END,
        attempts = greatest(jobs.attempts - 1, 0), run_after = now(), {_CLEAR_LEASE}, {_BUMP}
    FROM given
    WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = given.id AND jobs.lease_token = given.token
    RETURNING jobs.*
)""",
    "CASE changed.status WHEN 'cancelled' THEN 'cancelled' ELSE 'released' END",
    "'{}'::jsonb",
    "ids",
    "tokens",
)

# Lease recovery: running jobs whose lease expired (the worker died, hung or was cut off) are
# retried with backoff while attempts remain, else failed with code lease_expired. Any process may
# run it; SKIP LOCKED keeps concurrent sweeps apart.
_RECOVER = _text_change(
    f"""WITH expired AS (
    SELECT id FROM jobs WHERE status = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET
        {_retry_or_fail(retryable="true", delay="NULL", base="$2::float8", cap="$3::float8")},
        error = jsonb_build_object('code', 'lease_expired', 'message',
            'the worker stopped renewing its lease (crashed, killed, hung or cut off)'),
        {_CLEAR_LEASE}, {_BUMP}
    FROM expired WHERE jobs.id = expired.id AND jobs.status = 'running'
      AND jobs.lease_expires_at < now()
    RETURNING jobs.*
)""",
    _EVENT_BY_STATUS,
    "jsonb_build_object('error', changed.error, 'run_after', changed.run_after)",
    "limit",
    "backoff_base",
    "backoff_max",
)

# A handler asks a person ($3: the prompt as JSON, with its "key"): the job waits for input with a
# deadline in $4 s (NULL: none), the lease is given up so no worker slot is held, and the attempt
# is not counted. A job asked to cancel does not start waiting.
_ASK = _text_change(
    f"""WITH changed AS (
    UPDATE jobs SET status = 'waiting_input', prompt = $3::jsonb,
        input_deadline = now() + make_interval(secs => $4::float8),
        attempts = greatest(jobs.attempts - 1, 0), {_CLEAR_LEASE}, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid
      AND NOT jobs.cancel_requested
    RETURNING jobs.*
)""",
    "'asked'",
    "changed.prompt",
    "job_id",
    "token",
    "prompt",
    "timeout",
)

# A person answers question $3 ($4: the answer as JSON, $5: who): stored with the job's answers,
# and the job is queued again for any worker to resume. Only the question still open is answered.
_ANSWER = _text_change(
    f"""WITH changed AS (
    UPDATE jobs SET status = 'queued', run_after = now(), prompt = NULL, input_deadline = NULL,
        answers = jobs.answers || jsonb_build_object($3::text, jsonb_build_object(
            'answer', $4::jsonb, 'answered_by', $5::text, 'answered_at', now())),
        {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.tenant = $2::text AND jobs.status = 'waiting_input'
      AND jobs.prompt ->> 'key' = $3::text
    RETURNING jobs.*
)""",
    "'answered'",
    "jsonb_build_object('key', $3::text, 'answered_by', $5::text)",
    "job_id",
    "tenant",
    "key",
    "answer",
    "answered_by",
)

# A handler's side effect ran: keep its result under key $3 so a re-run returns it instead.
_CHECKPOINT = _text_change(
    f"""WITH changed AS (
    UPDATE jobs SET checkpoints = jobs.checkpoints || jsonb_build_object($3::text, $4::jsonb),
        {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid
    RETURNING jobs.*
)""",
    "'checkpoint'",
    "jsonb_build_object('key', $3::text)",
    "job_id",
    "token",
    "key",
    "result",
)

# Input deadlines (run by sweepers): what the question's on_timeout says: fail with code
# input_timeout (the default), cancel, or resume with its default answer.
_INPUT_TIMEOUTS = _text_change(
    f"""WITH due AS (
    SELECT id FROM jobs WHERE status = 'waiting_input' AND input_deadline < now()
    ORDER BY input_deadline LIMIT $1 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET
        status = CASE jobs.prompt ->> 'on_timeout' WHEN 'cancel' THEN 'cancelled'
                 WHEN 'default' THEN 'queued' ELSE 'failed' END,
        answers = CASE WHEN jobs.prompt ->> 'on_timeout' = 'default'
                  THEN jobs.answers || jsonb_build_object(jobs.prompt ->> 'key', jsonb_build_object(
                      'answer', jobs.prompt -> 'default', 'answered_by', NULL,
                      'answered_at', now(), 'timed_out', true))
                  ELSE jobs.answers END,
        error = CASE WHEN coalesce(jobs.prompt ->> 'on_timeout', 'fail') = 'fail'
                THEN jsonb_build_object('code', 'input_timeout', 'message',
                    'no answer to question ' || (jobs.prompt ->> 'key') || ' before its deadline')
                ELSE jobs.error END,
        finished_at = CASE WHEN jobs.prompt ->> 'on_timeout' = 'default' THEN NULL ELSE now() END,
        run_after = now(), prompt = NULL, input_deadline = NULL, {_BUMP}
    FROM due WHERE jobs.id = due.id AND jobs.status = 'waiting_input'
      AND jobs.input_deadline < now()
    RETURNING jobs.*
)""",
    "CASE changed.status WHEN 'queued' THEN 'answered' WHEN 'cancelled' THEN 'cancelled'"
    " ELSE 'failed' END",
    "jsonb_build_object('timed_out', true, 'error', changed.error)",
    "limit",
)

# --- retention ---------------------------------------------------------------------------------

_NOT_PINNED_FINISHED = "finished_at IS NOT NULL AND NOT pinned"
# the jobs of one policy group: kinds $2 (NULL: any) minus kinds $3 (those with their own policy)
_IN_GROUP = (
    "($2::text[] IS NULL OR kind = ANY($2::text[])) AND kind <> ALL(coalesce($3::text[], '{}'))"
)

# Clear the input of jobs finished more than $1 s ago (the job itself is kept).
_CLEAR_PAYLOADS = _text_change(
    f"""WITH due AS (
    SELECT id FROM jobs WHERE {_NOT_PINNED_FINISHED} AND payload IS NOT NULL
      AND finished_at < now() - make_interval(secs => $1::float8) AND {_IN_GROUP}
    ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET payload = NULL, {_BUMP} FROM due WHERE jobs.id = due.id
      AND jobs.finished_at IS NOT NULL AND NOT jobs.pinned
    RETURNING jobs.*
)""",
    "'payload_cleared'",
    "'{}'::jsonb",
    "ttl",
    "kinds",
    "other_kinds",
    "limit",
)
# Jobs finished more than $1 s ago, oldest first, except those whose hooks failed ($4).
_DUE_FOR_EXPIRY = _raw(
    f"""SELECT * FROM jobs WHERE {_NOT_PINNED_FINISHED}
  AND finished_at < now() - make_interval(secs => $1::float8) AND {_IN_GROUP}
  AND id <> ALL(coalesce($4::uuid[], '{{}}'))
ORDER BY finished_at LIMIT $5""",
    "ttl",
    "kinds",
    "other_kinds",
    "skip",
    "limit",
)
# Delete jobs and keep a tombstone of each; replicas are told, as a change to status "expired", so
# they drop cached copies. Their events go in a second statement of the same transaction
# (_EXPIRED_EVENTS), whose fresh snapshot also sees an event committed while the delete waited.
_EXPIRED = f"""WITH gone AS (
    DELETE FROM jobs WHERE id = ANY($1::uuid[]) AND {_NOT_PINNED_FINISHED}
    RETURNING id, tenant, kind, idempotency_key, version
), kept AS (
    INSERT INTO job_tombstones (job_id, tenant, kind, idempotency_key)
    SELECT id, tenant, kind, idempotency_key FROM gone ON CONFLICT (job_id) DO NOTHING
), changed AS (
    SELECT id, {EXPIRED_VERSION} AS version, tenant, 'expired' AS status FROM gone
)
SELECT changed.* FROM changed"""
_EXPIRE = _raw(_EXPIRED, "ids")
_EXPIRED_EVENTS = _raw("DELETE FROM job_events WHERE job_id = ANY($1::uuid[])", "ids")
_PURGE_TOMBSTONES = _raw(
    """DELETE FROM job_tombstones WHERE job_id IN (
    SELECT job_id FROM job_tombstones
    WHERE expired_at < now() - make_interval(secs => $1::float8)
    ORDER BY expired_at LIMIT $2
) RETURNING job_id""",
    "ttl",
    "limit",
)
_TOMBSTONE = _raw(
    "SELECT expired_at FROM job_tombstones WHERE job_id = $1 AND tenant = $2", "job_id", "tenant"
)
_TOMBSTONE_BY_KEY = _raw(
    "SELECT job_id, expired_at FROM job_tombstones WHERE tenant = $1 AND idempotency_key = $2",
    "tenant",
    "idempotency_key",
)
_PIN = {
    pinned: _with_event(
        _update({"pinned": sa.literal(pinned)}, jobs.c.pinned != sa.literal(pinned)),
        "pinned" if pinned else "unpinned",
    )
    for pinned in (True, False)
}
# one sweeper at a time, whoever it is: a session lock, so it dies with a crashed holder
_SWEEP_LOCK = "SELECT pg_try_advisory_lock(hashtextextended('jobkeeper.sweeper', 0))"
_SWEEP_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended('jobkeeper.sweeper', 0))"

# Jobs per live status; each count's predicate matches a partial index, so it costs the queue's
# size, not the table's.
_QUEUE_DEPTH = _raw(
    """SELECT (SELECT count(*) FROM jobs WHERE status = 'queued') AS queued,
       (SELECT count(*) FROM jobs WHERE status = 'running') AS running,
       (SELECT count(*) FROM jobs WHERE status = 'waiting_input') AS waiting_input"""
)

_QUEUED_FOR = _raw("SELECT count(*) FROM jobs WHERE tenant = $1 AND status = 'queued'", "tenant")

_CREATE_KEY = _raw(
    "INSERT INTO api_keys (id, tenant, key_hash, prefix, label) VALUES ($1, $2, $3, $4, $5)",
    "id",
    "tenant",
    "key_hash",
    "prefix",
    "label",
)
_KEY_TENANT = _raw(
    "SELECT tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", "key_hash"
)
_REVOKE_KEY = _raw(
    "UPDATE api_keys SET revoked_at = now() WHERE prefix = $1 AND revoked_at IS NULL RETURNING id",
    "prefix",
)
_LIST_KEYS = _raw(
    "SELECT id, tenant, prefix, label, created_at, revoked_at FROM api_keys"
    " WHERE $1::text IS NULL OR tenant = $1 ORDER BY created_at",
    "tenant",
)

_REGISTER_WORKER = _raw(
    "INSERT INTO workers (id, host, pid, kinds, concurrency) VALUES ($1, $2, $3, $4, $5)",
    "id",
    "host",
    "pid",
    "kinds",
    "concurrency",
)
_WORKER_BEAT = _raw("UPDATE workers SET heartbeat_at = now() WHERE id = $1", "id")
_UNREGISTER_WORKER = _raw("DELETE FROM workers WHERE id = $1", "id")
# workers silent for longer than $1 s are gone (their jobs are recovered through lease expiry)
_PRUNE_WORKERS = _raw(
    "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1::float8)",
    "seconds",
)
_QUEUE_LOCK = _raw(
    "SELECT pg_advisory_xact_lock(hashtextextended('jobkeeper.queue:' || $1, 0))", "tenant"
)
_LIVE_WORKERS = _raw(
    "SELECT id, host, pid, kinds, concurrency, started_at, heartbeat_at FROM workers"
    " WHERE heartbeat_at >= now() - make_interval(secs => $1::float8) ORDER BY started_at",
    "seconds",
)


@functools.cache
def _list_sql(by_status: bool, by_kind: bool, after_cursor: bool) -> _Sql:
    """Newest first over ix_jobs_status_tenant_id: one status is one index range; every status is
    a merge of one range per status (each stops after ``limit`` rows), so no second index on
    ``(tenant, id)`` has to be kept up to date by every change."""
    limit = _p("limit", sa.Integer())

    def newest(status: sa.ColumnElement[Any]) -> sa.Select[Any]:
        query = sa.select(jobs).where(
            jobs.c.tenant == _p("tenant", sa.Text()), jobs.c.status == status
        )
        if by_kind:
            query = query.where(jobs.c.kind == _p("kind", sa.Text()))
        if after_cursor:
            query = query.where(jobs.c.id < _p("before", sa.Uuid()))
        return query.order_by(jobs.c.id.desc()).limit(limit)

    if by_status:
        return _compile(newest(_p("status", sa.Text())))
    merged = sa.union_all(*(newest(s) for s in _statuses(list(JobStatus)))).subquery("merged")
    return _compile(sa.select(merged).order_by(merged.c.id.desc()).limit(limit))


async def _set_codecs(conn: asyncpg.Connection) -> None:
    """JSON columns arrive as frozen values (``_loads``); JSON parameters are sent as text."""
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_as_text, decoder=_loads, format="text"
        )


def _as_text(value: str) -> str:
    return value


async def _keep_as_is(conn: asyncpg.Connection) -> None:
    """Nothing to reset when a connection returns to the pool: statements run in autocommit and
    leave no session state (the sweeper's advisory lock is released before its block ends), so
    asyncpg's default reset (one more round trip per checkout) is skipped."""


_Pooled: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"


def _discard(conn: _Pooled) -> None:
    """Close a pooled connection whose link failed, whatever state asyncpg left it in.

    When the server ends a backend mid-statement, asyncpg sees the connection lost and hands its
    holder back to the pool itself; the proxy is then detached and every method on it, even
    ``terminate()``, raises ``InterfaceError`` ("released back to the pool"). Nothing is left to
    close then, so that error is the sign the job is already done.
    """
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


# a success to record: (job_id, lease token, result as JSON text, last progress report)
Completion: TypeAlias = tuple[UUID, UUID, str, Progress | None]


def _completions(done: Sequence[Completion]) -> dict[str, list[Any]]:
    return {
        "ids": [job_id for job_id, _, _, _ in done],
        "tokens": [token for _, token, _, _ in done],
        "results": [result for _, _, result, _ in done],
        "fractions": [p.fraction if p else None for _, _, _, p in done],
        "messages": [p.message if p else None for _, _, _, p in done],
    }


class JobRepository:
    """Postgres access for jobs: ``JobRepository.create(url)``, then ``close()`` when done.

    Statements are SQLAlchemy Core compiled once at import (or named SQL) and run on an asyncpg
    pool in autocommit, as prepared statements with generic plans. The pool is asyncpg's, not
    SQLAlchemy's: checking a connection out and in cost about 100 µs of CPU through SQLAlchemy's
    async engine against about 40 µs here, more than the statement itself for a submit
    (docs/architecture.md).
    """

    def __init__(
        self, dsn: str, *, pool_size: int = 10, notify: bool = True, connect_timeout: float = 5.0
    ) -> None:
        self._dsn = dsn
        self._notify = notify
        self._connect_timeout = connect_timeout
        self._pool: asyncpg.Pool = asyncpg.create_pool(
            dsn,
            min_size=0,  # connections are opened on demand; no I/O until the first statement
            max_size=pool_size,
            init=_set_codecs,
            reset=_keep_as_is,
            timeout=connect_timeout,
            server_settings={
                "application_name": "jobkeeper",
                # every statement is prepared once per connection and planned once: left to
                # choose, Postgres re-planned the claim on every call (~0.5 ms, more than running
                # it for a small batch). tests/test_query_plans.py checks each generic plan.
                "plan_cache_mode": "force_generic_plan",
            },
        )
        self._pool_ready = False
        self._pool_lock = asyncio.Lock()
        # committed changes whose notification is not sent yet: (id, version, tenant, status)
        self._unannounced: list[tuple[UUID, int, str]] = []
        self._unannounced_work: list[tuple[UUID, int, str]] = []  # also for WORK_CHANNEL
        self._announcing = asyncio.Event()
        self._announcer: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def create(
        cls, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0, notify: bool = True
    ) -> JobRepository:
        """Build the pool (no I/O yet). ``url`` may be ``postgresql://`` or ``+asyncpg``.

        ``notify=False`` leaves ``pg_notify`` out of every write (poll mode).
        """
        return cls(
            asyncpg_dsn(url), pool_size=pool_size, notify=notify, connect_timeout=connect_timeout
        )

    async def close(self) -> None:
        """Send the notifications still queued, then close every pooled connection (waiting
        briefly for those in use)."""
        self._closing = True
        if self._announcer is not None:
            self._announcing.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._announcer), self._connect_timeout)
            self._announcer.cancel()
            self._announcer = None
        if self._pool_ready:
            await self._send_announcements()  # what queued while the last batch was sent
        if not self._pool_ready:
            return
        try:
            await asyncio.wait_for(self._pool.close(), self._connect_timeout)
        except TimeoutError:
            self._pool.terminate()

    # --- execution ---------------------------------------------------------------------------

    async def _acquire(self) -> _Pooled:
        if not self._pool_ready:
            async with self._pool_lock:
                if not self._pool_ready:
                    await self._pool
                    self._pool_ready = True
        return await self._pool.acquire(timeout=self._connect_timeout)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Pooled]:
        """A pooled asyncpg connection in autocommit, for the block (also for ad-hoc SQL).

        A failure of the connection itself becomes ``DatabaseUnavailable``; the connection is
        dropped and every other pooled one is replaced when next used: after a database restart
        every pooled connection is dead, not just this one.
        """
        try:
            conn = await self._acquire()
        except _LINK_ERRORS as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        except asyncpg.PostgresError as exc:  # refused by the server: authentication, no database
            raise DatabaseUnavailable(f"database connection failed: {exc}") from exc
        try:
            yield conn
        except _LINK_ERRORS as exc:
            _discard(conn)
            await self._pool.expire_connections()
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc
        finally:
            await self._pool.release(conn)

    async def _rows(self, sql: _Sql, params: Mapping[str, Any], *, read: bool) -> list[Any]:
        """Run one statement. A read that hit a dead pooled connection is tried once more."""
        for attempt in (1, 2):
            try:
                async with self.connection() as conn:
                    return list(await conn.fetch(sql.text, *sql.args(params)))
            except DatabaseUnavailable:
                if not read or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _one(self, sql: _Sql, params: Mapping[str, Any], *, read: bool) -> Job | None:
        rows = await self._rows(sql, params, read=read)
        return _to_job(rows[0]) if rows else None

    async def _write(self, sql: _Sql, params: Mapping[str, Any]) -> list[Any]:
        """Run one change and announce what it changed (each row: id, version, tenant, status)."""
        async with self.connection() as conn:
            rows = list(await conn.fetch(sql.text, *sql.args(params)))
        self._announce(rows)
        return rows

    async def _write_one(self, sql: _Sql, params: Mapping[str, Any]) -> Job | None:
        rows = await self._write(sql, params)
        return _to_job(rows[0]) if rows else None

    def _announce(self, rows: Sequence[Any]) -> None:
        """Queue the notification of committed changes (see the module docstring); the announcer
        task sends what queued up meanwhile in one statement, off the writer's path."""
        if not rows or not self._notify:
            return
        self._unannounced.extend((r["id"], r["version"], r["status"]) for r in rows)
        self._unannounced_work.extend(
            (r["id"], r["version"], r["status"])
            for r in rows
            if r["status"] == "queued" or (r["status"] == "running" and r.get("cancel_requested"))
        )
        if self._announcer is None or self._announcer.done():
            self._announcer = asyncio.create_task(self._announce_loop(), name="jobkeeper-announce")
        self._announcing.set()

    async def _announce_loop(self) -> None:
        while not self._closing:
            await self._announcing.wait()
            self._announcing.clear()
            await self._send_announcements()

    async def _send_announcements(self) -> None:
        """Send every queued notification. A failure is only logged: the changes are committed,
        and every feed's catch-up finds them without the notice."""
        batch, self._unannounced = self._unannounced, []
        work, self._unannounced_work = self._unannounced_work, []
        if not batch:
            return
        try:
            async with self.connection() as conn:
                await conn.execute(
                    _ANNOUNCE,
                    _notification_payloads(batch),
                    _notification_payloads(work) if work else [],
                )
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning(
                "%d change notifications not sent (%s); listeners catch up", len(batch), exc
            )

    # --- reads -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless Postgres answers, ``SchemaMissing`` unless the
        schema (as of the newest table) is there."""
        async with self.connection() as conn:
            present = await conn.fetchval(_SCHEMA_PRESENT)
        if not present:
            raise SchemaMissing()

    async def get(self, job_id: UUID, tenant: str) -> Job | None:
        """The committed job, or ``None`` if it does not exist for this tenant."""
        return await self._one(_GET, {"job_id": job_id, "tenant": tenant}, read=True)

    async def list_jobs(
        self,
        tenant: str,
        *,
        status: JobStatus | None,
        kind: str | None,
        limit: int,
        before: UUID | None,
    ) -> list[Job]:
        """Up to ``limit`` jobs, newest first, with ids below ``before`` (keyset pagination)."""
        sql = _list_sql(status is not None, kind is not None, before is not None)
        params = {
            "tenant": tenant,
            "status": None if status is None else status.value,
            "kind": kind,
            "before": before,
            "limit": limit,
        }
        return [_to_job(r) for r in await self._rows(sql, params, read=True)]

    async def find_by_idempotency_key(self, tenant: str, key: str) -> tuple[Job, str | None] | None:
        """The job submitted with this key, with the fingerprint of the request that created it."""
        rows = await self._rows(_BY_KEY, {"tenant": tenant, "idempotency_key": key}, read=True)
        return (_to_job(rows[0]), rows[0]["request_fingerprint"]) if rows else None

    async def events(self, job_id: UUID, tenant: str, *, after: int = 0) -> list[JobEvent]:
        """The job's history after sequence ``after``, oldest first (empty for a foreign job)."""
        params = {"job_id": job_id, "tenant": tenant, "after": after}
        rows = await self._rows(_EVENTS, params, read=True)
        return [JobEvent(seq=r["seq"], type=r["type"], data=r["data"], at=r["at"]) for r in rows]

    # --- writes ------------------------------------------------------------------------------

    async def insert(
        self,
        new: NewJob,
        *,
        max_queued: int | None = None,
        max_queued_per_kind: int | None = None,
    ) -> Job | None:
        """Insert a job and its ``submitted`` event; ``None`` if its idempotency key already exists
        or (with limits) the tenant's queue, or the kind's, is full.

        ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key to commit, so the
        caller's follow-up read (a new statement, a new snapshot) always finds the winner. With a
        limit, a per-tenant advisory lock serialises admissions so the count is exact.
        """
        params = {
            "id": uuid7(),
            "tenant": new.tenant,
            "kind": new.kind,
            "payload": new.payload_json,
            "priority": new.priority,
            "max_attempts": new.max_attempts,
            "run_after": new.run_after,
            "idempotency_key": new.idempotency_key,
            "request_fingerprint": new.fingerprint,
            "concurrency_key": new.concurrency_key,
            "pinned": new.pinned,
            "event_data": json.dumps({"kind": new.kind}),
            "max_queued": max_queued,
            "max_queued_per_kind": max_queued_per_kind,
        }
        if max_queued is None and max_queued_per_kind is None:
            return await self._write_one(_INSERT, params)
        async with self.connection() as conn, conn.transaction():
            await conn.execute(_QUEUE_LOCK.text, new.tenant)
            rows = await conn.fetch(_INSERT_LIMITED.text, *_INSERT_LIMITED.args(params))
        self._announce(rows)
        return _to_job(rows[0]) if rows else None

    async def transition(
        self,
        job_id: UUID,
        tenant: str,
        target: JobStatus,
        *,
        event: str,
        data: Mapping[str, Any] | None = None,
        lease_seconds: float = 300.0,
    ) -> Job:
        """Move a job to ``target`` if the transition table allows it from its current status.

        The allowed sources come from ``domain.status.TRANSITIONS``; the check and the write are one
        statement, so a concurrent change can never be overwritten. Raises ``JobNotFound``,
        ``JobFinished`` (already terminal) or ``InvalidTransition``.
        """
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "event_type": event,
            "event_data": json.dumps({"status": target.value, **(data or {})}),
            "lease_seconds": lease_seconds,
        }
        job = await self._write_one(_transition_sql(target), params)
        if job is None:
            await self._raise_refusal(job_id, tenant, target.value)
        assert job is not None
        return job

    async def progress(
        self, job_id: UUID, tenant: str, progress: Progress, *, token: UUID | None = None
    ) -> Job | None:
        """Record a running job's progress (a new version and a ``progress`` event).

        With the lease ``token`` (a worker's write) a lost lease returns ``None``; without it, a
        job that is not running raises ``InvalidTransition``/``JobFinished``/``JobNotFound``.
        """
        data = {"fraction": progress.fraction, "message": progress.message}
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "token": token,
            "fraction": progress.fraction,
            "message": progress.message,
            "event_data": json.dumps(data),
        }
        sql = _PROGRESS if token is None else _PROGRESS_FENCED
        job = await self._write_one(sql, params)
        if job is None and token is None:
            await self._raise_refusal(job_id, tenant, "progress")
        return job

    # --- workers -----------------------------------------------------------------------------

    async def claim(
        self, worker_id: UUID, *, kinds: Sequence[str] | None, limit: int, lease_seconds: float
    ) -> list[Lease]:
        """Claim up to ``limit`` runnable jobs, highest priority first, each with a new lease."""
        params = {
            "worker_id": worker_id,
            "kinds": None if kinds is None else list(kinds),
            "limit": limit,
            "lease_seconds": lease_seconds,
        }
        for attempt in (1, 2, 3):
            try:
                rows = await self._write(_CLAIM, params)
            except asyncpg.UniqueViolationError:
                # two batches took jobs of one concurrency key at the same moment; the index
                # refused the second, which claimed nothing: try again
                if attempt == 3:
                    return []
                continue
            return [Lease(_to_job(r), r["lease_token"]) for r in rows]
        raise AssertionError("unreachable")

    async def heartbeat(
        self, leases: Sequence[tuple[UUID, UUID]], lease_seconds: float
    ) -> dict[UUID, bool]:
        """Extend the leases still held; returns ``{job_id: cancel_requested}`` for those."""
        if not leases:
            return {}
        params = {
            "ids": [job_id for job_id, _ in leases],
            "tokens": [token for _, token in leases],
            "lease_seconds": lease_seconds,
        }
        rows = await self._rows(_HEARTBEAT, params, read=False)
        return {r["id"]: r["cancel_requested"] for r in rows}

    async def complete(self, done: Sequence[Completion]) -> list[Job]:
        """Mark jobs succeeded, given ``(job_id, token, result_json, last_progress)``; lost
        leases are skipped. Returns the new rows."""
        rows = await self._write(_COMPLETE, _completions(done))
        return [_to_job(r) for r in rows]

    async def complete_ids(self, done: Sequence[Completion]) -> list[UUID]:
        """``complete``, returning only the ids of the jobs it marked succeeded."""
        rows = await self._write(_COMPLETE_IDS, _completions(done))
        return [r["id"] for r in rows]

    async def fail(
        self,
        job_id: UUID,
        token: UUID,
        *,
        error: Mapping[str, Any],
        retryable: bool,
        delay: float | None,
        backoff_base: float,
        backoff_max: float,
    ) -> Job | None:
        """Record a failure: re-queued with backoff while retryable and attempts remain, else
        failed (or cancelled, if that was requested). ``None``: the lease was lost."""
        params = {
            "job_id": job_id,
            "token": token,
            "error": json.dumps(error),
            "retryable": retryable,
            "delay": delay,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
        }
        return await self._write_one(_FAIL, params)

    async def mark_cancelled(self, job_id: UUID, token: UUID) -> Job | None:
        """The handler stopped on a cancel request. ``None``: the lease was lost."""
        params = {"job_id": job_id, "token": token}
        return await self._write_one(_CANCELLED, params)

    async def release(self, leases: Sequence[tuple[UUID, UUID]]) -> list[Job]:
        """Give leases back (graceful shutdown): the jobs are queued again, attempt not counted."""
        if not leases:
            return []
        params = {"ids": [i for i, _ in leases], "tokens": [t for _, t in leases]}
        return [_to_job(r) for r in await self._write(_RELEASE, params)]

    async def recover_expired(
        self, *, limit: int, backoff_base: float, backoff_max: float
    ) -> list[Job]:
        """Re-queue (or fail with ``lease_expired``) up to ``limit`` jobs whose lease expired."""
        params = {"limit": limit, "backoff_base": backoff_base, "backoff_max": backoff_max}
        return [_to_job(r) for r in await self._write(_RECOVER, params)]

    async def ask(
        self, job_id: UUID, token: UUID, prompt_json: str, answer_within: float | None
    ) -> Job | None:
        """Park a running job until a person answers; ``None``: lease lost or cancel requested."""
        params = {"job_id": job_id, "token": token, "prompt": prompt_json, "timeout": answer_within}
        return await self._write_one(_ASK, params)

    async def answer(
        self, job_id: UUID, tenant: str, key: str, answer_json: str, answered_by: str | None
    ) -> Job | None:
        """Answer the open question ``key``; ``None`` if the job is not waiting for it."""
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "key": key,
            "answer": answer_json,
            "answered_by": answered_by,
        }
        return await self._write_one(_ANSWER, params)

    async def checkpoint(self, job_id: UUID, token: UUID, key: str, result_json: str) -> Job | None:
        """Keep a side effect's result; ``None``: the lease was lost."""
        params = {"job_id": job_id, "token": token, "key": key, "result": result_json}
        return await self._write_one(_CHECKPOINT, params)

    async def expire_input_deadlines(self, *, limit: int) -> list[Job]:
        """Apply ``on_timeout`` to up to ``limit`` jobs whose question's deadline passed."""
        rows = await self._write(_INPUT_TIMEOUTS, {"limit": limit})
        return [_to_job(r) for r in rows]

    # --- retention ---------------------------------------------------------------------------

    async def missing(self, job_id: UUID, tenant: str) -> JobNotFound | JobExpired:
        """The error for a job that is not there: expired (a tombstone lives) or never existed."""
        rows = await self._rows(_TOMBSTONE, {"job_id": job_id, "tenant": tenant}, read=True)
        return JobExpired(job_id, rows[0]["expired_at"]) if rows else JobNotFound(job_id)

    async def expired_key(self, tenant: str, key: str) -> JobExpired | None:
        """``JobExpired`` if this idempotency key belonged to a job that expired."""
        params = {"tenant": tenant, "idempotency_key": key}
        rows = await self._rows(_TOMBSTONE_BY_KEY, params, read=True)
        return JobExpired(rows[0]["job_id"], rows[0]["expired_at"]) if rows else None

    async def set_pinned(self, job_id: UUID, tenant: str, pinned: bool) -> Job | None:
        """Pin (exempt from retention) or unpin; ``None`` if it already was."""
        params = {"job_id": job_id, "tenant": tenant, "event_data": "{}"}
        return await self._write_one(_PIN[pinned], params)

    async def clear_payloads(
        self, *, ttl: float, kinds: Sequence[str] | None, other_kinds: Sequence[str], limit: int
    ) -> list[Job]:
        params = {
            "ttl": ttl,
            "kinds": None if kinds is None else list(kinds),
            "other_kinds": list(other_kinds),
            "limit": limit,
        }
        rows = await self._write(_CLEAR_PAYLOADS, params)
        return [_to_job(r) for r in rows]

    async def due_for_expiry(
        self,
        *,
        ttl: float,
        kinds: Sequence[str] | None,
        other_kinds: Sequence[str],
        skip: Sequence[UUID],
        limit: int,
    ) -> list[Job]:
        params = {
            "ttl": ttl,
            "kinds": None if kinds is None else list(kinds),
            "other_kinds": list(other_kinds),
            "skip": list(skip),
            "limit": limit,
        }
        return [_to_job(r) for r in await self._rows(_DUE_FOR_EXPIRY, params, read=True)]

    async def expire(self, job_ids: Sequence[UUID]) -> list[UUID]:
        """Delete these finished, unpinned jobs and keep tombstones; returns those deleted."""
        if not job_ids:
            return []
        async with self.connection() as conn, conn.transaction():
            rows = await conn.fetch(_EXPIRE.text, list(job_ids))
            gone = [r["id"] for r in rows]
            await conn.execute(_EXPIRED_EVENTS.text, gone)
        self._announce(rows)
        return gone

    async def purge_tombstones(self, *, ttl: float, limit: int) -> int:
        rows = await self._rows(_PURGE_TOMBSTONES, {"ttl": ttl, "limit": limit}, read=False)
        return len(rows)

    @asynccontextmanager
    async def sweep_lock(self) -> AsyncIterator[bool]:
        """Hold the sweeper lock for the block if no other process does; yields whether held."""
        async with self.connection() as conn:
            held = bool(await conn.fetchval(_SWEEP_LOCK))
            try:
                yield held
            finally:
                if held:
                    await conn.fetchval(_SWEEP_UNLOCK)

    async def queued_for(self, tenant: str) -> int:
        """How many of the tenant's jobs are queued."""
        rows = await self._rows(_QUEUED_FOR, {"tenant": tenant}, read=True)
        return int(rows[0][0])

    async def catch_up(self, cursor: int, limit: int) -> CatchUp:
        """Changes of transactions at or after ``cursor``; at most ``limit`` jobs. Runs on a
        pooled connection, so the feed's LISTEN connection never waits behind it."""
        rows = await self._rows(_CATCH_UP_SQL, {"cursor": cursor, "limit": limit + 1}, read=True)
        row = rows[0]
        changes = list(zip(row["ids"], row["versions"], strict=True))
        return CatchUp(
            changes=changes[:limit], cursor=row["horizon"], truncated=len(changes) > limit
        )

    async def queue_depth(self) -> dict[str, int]:
        """How many jobs are queued, running and waiting for input (all tenants)."""
        rows = await self._rows(_QUEUE_DEPTH, {}, read=True)
        return dict(rows[0])

    async def create_api_key(
        self, key_id: UUID, *, tenant: str, key_hash: str, prefix: str, label: str | None
    ) -> None:
        params = {
            "id": key_id,
            "tenant": tenant,
            "key_hash": key_hash,
            "prefix": prefix,
            "label": label,
        }
        await self._rows(_CREATE_KEY, params, read=False)

    async def tenant_for_key(self, key_hash: str) -> str | None:
        """The tenant of a live (not revoked) key, by the key's hash."""
        rows = await self._rows(_KEY_TENANT, {"key_hash": key_hash}, read=True)
        return rows[0]["tenant"] if rows else None

    async def revoke_api_key(self, prefix: str) -> bool:
        """Revoke the live key with this prefix; ``False`` if there is none."""
        return bool(await self._rows(_REVOKE_KEY, {"prefix": prefix}, read=False))

    async def list_api_keys(self, tenant: str | None) -> list[dict[str, Any]]:
        rows = await self._rows(_LIST_KEYS, {"tenant": tenant}, read=True)
        return [dict(r) for r in rows]

    async def register_worker(
        self, worker_id: UUID, *, host: str, pid: int, kinds: Sequence[str] | None, concurrency: int
    ) -> None:
        params = {
            "id": worker_id,
            "host": host,
            "pid": pid,
            "kinds": None if kinds is None else list(kinds),
            "concurrency": concurrency,
        }
        await self._rows(_REGISTER_WORKER, params, read=False)

    async def worker_heartbeat(self, worker_id: UUID) -> None:
        await self._rows(_WORKER_BEAT, {"id": worker_id}, read=False)

    async def unregister_worker(self, worker_id: UUID) -> None:
        await self._rows(_UNREGISTER_WORKER, {"id": worker_id}, read=False)

    async def prune_workers(self, silent_for: float) -> int:
        """Forget workers that have not heartbeaten for ``silent_for`` seconds."""
        async with self.connection() as conn:
            status = await conn.execute(_PRUNE_WORKERS.text, silent_for)
        return int(status.split()[-1])

    async def live_workers(self, within: float) -> list[WorkerInfo]:
        """Workers that heartbeat within the last ``within`` seconds, oldest first."""
        rows = await self._rows(_LIVE_WORKERS, {"seconds": within}, read=True)
        return [
            WorkerInfo(
                id=r["id"],
                host=r["host"],
                pid=r["pid"],
                kinds=None if r["kinds"] is None else tuple(r["kinds"]),
                concurrency=r["concurrency"],
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
            )
            for r in rows
        ]

    async def cancel(self, job_id: UUID, tenant: str) -> tuple[Job, bool]:
        """Cancel a queued or waiting job at once, or flag a running one for its worker.

        Returns the job and whether this call changed it (a repeated cancel of a running job that
        is already flagged changes nothing). Raises ``JobNotFound`` or ``JobFinished``.
        """
        params = {"job_id": job_id, "tenant": tenant, "event_data": "{}"}
        job = await self._write_one(_CANCEL, params)
        if job is not None:
            return job, True
        current = await self.get(job_id, tenant)
        if current is None:
            raise await self.missing(job_id, tenant)
        if current.terminal:
            raise JobFinished(job_id, current.status.value, JobStatus.CANCELLED.value)
        return current, False

    async def _raise_refusal(self, job_id: UUID, tenant: str, requested: str) -> None:
        """Explain why a conditional write matched no row (read only to build the error)."""
        current = await self.get(job_id, tenant)
        if current is None:
            raise await self.missing(job_id, tenant)
        error = JobFinished if current.terminal else InvalidTransition
        raise error(job_id, current.status.value, requested)

    # --- the change feed ---------------------------------------------------------------------

    async def open_feed(
        self,
        *,
        listen: Callable[[str], None] | None,
        on_lost: Callable[[], None],
        channel: str = CHANNEL,
    ) -> FeedConnection:
        """A dedicated connection (outside the pool) for the change feed.

        ``listen`` receives every payload on ``channel`` (``None``: poll mode, no LISTEN);
        ``on_lost`` is called once if the connection dies.
        """
        try:
            conn = await asyncpg.connect(
                self._dsn,
                timeout=self._connect_timeout,
                server_settings={"application_name": "jobkeeper-feed"},
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"change feed cannot connect: {exc}") from exc
        feed = FeedConnection(conn, timeout=self._connect_timeout)
        conn.add_termination_listener(lambda _: on_lost())
        if listen is not None:
            await conn.add_listener(channel, lambda *args: listen(args[-1]))
        return feed


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a catch-up found: the newest version of each changed job, and the next cursor."""

    changes: list[tuple[UUID, int]]
    cursor: int
    truncated: bool


# One statement, so the horizon and the rows come from the same snapshot. Every transaction with an
# id below the horizon (pg_snapshot_xmin) had finished when the snapshot was taken, so its events
# are visible here; later ones may still be running and are read again next time (re-applying an
# invalidation is harmless). A plain sequence would not do: ids are taken in start order, not
# commit order, so a slow transaction's events could appear behind a cursor that already passed.
# Expiries are found in job_tombstones (the expired job's events are deleted with it).
_CATCH_UP = f"""
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
       coalesce(array_agg(c.job_id), '{{}}') AS ids,
       coalesce(array_agg(c.version), '{{}}') AS versions
FROM (
    SELECT job_id, max(version) AS version FROM (
        SELECT job_id, seq AS version FROM job_events WHERE txid >= $1
        UNION ALL
        SELECT job_id, {EXPIRED_VERSION} FROM job_tombstones WHERE txid >= $1
    ) AS changes GROUP BY job_id LIMIT $2
) AS c
"""
_CATCH_UP_SQL = _raw(_CATCH_UP, "cursor", "limit")
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class FeedConnection:
    """The change feed's own asyncpg connection, kept idle so notifications arrive at once (a
    connection busy with a query holds them back): it only LISTENs and answers health pings."""

    def __init__(self, conn: asyncpg.Connection, *, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def horizon(self) -> int:
        """A cursor from which a catch-up finds every change committed from now on."""
        value = await self._conn.fetchval(_HORIZON, timeout=self._timeout)
        return int(value)

    async def ping(self) -> None:
        """Fail (OSError, TimeoutError, asyncpg errors) unless the connection still answers."""
        await self._conn.fetchval("SELECT 1", timeout=self._timeout)

    def is_closed(self) -> bool:
        return self._conn.is_closed()

    async def close(self) -> None:
        if self._conn.is_closed():
            return
        try:
            await asyncio.wait_for(self._conn.close(), timeout=self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            self._conn.terminate()
