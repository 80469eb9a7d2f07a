"""The database schema as SQLAlchemy Core tables: Alembic's target metadata, used by the repository.

``jobs`` holds the current state of each job; ``job_events`` is its append-only history, written in
the same statement as every change, with ``seq`` equal to the job's ``version`` after that change.
``job_events.txid`` (the writing transaction's id) orders the change feed's catch-up by commit.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import MAX_ATTEMPTS, MAX_PRIORITY

__all__ = [
    "REVISION",
    "VERSION_TABLE",
    "api_keys",
    "job_events",
    "job_tombstones",
    "jobs",
    "metadata",
    "schedules",
    "workers",
]

# Alembic's version table of jobkeeper's own history, in jobkeeper's schema: never the
# application's alembic_version
VERSION_TABLE = "jobkeeper_alembic_version"
# the Alembic revision these tables are (the head of migrations/versions; tests/test_migrations.py
# keeps the two equal): a database at an older one lacks columns this code writes
REVISION = "0007"

# the writing transaction id (xid8: 64-bit, never wraps) as bigint, comparable with pg_snapshot_xmin
CURRENT_TXID = sa.text("(pg_current_xact_id())::text::bigint")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_STATUSES = ", ".join(f"'{s.value}'" for s in JobStatus)
_NOW = sa.text("now()")
_TZ = sa.DateTime(timezone=True)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("status", sa.Text(), nullable=False, server_default=JobStatus.QUEUED.value),
    sa.Column("payload", JSONB(none_as_null=True), nullable=True),
    sa.Column("result", JSONB(none_as_null=True), nullable=True),
    sa.Column("error", JSONB(none_as_null=True), nullable=True),
    sa.Column("progress_fraction", sa.Double(), nullable=True),
    sa.Column("progress_message", sa.Text(), nullable=True),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"),
    sa.Column("run_after", _TZ, nullable=False, server_default=_NOW),
    sa.Column("idempotency_key", sa.Text(), nullable=True),
    sa.Column("request_fingerprint", sa.Text(), nullable=True),
    sa.Column("concurrency_key", sa.Text(), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("pinned", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("version", sa.BigInteger(), nullable=False, server_default="1"),
    sa.Column("created_at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("updated_at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("started_at", _TZ, nullable=True),
    sa.Column("finished_at", _TZ, nullable=True),
    # the fenced lease of a running job: every write by its worker must present the token
    sa.Column("lease_token", sa.Uuid(), nullable=True),
    sa.Column("lease_expires_at", _TZ, nullable=True),
    sa.Column("worker_id", sa.Uuid(), nullable=True),
    # human in the loop: the open question, its deadline, and the replay state of the handler
    sa.Column("prompt", JSONB(none_as_null=True), nullable=True),
    sa.Column("input_deadline", _TZ, nullable=True),
    sa.Column("answers", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("checkpoints", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    # a job a schedule submitted: which schedule, and the tick it stands for
    sa.Column("schedule_id", sa.Uuid(), nullable=True),
    sa.Column("scheduled_for", _TZ, nullable=True),
    # the open question's version (the job's version when it was asked or last escalated: an
    # answer may require it) and who holds it until when (a person's claim; expired = free)
    sa.Column("question_version", sa.BigInteger(), nullable=True),
    sa.Column("claimed_by", sa.Text(), nullable=True),
    sa.Column("claim_expires_at", _TZ, nullable=True),
    # workflows: the job whose handler spawned this one; the children a waiting_children job
    # waits for; the wake-up time of a job parked by a durable sleep (until it wakes)
    sa.Column("parent_id", sa.Uuid(), nullable=True),
    sa.Column("waiting_for", sa.ARRAY(sa.Uuid()), nullable=True),
    sa.Column("sleeping_until", _TZ, nullable=True),
    # the W3C trace context (traceparent, tracestate) of the span that submitted the job, which
    # its runs continue (jobkeeper.tracing); null when it was submitted without tracing
    sa.Column("trace_context", JSONB(none_as_null=True), nullable=True),
    sa.CheckConstraint(f"status IN ({_STATUSES})", name="status"),
    sa.CheckConstraint("tenant <> ''", name="tenant"),
    sa.CheckConstraint(f"priority BETWEEN 0 AND {MAX_PRIORITY}", name="priority"),
    sa.CheckConstraint(f"max_attempts BETWEEN 1 AND {MAX_ATTEMPTS}", name="max_attempts"),
    sa.CheckConstraint("attempts >= 0", name="attempts"),
    sa.CheckConstraint("progress_fraction BETWEEN 0 AND 1", name="progress_fraction"),
    sa.CheckConstraint("version >= 1", name="version"),
    sa.CheckConstraint(
        "(status = 'running') = (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)",
        name="lease",
    ),
    sa.CheckConstraint("(status = 'waiting_input') = (prompt IS NOT NULL)", name="prompt"),
    # a question's state never outlives the question; a claim has a holder and an expiry
    sa.CheckConstraint(
        "status = 'waiting_input' OR (question_version IS NULL AND claimed_by IS NULL)",
        name="question",
    ),
    sa.CheckConstraint("(claimed_by IS NULL) = (claim_expires_at IS NULL)", name="claim"),
    sa.CheckConstraint(
        "(status = 'waiting_children') = (waiting_for IS NOT NULL)", name="waiting_for"
    ),
    # written three times or more per job: free room on each page keeps a row's new version on
    # its page (HOT when no indexed column changes: heartbeats, progress); vacuumed after 2 %
    # dead rows, not 20 % (migration 0007, docs/operations.md)
    postgresql_with={
        "fillfactor": 70,
        "autovacuum_vacuum_scale_factor": 0.02,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_analyze_scale_factor": 0.02,
        "autovacuum_analyze_threshold": 1000,
    },
)
# Every status change adds an entry to each index below whose predicate the new row meets (a
# status change is never a HOT update), so the hot path keeps to few indexes and narrow predicates.
# No index names a column that only heartbeats, progress or checkpoints change (lease_expires_at,
# progress_*, checkpoints, updated_at): those updates stay HOT (tests/test_query_plans.py).

# one job per (tenant, idempotency key); jobs without a key stay out of the index
sa.Index(
    "uq_jobs_tenant_idempotency_key",
    jobs.c.tenant,
    jobs.c.idempotency_key,
    unique=True,
    postgresql_where=jobs.c.idempotency_key.is_not(None),
)
# keyset listing, newest first (UUIDv7 ids sort by creation time); a listing of every status merges
# one scan per status (JobRepository.list_jobs). Lease recovery reads the running jobs here too:
# they are few (at most the workers' slots), so no index of their own is kept up to date per claim.
sa.Index(None, jobs.c.status, jobs.c.tenant, jobs.c.id)
# the claim: queued jobs in priority order (partial, so it holds only the queue)
sa.Index(
    "ix_jobs_claim",
    jobs.c.priority.desc(),
    jobs.c.run_after,
    jobs.c.id,
    postgresql_where=jobs.c.status == "queued",
)
# input deadlines: waiting jobs by deadline
sa.Index(
    "ix_jobs_input_deadline",
    jobs.c.input_deadline,
    postgresql_where=jobs.c.status == "waiting_input",
)
# the inbox: a tenant's open questions, oldest deadline first (no deadline last), keyset-paged
sa.Index(
    "ix_jobs_inbox",
    jobs.c.tenant,
    jobs.c.input_deadline,
    jobs.c.id,
    postgresql_where=jobs.c.status == "waiting_input",
)
# retention scans, oldest first; a row leaves each index once handled, so a sweep's cost follows
# what expired, not the table size
sa.Index(
    "ix_jobs_retention",
    jobs.c.finished_at,
    postgresql_where=sa.and_(jobs.c.finished_at.is_not(None), ~jobs.c.pinned),
)
sa.Index(
    "ix_jobs_payload_retention",
    jobs.c.finished_at,
    postgresql_where=sa.and_(
        jobs.c.finished_at.is_not(None), ~jobs.c.pinned, jobs.c.payload.is_not(None)
    ),
)
# at most one running job per (tenant, concurrency key), whatever the number of workers
sa.Index(
    "uq_jobs_running_concurrency_key",
    jobs.c.tenant,
    jobs.c.concurrency_key,
    unique=True,
    postgresql_where=sa.and_(jobs.c.status == "running", jobs.c.concurrency_key.is_not(None)),
)

# a parent's children (cancelling a parent cancels them); jobs without a parent stay out
sa.Index("ix_jobs_parent", jobs.c.parent_id, postgresql_where=jobs.c.parent_id.is_not(None))

# exactly one job per schedule and tick, however many schedulers race (postgres/schedules.py);
# jobs no schedule submitted stay out of the index
sa.Index(
    "uq_jobs_schedule_tick",
    jobs.c.schedule_id,
    jobs.c.scheduled_for,
    unique=True,
    postgresql_where=jobs.c.schedule_id.is_not(None),
)

job_events = sa.Table(
    "job_events",
    metadata,
    # no foreign key: a check per event would cost every change a lookup; retention deletes a
    # job's events with the job
    sa.Column("job_id", sa.Uuid(), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("type", sa.Text(), nullable=False),
    sa.Column("data", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("txid", sa.BigInteger(), nullable=False, server_default=CURRENT_TXID),
    # appended per change, deleted in bulk by retention: vacuumed after 2 % new or dead rows
    postgresql_with={
        "autovacuum_vacuum_scale_factor": 0.02,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_vacuum_insert_scale_factor": 0.02,
    },
)
# the change feed's catch-up reads events by transaction id
sa.Index(None, job_events.c.txid)

# who is alive, for health checks and metrics (never for correctness: leases decide that)
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("host", sa.Text(), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    sa.Column("kinds", sa.ARRAY(sa.Text()), nullable=True),
    sa.Column("concurrency", sa.Integer(), nullable=False),
    sa.Column("started_at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("heartbeat_at", _TZ, nullable=False, server_default=_NOW),
)
sa.Index(None, workers.c.heartbeat_at)

# HTTP API keys: only a SHA-256 of each key is stored (keys are 256-bit random, so a fast hash is
# enough); ``prefix`` identifies a key to people without revealing it
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("key_hash", sa.Text(), nullable=False, unique=True),
    sa.Column("prefix", sa.Text(), nullable=False),
    sa.Column("label", sa.Text(), nullable=True),
    sa.Column("created_at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("revoked_at", _TZ, nullable=True),
)

# what remains of an expired job: enough to answer "expired" (not "not found") and to keep its
# idempotency key refused, until tombstone_ttl
job_tombstones = sa.Table(
    "job_tombstones",
    metadata,
    sa.Column("job_id", sa.Uuid(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("idempotency_key", sa.Text(), nullable=True),
    sa.Column("expired_at", _TZ, nullable=False, server_default=_NOW),
    # the change feed's catch-up finds expiries here (the job's events are gone)
    sa.Column("txid", sa.BigInteger(), nullable=False, server_default=CURRENT_TXID),
    postgresql_with={
        "autovacuum_vacuum_scale_factor": 0.05,
        "autovacuum_vacuum_insert_scale_factor": 0.05,
    },
)
sa.Index(None, job_tombstones.c.expired_at)
sa.Index(None, job_tombstones.c.txid)
sa.Index(
    "ix_job_tombstones_key",
    job_tombstones.c.tenant,
    job_tombstones.c.idempotency_key,
    postgresql_where=job_tombstones.c.idempotency_key.is_not(None),
)

# periodic schedules (domain/schedules.py): a cron expression or an interval, the job each tick
# submits, and ``next_tick``, the next tick not yet handled, which only ever moves forward
schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("id", sa.Uuid(), primary_key=True),
    sa.Column("tenant", sa.Text(), nullable=False),
    sa.Column("name", sa.Text(), nullable=False),
    sa.Column("kind", sa.Text(), nullable=False),
    sa.Column("cron", sa.Text(), nullable=True),
    sa.Column("every_seconds", sa.BigInteger(), nullable=True),
    sa.Column("timezone", sa.Text(), nullable=False, server_default="UTC"),
    sa.Column("misfire", sa.Text(), nullable=False, server_default="latest"),
    sa.Column("max_catch_up", sa.Integer(), nullable=False, server_default="100"),
    sa.Column("payload", JSONB(none_as_null=True), nullable=True),
    # the payload is computed per tick by the workers that declare this schedule
    sa.Column("computed_payload", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer(), nullable=False, server_default="3"),
    sa.Column("concurrency_key", sa.Text(), nullable=True),
    sa.Column("paused", sa.Boolean(), nullable=False, server_default=sa.false()),
    # written by workers from @tasks.periodic (not through the API)
    sa.Column("declared", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("next_tick", _TZ, nullable=False),
    sa.Column("last_tick", _TZ, nullable=True),
    sa.Column("created_at", _TZ, nullable=False, server_default=_NOW),
    sa.Column("updated_at", _TZ, nullable=False, server_default=_NOW),
    sa.UniqueConstraint("tenant", "name"),
    sa.CheckConstraint("(cron IS NULL) <> (every_seconds IS NULL)", name="cron_or_every"),
    sa.CheckConstraint("every_seconds > 0", name="every_seconds"),
    sa.CheckConstraint("misfire IN ('latest', 'all', 'none')", name="misfire"),
    sa.CheckConstraint("max_catch_up >= 1", name="max_catch_up"),
    sa.CheckConstraint(f"priority BETWEEN 0 AND {MAX_PRIORITY}", name="priority"),
    sa.CheckConstraint(f"max_attempts BETWEEN 1 AND {MAX_ATTEMPTS}", name="max_attempts"),
)
# what schedulers poll: the schedules that run, by their next tick
sa.Index("ix_schedules_next_tick", schedules.c.next_tick, postgresql_where=~schedules.c.paused)
