"""Retention's statements: clear old inputs, delete old jobs leaving tombstones, purge old
tombstones, and the advisory lock that lets one sweeper run at a time.

Everything runs in small batches over partial indexes of what is due, so a pass costs what
expired, not the table size.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

from jobkeeper.domain.values import Job
from jobkeeper.postgres.compile import Sql, raw, with_event
from jobkeeper.postgres.notify import EXPIRED_VERSION
from jobkeeper.postgres.pool import Database, to_job

__all__ = ["RetentionStatements"]

_NOT_PINNED_FINISHED = "finished_at IS NOT NULL AND NOT pinned"
# the jobs of one policy group: kinds $2 (NULL: any) minus kinds $3 (those with their own policy)
_IN_GROUP = (
    "($2::text[] IS NULL OR kind = ANY($2::text[])) AND kind <> ALL(coalesce($3::text[], '{}'))"
)


def _cleared(select: str) -> Sql:
    """Clear the input of jobs finished more than $1 s ago (the job itself is kept), returning
    ``select`` of each. Jobs finished more than $5 s ago (NULL: none) are left alone: they are
    due for deletion, and clearing them first, when retention is behind, doubled its work."""
    return with_event(
        raw(
            f"""WITH due AS (
    SELECT id FROM jobs WHERE {_NOT_PINNED_FINISHED} AND payload IS NOT NULL
      AND finished_at < now() - make_interval(secs => $1::float8) AND {_IN_GROUP}
      AND finished_at >= coalesce(now() - make_interval(secs => $5::float8), '-infinity')
    ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET payload = NULL, version = jobs.version + 1, updated_at = now()
    FROM due WHERE jobs.id = due.id AND jobs.finished_at IS NOT NULL AND NOT jobs.pinned
    RETURNING jobs.*
)""",
            "ttl",
            "kinds",
            "other_kinds",
            "limit",
            "job_ttl",
        ),
        "'payload_cleared'",
        "jsonb_build_object()",
        select=select,
    )


_CLEAR_PAYLOADS = _cleared("changed.*")
# The same, returning only what the change feed announces: decoding every cleared row as a
# ``Job`` cost the sweeper more than the statement (bench_churn.py), for a process with no
# observer to hand it to.
_CLEAR_PAYLOADS_IDS = _cleared("changed.id, changed.version, changed.status")
# Jobs finished more than $1 s ago, oldest first, except those whose hooks failed ($4).
_DUE_FOR_EXPIRY = raw(
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


def _deleted(which: str) -> str:
    """The CTEs deleting the jobs ``which`` selects, the tombstones, and the feed's rows."""
    return f"""gone AS (
    DELETE FROM jobs WHERE {which} AND {_NOT_PINNED_FINISHED}
    RETURNING id, tenant, kind, idempotency_key, version
), kept AS (
    INSERT INTO job_tombstones (job_id, tenant, kind, idempotency_key)
    SELECT id, tenant, kind, idempotency_key FROM gone ON CONFLICT (job_id) DO NOTHING
)
SELECT id, {EXPIRED_VERSION} AS version, tenant, 'expired' AS status FROM gone"""


# Delete jobs and keep a tombstone of each; replicas are told, as a change to status "expired", so
# they drop cached copies. Their events go in a second statement of the same transaction
# (_EXPIRED_EVENTS), whose fresh snapshot also sees an event committed while the delete waited
# (a change to the job committed after this statement's snapshot: the delete re-reads the row,
# but a join or an IN over job_events in the same statement would not see its event).
_EXPIRE = raw(f"WITH {_deleted('id = ANY($1::uuid[])')}", "ids")
# Choose and delete in one statement, for jobs whose kind has no on_expire hook to run first and
# a process with no observer to hand them to: no row is read back whole, nor sent to the client
# and back. Locked rows (a change in flight) are skipped, left for the next batch.
_EXPIRE_DUE = raw(
    f"""WITH chosen AS (
    SELECT id FROM jobs WHERE {_NOT_PINNED_FINISHED}
      AND finished_at < now() - make_interval(secs => $1::float8) AND {_IN_GROUP}
    ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED
), {_deleted("id IN (SELECT id FROM chosen)")}""",
    "ttl",
    "kinds",
    "other_kinds",
    "limit",
)
_EXPIRED_EVENTS = raw("DELETE FROM job_events WHERE job_id = ANY($1::uuid[])", "ids")
_PURGE_TOMBSTONES = raw(
    """DELETE FROM job_tombstones WHERE job_id IN (
    SELECT job_id FROM job_tombstones
    WHERE expired_at < now() - make_interval(secs => $1::float8)
    ORDER BY expired_at LIMIT $2
) RETURNING job_id""",
    "ttl",
    "limit",
)
# One sweeper at a time per install ($1: "<schema>.sweeper"), whoever it is: a lock of a
# transaction held open for the pass on a connection of its own, so it ends with a crashed or
# cut-off holder, and holds through a transaction-mode pooler (which keeps a transaction on one
# server connection, but not a session). In the lock's own statement, so no moment passes with
# the lock held and no bound: the lock's transaction ends once idle for $2 (an interval), or
# sooner if the role or database already ends idle transactions sooner (0 means never: ours).
_SWEEP_LOCK = """SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0)) AS held,
  set_config('idle_in_transaction_session_timeout',
    CASE WHEN current_setting('idle_in_transaction_session_timeout')::interval > interval '0'
          AND current_setting('idle_in_transaction_session_timeout')::interval < $2::text::interval
         THEN current_setting('idle_in_transaction_session_timeout') ELSE $2::text END, true)"""


def _group(
    ttl: float, kinds: Sequence[str] | None, other_kinds: Sequence[str], **more: object
) -> dict[str, object]:
    """The parameters of a statement over one policy's jobs (``_IN_GROUP``), and ``more``."""
    kinds_of = None if kinds is None else list(kinds)
    return {"ttl": ttl, "kinds": kinds_of, "other_kinds": list(other_kinds), **more}


class RetentionStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def clear_payloads(
        self,
        *,
        ttl: float,
        kinds: Sequence[str] | None,
        other_kinds: Sequence[str],
        limit: int,
        job_ttl: float | None,
        whole: bool,
    ) -> list[Any]:
        """The jobs whose input was cleared (``whole``), else their ``(id, new version)``."""
        params = _group(ttl, kinds, other_kinds, limit=limit, job_ttl=job_ttl)
        if whole:
            return await self._db.write_jobs(_CLEAR_PAYLOADS, params)
        return [(r["id"], r["version"]) for r in await self._db.write(_CLEAR_PAYLOADS_IDS, params)]

    async def due_for_expiry(
        self,
        *,
        ttl: float,
        kinds: Sequence[str] | None,
        other_kinds: Sequence[str],
        skip: Sequence[UUID],
        limit: int,
    ) -> list[Job]:
        params = _group(ttl, kinds, other_kinds, skip=list(skip), limit=limit)
        return [to_job(r) for r in await self._db.rows(_DUE_FOR_EXPIRY, params, read=True)]

    async def expire(self, job_ids: Sequence[UUID]) -> list[UUID]:
        """Delete these finished, unpinned jobs and keep tombstones; returns those deleted."""
        if not job_ids:
            return []
        return await self._expire(_EXPIRE, {"ids": list(job_ids)})

    async def expire_due(
        self, *, ttl: float, kinds: Sequence[str] | None, other_kinds: Sequence[str], limit: int
    ) -> list[UUID]:
        """Delete up to ``limit`` unpinned jobs finished ``ttl`` seconds ago (of ``kinds``, or of
        any kind but ``other_kinds``), oldest first, keeping tombstones; returns those deleted."""
        return await self._expire(_EXPIRE_DUE, _group(ttl, kinds, other_kinds, limit=limit))

    async def _expire(self, sql: Sql, params: Mapping[str, Any]) -> list[UUID]:
        async with self._db.connection() as conn, conn.transaction():
            rows = await conn.fetch(self._db.text(sql), *sql.args(params))
            gone = [r["id"] for r in rows]
            if gone:
                await conn.execute(self._db.text(_EXPIRED_EVENTS), gone)
        self._db.announce(rows)
        return gone

    async def purge_tombstones(self, *, ttl: float, limit: int) -> int:
        rows = await self._db.rows(_PURGE_TOMBSTONES, {"ttl": ttl, "limit": limit}, read=False)
        return len(rows)

    @asynccontextmanager
    async def sweep_lock(self, *, idle_limit: float) -> AsyncIterator[bool]:
        """Hold the sweeper lock for the block if no other process does; yields whether held.

        The lock belongs to a transaction that sits idle while the pass runs its statements on
        other connections. Were this process stopped mid-pass (SIGSTOP, a partition, a long
        pause), its connection would stay open and no process could sweep, so no lease would be
        recovered, until TCP gave up. Postgres ends the transaction once it has been idle for
        ``idle_limit`` seconds instead (or sooner, where the role or database says so), freeing
        the lock; a pass that outlives the limit then ends in ``DatabaseUnavailable`` at the
        block's exit, and another process may have begun a pass meanwhile (every statement of a
        pass is conditional, so two passes are safe).
        """
        bound = f"{max(1, round(idle_limit * 1000))}ms"
        async with self._db.connection() as conn, conn.transaction():
            held = bool(await conn.fetchval(_SWEEP_LOCK, f"{self._db.schema}.sweeper", bound))
            # The lock statement's portal (extended protocol: it stays open until the next
            # statement or the transaction's end) keeps its snapshot, and with it the server's
            # xmin horizon, for the whole pass: vacuum could remove no row version that died
            # meanwhile, which under churn is every job the pass deletes. A statement in the
            # simple protocol drops that portal; the lock stays.
            await conn.execute("SELECT")
            yield held
