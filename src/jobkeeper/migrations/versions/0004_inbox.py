"""the inbox: question versions, claims, and an index of a tenant's open questions

A waiting job's question gets a version (the job's version when it was asked or last escalated,
so an answer can require the question it read) and a claim (who holds it, until when). Both exist
only while the job waits (a check says so). ``ix_jobs_inbox`` serves ``JobManager.inbox``: a
tenant's open questions, oldest deadline first, keyset-paged.

Revision ID: 0004
Revises: 0002 (re-point to 0003 when the schedules revision lands before it)
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("question_version", sa.BigInteger(), nullable=True))
    op.add_column("jobs", sa.Column("claimed_by", sa.Text(), nullable=True))
    op.add_column("jobs", sa.Column("claim_expires_at", sa.DateTime(timezone=True), nullable=True))
    # questions already open get the job's current version
    op.execute("UPDATE jobs SET question_version = version WHERE status = 'waiting_input'")
    op.create_check_constraint(
        "ck_jobs_question",
        "jobs",
        "status = 'waiting_input' OR (question_version IS NULL AND claimed_by IS NULL)",
    )
    op.create_check_constraint(
        "ck_jobs_claim", "jobs", "(claimed_by IS NULL) = (claim_expires_at IS NULL)"
    )
    op.create_index(
        "ix_jobs_inbox",
        "jobs",
        ["tenant", "input_deadline", "id"],
        postgresql_where=sa.text("status = 'waiting_input'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_inbox", table_name="jobs")
    op.drop_constraint("ck_jobs_claim", "jobs", type_="check")
    op.drop_constraint("ck_jobs_question", "jobs", type_="check")
    op.drop_column("jobs", "claim_expires_at")
    op.drop_column("jobs", "claimed_by")
    op.drop_column("jobs", "question_version")
