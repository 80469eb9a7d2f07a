"""a leaner write path: fewer index entries and no foreign-key check per change

Every status change of a job inserts a new entry into each index of ``jobs`` (a status change is
never a HOT update) and appends an event. This revision removes what the hot path paid for without
need: the idempotency index holds only jobs that have a key; the two listing indexes ``(tenant,
id)`` and ``(tenant, status, id)`` become one ``(status, tenant, id)``, which serves listings (see
``JobRepository.list_jobs``) and lease recovery (running jobs are few), so the partial lease index
goes too; and events lose their foreign key (retention deletes a job's events itself), so no
trigger runs per event.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint("fk_job_events_job_id_jobs", "job_events", type_="foreignkey")
    op.drop_constraint("uq_jobs_tenant_idempotency_key", "jobs", type_="unique")
    op.create_index(
        "uq_jobs_tenant_idempotency_key",
        "jobs",
        ["tenant", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_jobs_status_tenant_id", "jobs", ["status", "tenant", "id"])
    op.drop_index("ix_jobs_tenant_id", table_name="jobs")
    op.drop_index("ix_jobs_tenant_status_id", table_name="jobs")
    op.drop_index("ix_jobs_lease", table_name="jobs")


def downgrade() -> None:
    op.create_index(
        "ix_jobs_lease",
        "jobs",
        ["lease_expires_at"],
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_index("ix_jobs_tenant_status_id", "jobs", ["tenant", "status", "id"])
    op.create_index("ix_jobs_tenant_id", "jobs", ["tenant", "id"])
    op.drop_index("ix_jobs_status_tenant_id", table_name="jobs")
    op.drop_index("uq_jobs_tenant_idempotency_key", table_name="jobs")
    op.create_unique_constraint(
        "uq_jobs_tenant_idempotency_key", "jobs", ["tenant", "idempotency_key"]
    )
    # events whose job is gone (none, unless written around retention) would break the key
    op.execute(
        "DELETE FROM job_events AS e WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = e.job_id)"
    )
    op.create_foreign_key(
        "fk_job_events_job_id_jobs", "job_events", "jobs", ["job_id"], ["id"], ondelete="CASCADE"
    )
