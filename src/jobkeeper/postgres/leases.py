"""A worker's statements: claims, heartbeats, and every write fenced by a lease token (progress,
success, failure, cancel, release, questions, checkpoints), plus lease recovery and the fence a
handler puts around its own writes in the application's transaction.

A lease token matches only while its job runs (ck_jobs_lease: a token if and only if running), so
fenced writes match on id and token alone, and batches find their rows by id (= ANY, the primary
key). Naming the status would invite the planner to read the running jobs' index range whole,
which keeps an entry for every run since the last vacuum.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from jobkeeper.domain.status import OPERATIONS, JobStatus
from jobkeeper.domain.values import Job, Lease, Progress
from jobkeeper.postgres.borrowed import Borrowed
from jobkeeper.postgres.compile import Sql, raw, sources, target, with_event
from jobkeeper.postgres.pool import Database, to_job

__all__ = ["CLEAR_LEASE", "Completion", "LeaseStatements", "fenced"]

_Q, _R, _W = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING_INPUT
_S, _F, _C = JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED
# a success to record: (job_id, lease token, result as JSON text, last progress report)
Completion: TypeAlias = tuple[UUID, UUID, str, Progress | None]

_FENCED = ("succeed", "fail", "stop_cancelled", "release", "ask")
for _operation in _FENCED:  # the token is the status condition: it exists only while running
    assert OPERATIONS[_operation].sources == {_R}, _operation

_LEASE = "now() + make_interval(secs => {})"
CLEAR_LEASE = "lease_token = NULL, lease_expires_at = NULL, worker_id = NULL"
_BUMP = "version = jobs.version + 1, updated_at = now()"


def _retry_or_fail(operation: str, *, retryable: str, delay: str, base: str, cap: str) -> str:
    """SET clauses for a run that ended without success: cancelled if that was asked; queued
    again after ``delay`` (NULL: exponential backoff with jitter, base * 2^(attempts-1) capped,
    times 0.5..1) while ``retryable`` and attempts remain; else failed."""
    again = f"NOT jobs.cancel_requested AND {retryable} AND jobs.attempts < jobs.max_attempts"
    backoff = (
        f"least({cap}, {base} * power(2, greatest(jobs.attempts - 1, 0))) * (0.5 + random() * 0.5)"
    )
    return f"""status = CASE WHEN jobs.cancel_requested THEN {target(operation, _C)}
                      WHEN {again} THEN {target(operation, _Q)} ELSE {target(operation, _F)} END,
        run_after = CASE WHEN {again}
                    THEN now() + make_interval(secs => coalesce({delay}, {backoff}))
                    ELSE jobs.run_after END,
        finished_at = CASE WHEN {again} THEN NULL ELSE now() END"""


def fenced(changes: str, *names: str, also: str = "") -> Sql:
    """The write of one job by the worker holding its lease ($1: the id, $2: the token; ``names``
    are $3 on), as the ``changed`` CTE: every single-job fenced statement is this one."""
    return raw(
        f"""WITH changed AS (
    UPDATE jobs SET {changes}, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid{also}
    RETURNING jobs.*
)""",
        "job_id",
        "token",
        *names,
    )


_EVENT_BY_STATUS = (
    "CASE changed.status WHEN 'queued' THEN 'retried' WHEN 'cancelled' THEN 'cancelled'"
    " ELSE 'failed' END"
)
_FAILURE_DATA = "jsonb_build_object('error', changed.error, 'run_after', changed.run_after)"

# Claim up to $3 runnable jobs for worker $1 (kinds $2, NULL = any) with a fresh lease of $4 s.
# SKIP LOCKED lets many workers claim at once without waiting on each other; a job whose
# concurrency key already runs is skipped, at most one job per key is taken per batch, and the
# partial unique index uq_jobs_running_concurrency_key rejects the rare race between two batches.
_CLAIM = with_event(
    raw(
        f"""WITH candidates AS (
    SELECT j.id, j.tenant, j.concurrency_key, j.priority, j.run_after FROM jobs AS j
    WHERE j.status IN ({sources("claim")}) AND j.run_after <= now()
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
    UPDATE jobs SET status = {target("claim", _R)}, attempts = jobs.attempts + 1,
        lease_token = gen_random_uuid(), lease_expires_at = {_LEASE.format("$4::float8")},
        worker_id = $1::uuid, started_at = coalesce(jobs.started_at, now()), {_BUMP}
    WHERE jobs.id = ANY(ARRAY(SELECT id FROM chosen))
    RETURNING jobs.*
)""",
        "worker_id",
        "kinds",
        "limit",
        "lease_seconds",
    ),
    "'claimed'",
    "jsonb_build_object('attempt', changed.attempts, 'worker', changed.worker_id)",
)

# Extend the leases a worker still holds; report which it holds and which were asked to cancel.
# No version bump: a lease is bookkeeping, not a change anyone watches.
_HEARTBEAT = raw(
    f"""UPDATE jobs SET lease_expires_at = {_LEASE.format("$3::float8")}
FROM unnest($1::uuid[], $2::uuid[]) AS held(id, token)
WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = held.id AND jobs.lease_token = held.token
RETURNING jobs.id, jobs.cancel_requested""",
    "ids",
    "tokens",
    "lease_seconds",
)


def _complete(returning: str, select: str) -> Sql:
    return with_event(
        raw(
            f"""WITH done AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::text[])
        AS d(id, token, result, fraction, message)
), changed AS (
    UPDATE jobs SET status = {target("succeed", _S)}, result = done.result::jsonb,
        finished_at = now(),
        progress_fraction = coalesce(done.fraction, jobs.progress_fraction),
        progress_message = coalesce(done.message, jobs.progress_message),
        {CLEAR_LEASE}, {_BUMP}
    FROM done
    WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = done.id AND jobs.lease_token = done.token
    RETURNING {returning}
)""",
            "ids",
            "tokens",
            "results",
            "fractions",
            "messages",
        ),
        "'succeeded'",
        "jsonb_build_object()",
        select=select,
    )


# Record successes in one statement, with any progress report not yet written; a row whose lease
# was lost is simply not updated. _COMPLETE returns the new rows; _COMPLETE_IDS only the ids, for a
# worker that keeps no cache (decoding rows it would throw away is most of its work per job).
_COMPLETE = _complete("jobs.*", "changed.*")
_COMPLETE_IDS = _complete(
    "jobs.id, jobs.version, jobs.tenant, jobs.status, jobs.updated_at, jobs.parent_id",
    "changed.id, changed.version, changed.tenant, changed.status, changed.parent_id",
)

# A handler failed ($3 error): retry after $5 s (NULL: backoff from base $6, cap $7) while $4 says
# retryable and attempts remain, else fail; a job asked to cancel is cancelled instead.
_FAIL = with_event(
    fenced(
        _retry_or_fail(
            "fail", retryable="$4::boolean", delay="$5::float8", base="$6::float8", cap="$7::float8"
        )
        + f", error = $3::jsonb, {CLEAR_LEASE}",
        "error",
        "retryable",
        "delay",
        "backoff_base",
        "backoff_max",
    ),
    _EVENT_BY_STATUS,
    _FAILURE_DATA,
)

# The handler stopped because the job was cancelled.
_CANCELLED = with_event(
    fenced(f"status = {target('stop_cancelled', _C)}, finished_at = now(), {CLEAR_LEASE}"),
    "'cancelled'",
    "jsonb_build_object()",
)

# Graceful shutdown: give leases back; the attempt does not count (a cancel request wins).
_RELEASE = with_event(
    raw(
        f"""WITH given AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[]) AS g(id, token)
), changed AS (
    UPDATE jobs SET
        status = CASE WHEN jobs.cancel_requested THEN {target("release", _C)}
                 ELSE {target("release", _Q)} END,
        finished_at = CASE WHEN jobs.cancel_requested THEN now() END,
        attempts = greatest(jobs.attempts - 1, 0), run_after = now(), {CLEAR_LEASE}, {_BUMP}
    FROM given
    WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = given.id AND jobs.lease_token = given.token
    RETURNING jobs.*
)""",
        "ids",
        "tokens",
    ),
    "CASE changed.status WHEN 'cancelled' THEN 'cancelled' ELSE 'released' END",
    "jsonb_build_object()",
)

# Lease recovery: running jobs whose lease expired (the worker died, hung or was cut off) are
# retried with backoff while attempts remain, else failed with code lease_expired. Any process may
# run it; SKIP LOCKED keeps concurrent sweeps apart.
_RECOVER = with_event(
    raw(
        f"""WITH expired AS (
    SELECT id FROM jobs WHERE status IN ({sources("recover")}) AND lease_expires_at < now()
    ORDER BY lease_expires_at LIMIT $1 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET
        {
            _retry_or_fail(
                "recover", retryable="true", delay="NULL", base="$2::float8", cap="$3::float8"
            )
        },
        error = jsonb_build_object('code', 'lease_expired', 'message',
            'the worker stopped renewing its lease (crashed, killed, hung or cut off)'),
        {CLEAR_LEASE}, {_BUMP}
    FROM expired WHERE jobs.id = expired.id AND jobs.status IN ({sources("recover")})
      AND jobs.lease_expires_at < now()
    RETURNING jobs.*
)""",
        "limit",
        "backoff_base",
        "backoff_max",
    ),
    _EVENT_BY_STATUS,
    _FAILURE_DATA,
)

# A handler asks a person ($3: the prompt as JSON, with its "key"): the job waits for input with a
# deadline in $4 s (NULL: none), the lease is given up so no worker slot is held, and the attempt
# is not counted. The question's version is the job's new one; it is stamped with when it was
# asked. A job asked to cancel does not start waiting.
_ASK = with_event(
    fenced(
        f"status = {target('ask', _W)},"
        " prompt = $3::jsonb || jsonb_build_object('asked_at', now()),"
        " question_version = jobs.version + 1,"
        " input_deadline = now() + make_interval(secs => $4::float8),"
        f" attempts = greatest(jobs.attempts - 1, 0), {CLEAR_LEASE}",
        "prompt",
        "timeout",
        also=" AND NOT jobs.cancel_requested",
    ),
    "'asked'",
    "changed.prompt",
)

# A handler's side effect ran: keep its result under key $3 so a re-run returns it instead.
_CHECKPOINT = with_event(
    fenced(
        "checkpoints = jobs.checkpoints || jsonb_build_object($3::text, $4::jsonb)", "key", "result"
    ),
    "'checkpoint'",
    "jsonb_build_object('key', $3::text)",
)

# Progress written by the worker holding the lease (and only by it).
_PROGRESS = with_event(
    fenced("progress_fraction = $3::float8, progress_message = $4::text", "fraction", "message"),
    "'progress'",
    "jsonb_build_object('fraction', $3::float8, 'message', $4::text)",
)


# The fence around a handler's own writes, run in the APPLICATION's open transaction: the job's
# row is locked FOR SHARE if this lease still holds it by Postgres's clock. clock_timestamp(), not
# now(): now() is when the caller's transaction began, which may be before the lease expired.
# The lock lasts until the caller's transaction ends. Whatever could take the job from this lease
# needs a conflicting lock on the row first: recovery (FOR UPDATE SKIP LOCKED: it skips the row
# and tries again on its next pass), a cancel request, and this worker's own heartbeat, progress,
# checkpoint, question and outcome writes (UPDATEs: they wait). So between this check and the
# caller's commit the lease cannot be superseded, and a business write committed behind the fence
# was made while the lease held: a worker recovered from a pause (SIGSTOP, a long GC, a partition)
# is refused instead of writing after the job's new owner. FOR KEY SHARE would not do: an UPDATE
# of non-key columns, as recovery is, does not wait for it. The cost: those writes (the whole
# heartbeat batch of this worker among them) wait until the caller commits, so the fenced
# transaction must be short, well under the heartbeat interval (a third of the lease).
# A token exists only while the job runs (ck_jobs_lease); the status test says so for the reader.
_HOLD = raw(
    """SELECT jobs.id FROM jobs
WHERE jobs.id = $1::uuid AND jobs.lease_token = $2::uuid AND jobs.status = 'running'
  AND jobs.lease_expires_at > clock_timestamp()
FOR SHARE""",
    "job_id",
    "token",
)


def _completions(done: Sequence[Completion]) -> dict[str, list[Any]]:
    return {
        "ids": [job_id for job_id, _, _, _ in done],
        "tokens": [token for _, token, _, _ in done],
        "results": [result for _, _, result, _ in done],
        "fractions": [p.fraction if p else None for _, _, _, p in done],
        "messages": [p.message if p else None for _, _, _, p in done],
    }


def _held(leases: Sequence[Lease]) -> dict[str, list[UUID]]:
    return {"ids": [lease.job.id for lease in leases], "tokens": [lease.token for lease in leases]}


class LeaseStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

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
                rows = await self._db.write(_CLAIM, params)
            except asyncpg.UniqueViolationError:
                # two batches took jobs of one concurrency key at the same moment; the index
                # refused the second, which claimed nothing: try again
                if attempt == 3:
                    return []
                continue
            return [Lease(to_job(r), r["lease_token"]) for r in rows]
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
        rows = await self._db.rows(_HEARTBEAT, params, read=False)
        return {r["id"]: r["cancel_requested"] for r in rows}

    async def progress(self, lease: Lease, progress: Progress) -> Job | None:
        """Record the holder's progress report; ``None``: the lease was lost."""
        params = {
            "job_id": lease.job.id,
            "token": lease.token,
            "fraction": progress.fraction,
            "message": progress.message,
        }
        return await self._db.write_job(_PROGRESS, params)

    async def complete(self, done: Sequence[Completion]) -> list[Job]:
        """Mark jobs succeeded, given ``(job_id, token, result_json, last_progress)``; lost
        leases are skipped. Returns the new rows."""
        return await self._db.write_jobs(_COMPLETE, _completions(done))

    async def complete_ids(self, done: Sequence[Completion]) -> list[tuple[UUID, UUID | None]]:
        """``complete``, returning only the ids of the jobs it marked succeeded, each with its
        parent's (``None``: no parent)."""
        rows = await self._db.write(_COMPLETE_IDS, _completions(done))
        return [(r["id"], r["parent_id"]) for r in rows]

    async def fail(
        self,
        lease: Lease,
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
            "job_id": lease.job.id,
            "token": lease.token,
            "error": json.dumps(error),
            "retryable": retryable,
            "delay": delay,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
        }
        return await self._db.write_job(_FAIL, params)

    async def mark_cancelled(self, lease: Lease) -> Job | None:
        """The handler stopped on a cancel request. ``None``: the lease was lost."""
        return await self._db.write_job(_CANCELLED, {"job_id": lease.job.id, "token": lease.token})

    async def release(self, leases: Sequence[Lease]) -> list[Job]:
        """Give leases back (graceful shutdown): the jobs are queued again, attempt not counted."""
        if not leases:
            return []
        return await self._db.write_jobs(_RELEASE, _held(leases))

    async def recover_expired(
        self, *, limit: int, backoff_base: float, backoff_max: float
    ) -> list[Job]:
        """Re-queue (or fail with ``lease_expired``) up to ``limit`` jobs whose lease expired."""
        params = {"limit": limit, "backoff_base": backoff_base, "backoff_max": backoff_max}
        return await self._db.write_jobs(_RECOVER, params)

    async def ask(self, lease: Lease, prompt_json: str, answer_within: float | None) -> Job | None:
        """Park a running job until a person answers; ``None``: lease lost or cancel requested."""
        params = {
            "job_id": lease.job.id,
            "token": lease.token,
            "prompt": prompt_json,
            "timeout": answer_within,
        }
        return await self._db.write_job(_ASK, params)

    async def checkpoint(self, lease: Lease, key: str, result_json: str) -> Job | None:
        """Keep a side effect's result; ``None``: the lease was lost."""
        params = {"job_id": lease.job.id, "token": lease.token, "key": key, "result": result_json}
        return await self._db.write_job(_CHECKPOINT, params)

    async def hold(self, lease: Lease, on: Borrowed) -> bool:
        """In the caller's open transaction ``on``, lock the job's row until that transaction
        ends if ``lease`` still holds it (``_HOLD``); whether it does."""
        params = {"job_id": lease.job.id, "token": lease.token}
        return bool(await on.fetch(self._db.text(_HOLD), _HOLD.args(params)))
