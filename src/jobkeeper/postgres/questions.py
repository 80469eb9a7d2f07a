"""Statements on a waiting job's question: the inbox, claims, answers, and what a deadline does
(escalate, fail, cancel, or answer with the default).

Every change is one conditional statement: a claim, a release and an answer each name in their
``WHERE`` what must still hold (the question open, its key and version, nobody else's live claim),
so of two racing writes one wins whatever replica runs them; a refused write changes nothing and
the caller reads the row only to explain why. Each change appends its event, with the principal
and the replica (``host:pid``) that made it: the audit trail.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.postgres.compile import raw, sources, target, with_event
from jobkeeper.postgres.pool import Database, to_job

__all__ = ["QuestionStatements"]

_Q, _W, _F, _C = JobStatus.QUEUED, JobStatus.WAITING_INPUT, JobStatus.FAILED, JobStatus.CANCELLED
_BUMP = "version = jobs.version + 1, updated_at = now()"
# what every change that ends a wait clears (ck_jobs_question: nothing of it outlives it)
_NO_QUESTION = (
    "prompt = NULL, input_deadline = NULL, question_version = NULL, claimed_by = NULL,"
    " claim_expires_at = NULL"
)
_WAITING = f"jobs.status = '{_W.value}'"
# nobody but $principal holds the question now (a claim past its expiry holds nothing)
_FREE_FOR = "(jobs.claimed_by IS NULL OR jobs.claim_expires_at <= now() OR jobs.claimed_by = {})"
_HAS_ESCALATION = "jsonb_array_length(coalesce(jobs.prompt -> 'escalate', '[]'::jsonb)) > 0"

# The open questions of tenant $1 addressed to anyone or to one of $2 (kind $3, assignee $4:
# optional filters), oldest deadline first and those without one last, after the cursor
# ($5 deadline, $6 id; $6 NULL: the first page). ix_jobs_inbox is read in its order.
_INBOX = raw(
    f"""SELECT * FROM jobs
WHERE jobs.tenant = $1::text AND {_WAITING}
  AND (jobs.prompt ->> 'assignee' IS NULL OR jobs.prompt ->> 'assignee' = ANY($2::text[]))
  AND ($3::text IS NULL OR jobs.kind = $3::text)
  AND ($4::text IS NULL OR jobs.prompt ->> 'assignee' = $4::text)
  AND ($6::uuid IS NULL
       OR ($5::timestamptz IS NULL AND jobs.input_deadline IS NULL AND jobs.id > $6::uuid)
       OR ($5::timestamptz IS NOT NULL AND (jobs.input_deadline > $5::timestamptz
           OR jobs.input_deadline IS NULL
           OR (jobs.input_deadline = $5::timestamptz AND jobs.id > $6::uuid))))
ORDER BY jobs.input_deadline ASC NULLS LAST, jobs.id ASC
LIMIT $7::int""",
    "tenant",
    "addressees",
    "kind",
    "assignee",
    "after_deadline",
    "after_id",
    "limit",
)

# $3 claims the question of job $1 for $5 s (renewing its own claim), unless someone else holds
# it and $4 (take over) is false. ``prior`` locks the row first (FOR UPDATE returns the newest
# committed version), so the event names whose live claim this one replaced.
_TAKEN_OVER = "p.held AND p.claimed_by IS DISTINCT FROM $3::text"
_CLAIM = with_event(
    raw(
        f"""WITH prior AS (
    SELECT jobs.id, jobs.claimed_by, coalesce(jobs.claim_expires_at > now(), false) AS held
    FROM jobs WHERE jobs.id = $1::uuid AND jobs.tenant = $2::text AND {_WAITING} FOR UPDATE
), changed AS (
    UPDATE jobs SET claimed_by = $3::text,
        claim_expires_at = now() + make_interval(secs => $5::float8), {_BUMP}
    FROM prior WHERE jobs.id = prior.id AND {_WAITING}
      AND ($4::boolean OR NOT prior.held OR prior.claimed_by = $3::text)
    RETURNING jobs.*
)""",
        "job_id",
        "tenant",
        "principal",
        "takeover",
        "ttl",
        "replica",
    ),
    f"""(SELECT CASE WHEN {_TAKEN_OVER} THEN 'question_taken_over' ELSE 'question_claimed' END
    FROM prior AS p)""",
    f"""jsonb_build_object('key', changed.prompt ->> 'key', 'by', $3::text,
    'until', changed.claim_expires_at, 'version', changed.question_version, 'replica', $6::text,
    'renewed', (SELECT p.held AND p.claimed_by = $3::text FROM prior AS p),
    'from', (SELECT CASE WHEN {_TAKEN_OVER} THEN p.claimed_by END FROM prior AS p))""",
)

# $3 gives back the question of job $1 it holds.
_RELEASE = with_event(
    raw(
        f"""WITH changed AS (
    UPDATE jobs SET claimed_by = NULL, claim_expires_at = NULL, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.tenant = $2::text AND {_WAITING}
      AND jobs.claimed_by = $3::text AND jobs.claim_expires_at > now()
    RETURNING jobs.*
)""",
        "job_id",
        "tenant",
        "principal",
        "replica",
    ),
    "'question_released'",
    """jsonb_build_object('key', changed.prompt ->> 'key', 'by', $3::text,
    'version', changed.question_version, 'replica', $4::text)""",
)

# A person ($5) answers question $3 ($4: the answer as JSON): stored with the job's answers, and
# the job is queued again for any worker to resume. Only the question still open is answered,
# in version $6 if given, and not while someone else holds it.
_ANSWER = with_event(
    raw(
        f"""WITH changed AS (
    UPDATE jobs SET status = {target("answer", _Q)}, run_after = now(),
        answers = jobs.answers || jsonb_build_object($3::text, jsonb_build_object(
            'answer', $4::jsonb, 'answered_by', $5::text, 'answered_at', now())
            || jsonb_strip_nulls(jsonb_build_object('asked_at', jobs.prompt -> 'asked_at'))),
        {_NO_QUESTION}, {_BUMP}
    WHERE jobs.id = $1::uuid AND jobs.tenant = $2::text AND jobs.status IN ({sources("answer")})
      AND jobs.prompt ->> 'key' = $3::text
      AND ($6::bigint IS NULL OR jobs.question_version = $6::bigint)
      AND {_FREE_FOR.format("$5::text")}
    RETURNING jobs.*
)""",
        "job_id",
        "tenant",
        "key",
        "answer",
        "answered_by",
        "expected_version",
        "replica",
    ),
    "'answered'",
    "jsonb_build_object('key', $3::text, 'answered_by', $5::text, 'replica', $7::text)",
)

# Deadlines (run by sweepers), first: a question with escalation steps left goes to the next
# step's assignee with a new deadline and a new version; any claim on it ends.
_ESCALATE = with_event(
    raw(
        f"""WITH due AS (
    SELECT jobs.id, jobs.prompt -> 'assignee' AS was FROM jobs
    WHERE {_WAITING} AND jobs.input_deadline < now() AND {_HAS_ESCALATION}
    ORDER BY jobs.input_deadline LIMIT $1 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET
        prompt = jobs.prompt || jsonb_build_object(
            'assignee', jobs.prompt -> 'escalate' -> 0 -> 'to',
            'escalate', (jobs.prompt -> 'escalate') - 0),
        input_deadline = now()
            + make_interval(secs => (jobs.prompt -> 'escalate' -> 0 ->> 'after')::float8),
        question_version = jobs.version + 1, claimed_by = NULL, claim_expires_at = NULL, {_BUMP}
    FROM due WHERE jobs.id = due.id AND {_WAITING} AND jobs.input_deadline < now()
      AND {_HAS_ESCALATION}
    RETURNING jobs.*
)""",
        "limit",
        "replica",
    ),
    "'escalated'",
    """jsonb_build_object('key', changed.prompt ->> 'key',
    'from', (SELECT due.was FROM due WHERE due.id = changed.id),
    'to', changed.prompt -> 'assignee', 'deadline', changed.input_deadline,
    'version', changed.question_version, 'replica', $2::text)""",
)

# Then the last deadline: what the question's on_timeout says: fail with code input_timeout (the
# default), cancel, or resume with its default answer.
_INPUT_TIMEOUTS = with_event(
    raw(
        f"""WITH due AS (
    SELECT id FROM jobs WHERE status IN ({sources("input_timeout")}) AND input_deadline < now()
      AND NOT {_HAS_ESCALATION}
    ORDER BY input_deadline LIMIT $1 FOR UPDATE SKIP LOCKED
), changed AS (
    UPDATE jobs SET
        status = CASE jobs.prompt ->> 'on_timeout'
                 WHEN 'cancel' THEN {target("input_timeout", _C)}
                 WHEN 'default' THEN {target("input_timeout", _Q)}
                 ELSE {target("input_timeout", _F)} END,
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
        run_after = now(), {_NO_QUESTION}, {_BUMP}
    FROM due WHERE jobs.id = due.id AND jobs.status IN ({sources("input_timeout")})
      AND jobs.input_deadline < now() AND NOT {_HAS_ESCALATION}
    RETURNING jobs.*
)""",
        "limit",
        "replica",
    ),
    "CASE changed.status WHEN 'queued' THEN 'answered' WHEN 'cancelled' THEN 'cancelled'"
    " ELSE 'failed' END",
    "jsonb_build_object('timed_out', true, 'error', changed.error, 'replica', $2::text)",
)

# Open questions per tenant and kind, for the metrics (the partial inbox index holds just them).
_WAITING_COUNTS = raw(
    f"SELECT tenant, kind, count(*) AS n FROM jobs WHERE {_WAITING} GROUP BY tenant, kind"
)


class QuestionStatements:
    """The statements above, run on one ``Database``; ``replica`` is recorded with each change."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def inbox(
        self,
        tenant: str,
        *,
        addressees: Sequence[str],
        kind: str | None,
        assignee: str | None,
        after: tuple[datetime | None, UUID] | None,
        limit: int,
    ) -> list[Job]:
        """Up to ``limit`` waiting jobs whose question is for anyone or one of ``addressees``."""
        params = {
            "tenant": tenant,
            "addressees": list(addressees),
            "kind": kind,
            "assignee": assignee,
            "after_deadline": None if after is None else after[0],
            "after_id": None if after is None else after[1],
            "limit": limit,
        }
        return [to_job(r) for r in await self._db.rows(_INBOX, params, read=True)]

    async def claim(
        self,
        job_id: UUID,
        tenant: str,
        principal: str,
        *,
        takeover: bool,
        ttl: float,
        replica: str,
    ) -> Job | None:
        """Claim (or renew) the question for ``ttl`` s; ``None`` if it is not open or someone
        else holds it (and ``takeover`` is false)."""
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "principal": principal,
            "takeover": takeover,
            "ttl": ttl,
            "replica": replica,
        }
        return await self._db.write_job(_CLAIM, params)

    async def release(self, job_id: UUID, tenant: str, principal: str, replica: str) -> Job | None:
        """Give back a claim ``principal`` holds; ``None`` if it holds none."""
        params = {"job_id": job_id, "tenant": tenant, "principal": principal, "replica": replica}
        return await self._db.write_job(_RELEASE, params)

    async def answer(
        self,
        job_id: UUID,
        tenant: str,
        key: str,
        answer_json: str,
        answered_by: str | None,
        *,
        expected_version: int | None,
        replica: str,
    ) -> Job | None:
        """Answer the open question ``key``; ``None`` if the job is not waiting for it (in that
        version), or someone else holds it."""
        params = {
            "job_id": job_id,
            "tenant": tenant,
            "key": key,
            "answer": answer_json,
            "answered_by": answered_by,
            "expected_version": expected_version,
            "replica": replica,
        }
        return await self._db.write_job(_ANSWER, params)

    async def escalate(self, *, limit: int, replica: str) -> list[Job]:
        """Move up to ``limit`` overdue questions with escalation steps left to their next step."""
        return await self._db.write_jobs(_ESCALATE, {"limit": limit, "replica": replica})

    async def expire_input_deadlines(self, *, limit: int, replica: str) -> list[Job]:
        """Apply ``on_timeout`` to up to ``limit`` jobs whose question's last deadline passed."""
        return await self._db.write_jobs(_INPUT_TIMEOUTS, {"limit": limit, "replica": replica})

    async def waiting_counts(self) -> list[tuple[str, str, int]]:
        """``(tenant, kind, open questions)`` for every pair that has some."""
        rows = await self._db.rows(_WAITING_COUNTS, {}, read=True)
        return [(r["tenant"], r["kind"], r["n"]) for r in rows]
