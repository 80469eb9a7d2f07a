"""Statements on jobs that are not a worker's: submit, reads, listings, history, cancel, pins,
queue counts, and what a missing job was. A waiting job's question is questions.py's."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from uuid_utils.compat import uuid7

from jobkeeper.domain.status import TERMINAL, JobStatus, sources_of
from jobkeeper.domain.values import Job, JobEvent, JobLease, NewJob, Progress
from jobkeeper.errors import InvalidTransition, JobExpired, JobFinished, JobNotFound
from jobkeeper.postgres.borrowed import Borrowed, job_of_text_row, json_as_text
from jobkeeper.postgres.compile import (
    NOW,
    THIS_JOB,
    Sql,
    changed_by,
    compile_statement,
    param,
    raw,
    status_literals,
    target,
    update_job,
    with_event,
)
from jobkeeper.postgres.notify import Change, channels, encode
from jobkeeper.postgres.pool import Database, to_job
from jobkeeper.schema import job_events, job_tombstones, jobs

__all__ = ["JobStatements"]

_Q, _R, _W, _C = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING_INPUT, JobStatus.CANCELLED
_WC = JobStatus.WAITING_CHILDREN

_NEW_JOB: dict[str, sa.ColumnElement[Any]] = {
    "id": param("id", sa.Uuid()),
    "tenant": param("tenant", sa.Text()),
    "kind": param("kind", sa.Text()),
    "payload": sa.cast(param("payload", sa.Text()), jobs.c.payload.type),
    "priority": param("priority", sa.Integer()),
    "max_attempts": param("max_attempts", sa.Integer()),
    "run_after": sa.func.coalesce(param("run_after", sa.DateTime(timezone=True)), NOW),
    "idempotency_key": param("idempotency_key", sa.Text()),
    "request_fingerprint": param("request_fingerprint", sa.Text()),
    "concurrency_key": param("concurrency_key", sa.Text()),
    "pinned": param("pinned", sa.Boolean()),
    "parent_id": param("parent_id", sa.Uuid()),
    "trace_context": sa.cast(param("trace_context", sa.Text()), jobs.c.trace_context.type),
}
# the key of an expired job stays refused while its tombstone lives
_KEY_NOT_EXPIRED = ~sa.exists().where(
    job_tombstones.c.tenant == _NEW_JOB["tenant"],
    job_tombstones.c.idempotency_key == _NEW_JOB["idempotency_key"],
)
# the partial unique index uq_jobs_tenant_idempotency_key, as ON CONFLICT names it
_IDEMPOTENCY_KEY = [jobs.c.tenant, jobs.c.idempotency_key]
_HAS_KEY = jobs.c.idempotency_key.is_not(None)
_SUBMITTED = "'submitted'", "jsonb_build_object('kind', changed.kind)"


def _insert(*conditions: sa.ColumnElement[bool], select: str = "changed.*") -> Sql:
    return with_event(
        changed_by(
            insert(jobs)
            .from_select(list(_NEW_JOB), sa.select(*_NEW_JOB.values()).where(*conditions))
            .on_conflict_do_nothing(index_elements=_IDEMPOTENCY_KEY, index_where=_HAS_KEY)
            .returning(*jobs.c)
        ),
        *_SUBMITTED,
        select=select,
    )


def _queued(*conditions: sa.ColumnElement[bool]) -> sa.ScalarSelect[int]:
    return (
        sa.select(sa.func.count())
        .select_from(jobs)
        .where(jobs.c.status == sa.literal_column(f"'{_Q.value}'"), *conditions)
        .scalar_subquery()
    )


def _under(limit: sa.BindParameter[Any], count: sa.ScalarSelect[int]) -> sa.ColumnElement[bool]:
    # CASE, not OR: the count runs only when that limit is set
    return sa.case((limit.is_(None), sa.true()), else_=count < limit)


_INSERT = _insert(_KEY_NOT_EXPIRED)
# The same insert, admitted only while the tenant's queue (and the kind's) is under its limit.
# Run after _QUEUE_LOCK in one transaction: the lock serialises submits of one tenant, and this
# statement's snapshot, taken after the lock, counts every job admitted before it.
_LIMITS = (
    _KEY_NOT_EXPIRED,
    _under(param("max_queued", sa.Integer()), _queued(jobs.c.tenant == _NEW_JOB["tenant"])),
    _under(
        param("max_queued_per_kind", sa.Integer()),
        _queued(jobs.c.tenant == _NEW_JOB["tenant"], jobs.c.kind == _NEW_JOB["kind"]),
    ),
)
_INSERT_LIMITED = _insert(*_LIMITS)
# on the caller's connection (borrowed.py): JSON read back as text, whatever its codecs
_INSERT_BORROWED = _insert(*_LIMITS, select=json_as_text("changed"))
# $1: "<schema>.queue:<tenant>", so installs in two schemas do not wait on each other
_QUEUE_LOCK = raw("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "key")


# what every change that ends a job's wait clears (ck_jobs_question: nothing of it outlives it)
_NO_QUESTION: dict[str, None] = dict.fromkeys(
    ("prompt", "input_deadline", "question_version", "claimed_by", "claim_expires_at")
)


@functools.cache
def _transition_sql(target_status: JobStatus) -> Sql:
    changes: dict[str, Any] = {"status": sa.literal_column(f"'{target_status.value}'")}
    if target_status in TERMINAL:
        changes["finished_at"] = NOW
    if target_status is _R:
        # a lease for whoever moved it (the status/lease CHECK requires one); workers use claim()
        changes["started_at"] = sa.func.coalesce(jobs.c.started_at, NOW)
        changes["lease_token"] = sa.func.gen_random_uuid()
        changes["lease_expires_at"] = NOW + sa.func.make_interval(
            0, 0, 0, 0, 0, 0, param("lease_seconds", sa.Double())
        )
    else:
        changes.update(lease_token=None, lease_expires_at=None, worker_id=None)
    if target_status is _W:
        # a bare question for whoever moved it (the status/prompt CHECK requires one)
        changes["prompt"] = sa.cast(sa.literal_column("""'{"key": "manual"}'"""), JSONB)
        changes["question_version"] = jobs.c.version + 1
    else:
        changes.update(_NO_QUESTION)
    # an empty list of children for whoever parks it (the status/waiting_for CHECK requires one)
    changes["waiting_for"] = (
        sa.cast(sa.literal_column("'{}'"), sa.ARRAY(sa.Uuid())) if target_status is _WC else None
    )
    condition = jobs.c.status.in_(status_literals(sorted(sources_of(target_status))))
    return with_event(
        changed_by(update_job(changes, condition)), "{event_type}", "{event_data}::jsonb"
    )


# progress reported from outside a worker (no lease): a running job only
_PROGRESS = with_event(
    changed_by(
        update_job(
            {
                "progress_fraction": param("fraction", sa.Double()),
                "progress_message": param("message", sa.Text()),
            },
            jobs.c.status == sa.literal_column(f"'{_R.value}'"),
        )
    ),
    "'progress'",
    "{event_data}::jsonb",
)

_AT_ONCE = jobs.c.status.in_(status_literals((_Q, _W, _WC)))
_CANCEL_CHANGES: dict[str, Any] = {
    "status": sa.case((_AT_ONCE, sa.literal_column(target("cancel", _C))), else_=jobs.c.status),
    "finished_at": sa.case((_AT_ONCE, NOW), else_=jobs.c.finished_at),
    "cancel_requested": sa.true(),
    # a running job has no question and waits for no child (CHECKs): this clears a waiting job's
    **_NO_QUESTION,
    "waiting_for": None,
}
_CANCELLABLE = sa.or_(
    _AT_ONCE,
    sa.and_(jobs.c.status == sa.literal_column(target("cancel", _R)), ~jobs.c.cancel_requested),
)
_CANCEL_EVENT = "CASE changed.status WHEN 'cancelled' THEN 'cancelled' ELSE 'cancel_requested' END"
_CANCEL = with_event(
    changed_by(update_job(_CANCEL_CHANGES, _CANCELLABLE)),
    _CANCEL_EVENT,
    "jsonb_build_object('cancelled_by', {cancelled_by}::text)",
)
# The unfinished children of the jobs $1 (of tenant $2), cancelled as their parent was.
_CANCEL_CHILDREN = with_event(
    changed_by(
        sa.update(jobs)
        .where(
            jobs.c.parent_id == sa.any_(param("parents", sa.ARRAY(sa.Uuid()))),
            jobs.c.tenant == param("tenant", sa.Text()),
            _CANCELLABLE,
        )
        .values(version=jobs.c.version + 1, updated_at=NOW, **_CANCEL_CHANGES)
        .returning(*jobs.c)
    ),
    _CANCEL_EVENT,
    "jsonb_build_object('cancelled_by', {cancelled_by}::text, 'parent', changed.parent_id)",
)

_GET = compile_statement(sa.select(jobs).where(*THIS_JOB))
_BY_KEY = compile_statement(
    sa.select(jobs).where(
        jobs.c.tenant == param("tenant", sa.Text()),
        jobs.c.idempotency_key == param("idempotency_key", sa.Text()),
    )
)
_BY_KEY_BORROWED = raw(
    f"SELECT {json_as_text('jobs')} FROM jobs WHERE tenant = $1 AND idempotency_key = $2",
    "tenant",
    "idempotency_key",
)
# a new job's notification, sent inside the caller's transaction: delivered at its commit
_NOTIFY_IN_TRANSACTION = raw(
    "SELECT pg_notify($1, $3), pg_notify($2, $3)", "changes_channel", "work_channel", "payload"
)
_EVENTS = compile_statement(
    sa.select(job_events.c.seq, job_events.c.type, job_events.c.data, job_events.c.at)
    .join(jobs, jobs.c.id == job_events.c.job_id)
    .where(
        job_events.c.job_id == param("job_id", sa.Uuid()),
        jobs.c.tenant == param("tenant", sa.Text()),
    )
    .where(job_events.c.seq > param("after", sa.BigInteger()))
    .order_by(job_events.c.seq)
)


@functools.cache
def _list_sql(by_status: bool, by_kind: bool, after_cursor: bool) -> Sql:
    """Newest first over ix_jobs_status_tenant_id: one status is one index range; every status is
    a merge of one range per status (each stops after ``limit`` rows), so no second index on
    ``(tenant, id)`` has to be kept up to date by every change."""
    limit = param("limit", sa.Integer())

    def newest(status: sa.ColumnElement[Any]) -> sa.Select[Any]:
        query = sa.select(jobs).where(
            jobs.c.tenant == param("tenant", sa.Text()), jobs.c.status == status
        )
        if by_kind:
            query = query.where(jobs.c.kind == param("kind", sa.Text()))
        if after_cursor:
            query = query.where(jobs.c.id < param("before", sa.Uuid()))
        return query.order_by(jobs.c.id.desc()).limit(limit)

    if by_status:
        return compile_statement(newest(param("status", sa.Text())))
    merged = sa.union_all(*(newest(s) for s in status_literals(list(JobStatus)))).subquery("merged")
    return compile_statement(sa.select(merged).order_by(merged.c.id.desc()).limit(limit))


_PIN = {
    pinned: with_event(
        changed_by(update_job({"pinned": sa.literal(pinned)}, jobs.c.pinned != sa.literal(pinned))),
        "'pinned'" if pinned else "'unpinned'",
        "jsonb_build_object()",
    )
    for pinned in (True, False)
}

_QUEUED_FOR = raw("SELECT count(*) FROM jobs WHERE tenant = $1 AND status = 'queued'", "tenant")
# Jobs per live status; each count's predicate matches a partial index, so it costs the queue's
# size, not the table's.
_QUEUE_DEPTH = raw(
    """SELECT (SELECT count(*) FROM jobs WHERE status = 'queued') AS queued,
       (SELECT count(*) FROM jobs WHERE status = 'running') AS running,
       (SELECT count(*) FROM jobs WHERE status = 'waiting_input') AS waiting_input,
       (SELECT count(*) FROM jobs WHERE status = 'waiting_children') AS waiting_children"""
)
# the tenant's live jobs per kind and status (the dashboard's queue by kind): three ranges of the
# (status, tenant, id) index, so it costs the tenant's queue, not its history
_LIVE_COUNTS = raw(
    "SELECT kind, status, count(*) AS n FROM jobs WHERE tenant = $1"
    " AND status IN ('queued', 'running', 'waiting_input') GROUP BY kind, status",
    "tenant",
)
# the tenant's finished jobs per status, each counted up to $2: a range of the (status, tenant,
# id) index each (the ORDER BY is the index's order, so the plan walks it and stops at $2), so a
# history of millions costs at most $2 entries per status
_FINISHED_COUNTS = raw(
    """SELECT s.status, (SELECT count(*) FROM (SELECT 1 FROM jobs
         WHERE jobs.status = s.status AND jobs.tenant = $1 ORDER BY jobs.id LIMIT $2)
         AS capped) AS n
       FROM unnest(ARRAY['succeeded', 'failed', 'cancelled']) AS s(status)""",
    "tenant",
    "cap",
)
# the jobs of these ids, whoever's tenant (a fan-out that filters by tenant itself)
_MANY = raw("SELECT * FROM jobs WHERE id = ANY($1::uuid[])", "ids")
# each job's events after its own sequence number, of every tenant (the watchers' fan-out)
_EVENTS_OF_MANY = raw(
    "SELECT e.job_id, e.seq, e.type, e.data, e.at"
    " FROM unnest($1::uuid[], $2::bigint[]) AS w(job_id, after)"
    " JOIN job_events e ON e.job_id = w.job_id AND e.seq > w.after"
    " ORDER BY e.job_id, e.seq",
    "ids",
    "afters",
)
# who runs these jobs and until when, and a waiting job's answer deadline
_LEASES = raw(
    "SELECT j.id, j.worker_id, j.lease_expires_at, j.input_deadline, w.host, w.pid"
    " FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id"
    " WHERE j.tenant = $1 AND j.id = ANY($2::uuid[])",
    "tenant",
    "ids",
)
_TOMBSTONE = raw(
    "SELECT expired_at FROM job_tombstones WHERE job_id = $1 AND tenant = $2", "job_id", "tenant"
)
_TOMBSTONE_BY_KEY = raw(
    "SELECT job_id, expired_at FROM job_tombstones WHERE tenant = $1 AND idempotency_key = $2",
    "tenant",
    "idempotency_key",
)


class JobStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def get(self, job_id: UUID, tenant: str) -> Job | None:
        """The committed job, or ``None`` if it does not exist for this tenant."""
        return await self._db.job(_GET, {"job_id": job_id, "tenant": tenant})

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
        return [to_job(r) for r in await self._db.rows(sql, params, read=True)]

    async def find_by_idempotency_key(
        self, tenant: str, key: str, *, on: Borrowed | None = None
    ) -> tuple[Job, str | None] | None:
        """The job submitted with this key, with the fingerprint of the request that created it
        (``on`` the caller's connection: as its transaction sees it)."""
        params = {"tenant": tenant, "idempotency_key": key}
        if on is not None:
            found = await on.fetch(self._db.text(_BY_KEY_BORROWED), _BY_KEY_BORROWED.args(params))
            return (job_of_text_row(found[0]), found[0]["request_fingerprint"]) if found else None
        rows = await self._db.rows(_BY_KEY, params, read=True)
        return (to_job(rows[0]), rows[0]["request_fingerprint"]) if rows else None

    async def events(self, job_id: UUID, tenant: str, *, after: int = 0) -> list[JobEvent]:
        """The job's history after sequence ``after``, oldest first (empty for a foreign job)."""
        params = {"job_id": job_id, "tenant": tenant, "after": after}
        rows = await self._db.rows(_EVENTS, params, read=True)
        return [JobEvent(seq=r["seq"], type=r["type"], data=r["data"], at=r["at"]) for r in rows]

    async def insert(
        self,
        new: NewJob,
        *,
        max_queued: int | None = None,
        max_queued_per_kind: int | None = None,
        on: Borrowed | None = None,
        notify: bool = True,
        trace_context: str | None = None,
    ) -> Job | None:
        """Insert a job and its ``submitted`` event; ``None`` if its idempotency key already exists
        or (with limits) the tenant's queue, or the kind's, is full.

        ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key to commit, so the
        caller's follow-up read (a new statement, a new snapshot) always finds the winner. With a
        limit, a per-tenant advisory lock serialises admissions so the count is exact.

        ``on`` the caller's connection, everything runs in the caller's transaction, the queue
        lock (with a limit) is held until it ends, and the job is announced at its commit
        (``notify``: whether this install sends notifications at all). ``trace_context``: the
        submitting span's W3C context as JSON text (``jobkeeper.tracing``), if any.
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
            "parent_id": new.parent_id,
            "trace_context": trace_context,
            "max_queued": max_queued,
            "max_queued_per_kind": max_queued_per_kind,
        }
        lock_key = f"{self._db.schema}.queue:{new.tenant}"
        if on is not None:
            return await self._insert_on(
                on,
                params,
                lock_key,
                limited=max_queued is not None or max_queued_per_kind is not None,
                notify=notify,
            )
        if max_queued is None and max_queued_per_kind is None:
            return await self._db.write_job(_INSERT, params)
        async with self._db.connection() as conn, conn.transaction():
            await conn.execute(_QUEUE_LOCK.text, lock_key)
            rows = await conn.fetch(self._db.text(_INSERT_LIMITED), *_INSERT_LIMITED.args(params))
        self._db.announce(rows)
        return to_job(rows[0]) if rows else None

    async def _insert_on(
        self, on: Borrowed, params: Mapping[str, Any], lock_key: str, *, limited: bool, notify: bool
    ) -> Job | None:
        if limited:
            await on.fetch(_QUEUE_LOCK.text, [lock_key])
        rows = await on.fetch(self._db.text(_INSERT_BORROWED), _INSERT_BORROWED.args(params))
        if not rows:
            return None
        job = job_of_text_row(rows[0])
        if notify:
            changes_channel, work_channel = channels(self._db.schema)
            [payload] = encode([Change(str(job.id), job.version, job.status.value)])
            await on.fetch(_NOTIFY_IN_TRANSACTION.text, [changes_channel, work_channel, payload])
        return job

    async def transition(
        self,
        job_id: UUID,
        tenant: str,
        target_status: JobStatus,
        *,
        event: str,
        data: Mapping[str, Any] | None = None,
        lease_seconds: float = 300.0,
    ) -> Job:
        """Move a job to ``target_status`` along any edge of ``TRANSITIONS`` (for operators and
        tests; workers and the API use the named operations). The check and the write are one
        statement. Raises ``JobNotFound``, ``JobFinished`` (already terminal) or
        ``InvalidTransition``."""
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "event_type": event,
            "event_data": json.dumps({"status": target_status.value, **(data or {})}),
            "lease_seconds": lease_seconds,
        }
        job = await self._db.write_job(_transition_sql(target_status), params)
        if job is None:
            await self.refuse(job_id, tenant, target_status.value)
        assert job is not None
        return job

    async def progress(self, job_id: UUID, tenant: str, progress: Progress) -> Job:
        """Record a running job's progress from outside a worker (a new version and a
        ``progress`` event); a job that is not running raises ``InvalidTransition``,
        ``JobFinished`` or ``JobNotFound``."""
        data = {"fraction": progress.fraction, "message": progress.message}
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "fraction": progress.fraction,
            "message": progress.message,
            "event_data": json.dumps(data),
        }
        job = await self._db.write_job(_PROGRESS, params)
        if job is None:
            await self.refuse(job_id, tenant, "progress")
        assert job is not None
        return job

    async def cancel(
        self, job_id: UUID, tenant: str, cancelled_by: str | None = None
    ) -> tuple[Job, bool]:
        """Cancel a queued or waiting job at once, or flag a running one for its worker; the
        event (``cancelled`` or ``cancel_requested``) records ``cancelled_by``.

        Returns the job and whether this call changed it (a repeated cancel of a running job that
        is already flagged changes nothing). Raises ``JobNotFound`` or ``JobFinished``.
        """
        params = {"job_id": job_id, "tenant": tenant, "cancelled_by": cancelled_by}
        job = await self._db.write_job(_CANCEL, params)
        if job is not None:
            return job, True
        current = await self.get(job_id, tenant)
        if current is None:
            raise await self.missing(job_id, tenant)
        if current.terminal:
            raise JobFinished(job_id, current.status.value, _C.value)
        return current, False

    async def cancel_children(
        self, parents: list[UUID], tenant: str, cancelled_by: str | None
    ) -> list[Job]:
        """Cancel the unfinished children of ``parents`` (flag the running ones); the changed."""
        params = {"parents": parents, "tenant": tenant, "cancelled_by": cancelled_by}
        return await self._db.write_jobs(_CANCEL_CHILDREN, params)

    async def set_pinned(self, job_id: UUID, tenant: str, pinned: bool) -> Job | None:
        """Pin (exempt from retention) or unpin; ``None`` if it already was."""
        return await self._db.write_job(_PIN[pinned], {"job_id": job_id, "tenant": tenant})

    async def queued_for(self, tenant: str, *, on: Borrowed | None = None) -> int:
        """How many of the tenant's jobs are queued (``on`` the caller's connection: as its
        transaction sees it)."""
        if on is not None:
            rows = await on.fetch(self._db.text(_QUEUED_FOR), [tenant])
            return int(rows[0]["count"])
        found = await self._db.rows(_QUEUED_FOR, {"tenant": tenant}, read=True)
        return int(found[0][0])

    async def queue_depth(self) -> dict[str, int]:
        """How many jobs are queued, running and waiting for input (all tenants)."""
        rows = await self._db.rows(_QUEUE_DEPTH, {}, read=True)
        return dict(rows[0])

    async def live_counts(self, tenant: str) -> list[tuple[str, str, int]]:
        """The tenant's queued, running and waiting jobs counted per ``(kind, status)``."""
        rows = await self._db.rows(_LIVE_COUNTS, {"tenant": tenant}, read=True)
        return [(row["kind"], row["status"], int(row["n"])) for row in rows]

    async def finished_counts(self, tenant: str, cap: int) -> list[tuple[str, int]]:
        """The tenant's finished jobs per status, each counted up to ``cap``."""
        rows = await self._db.rows(_FINISHED_COUNTS, {"tenant": tenant, "cap": cap}, read=True)
        return [(row["status"], int(row["n"])) for row in rows]

    async def many(self, ids: list[UUID]) -> list[Job]:
        """The jobs of ``ids`` that exist, of any tenant."""
        return [to_job(row) for row in await self._db.rows(_MANY, {"ids": ids}, read=True)]

    async def events_of_many(self, after: Mapping[UUID, int]) -> dict[UUID, list[JobEvent]]:
        """Each job's events after its sequence number in ``after``, of every tenant, in one
        read: what the watchers of many jobs are fed (``jobkeeper.watchers``)."""
        params = {"ids": list(after), "afters": list(after.values())}
        found: dict[UUID, list[JobEvent]] = {}
        for r in await self._db.rows(_EVENTS_OF_MANY, params, read=True):
            event = JobEvent(seq=r["seq"], type=r["type"], data=r["data"], at=r["at"])
            found.setdefault(r["job_id"], []).append(event)
        return found

    async def leases(self, tenant: str, ids: list[UUID]) -> list[JobLease]:
        """Who holds these jobs of the tenant, until when, and their answer deadlines."""
        rows = await self._db.rows(_LEASES, {"tenant": tenant, "ids": ids}, read=True)
        return [
            JobLease(
                job_id=row["id"],
                worker_id=row["worker_id"],
                worker_host=row["host"],
                worker_pid=row["pid"],
                lease_expires_at=row["lease_expires_at"],
                input_deadline=row["input_deadline"],
            )
            for row in rows
        ]

    async def missing(self, job_id: UUID, tenant: str) -> JobNotFound | JobExpired:
        """The error for a job that is not there: expired (a tombstone lives) or never existed."""
        rows = await self._db.rows(_TOMBSTONE, {"job_id": job_id, "tenant": tenant}, read=True)
        return JobExpired(job_id, rows[0]["expired_at"]) if rows else JobNotFound(job_id)

    async def expired_key(
        self, tenant: str, key: str, *, on: Borrowed | None = None
    ) -> JobExpired | None:
        """``JobExpired`` if this idempotency key belonged to a job that expired."""
        params = {"tenant": tenant, "idempotency_key": key}
        if on is None:
            rows = await self._db.rows(_TOMBSTONE_BY_KEY, params, read=True)
        else:
            text = self._db.text(_TOMBSTONE_BY_KEY)
            rows = await on.fetch(text, _TOMBSTONE_BY_KEY.args(params))
        return JobExpired(rows[0]["job_id"], rows[0]["expired_at"]) if rows else None

    async def refuse(self, job_id: UUID, tenant: str, requested: str) -> None:
        """Explain why a conditional write matched no row (read only to build the error)."""
        current = await self.get(job_id, tenant)
        if current is None:
            raise await self.missing(job_id, tenant)
        error = JobFinished if current.terminal else InvalidTransition
        raise error(job_id, current.status.value, requested)
