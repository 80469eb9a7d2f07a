"""workflows: child jobs, parents that wait for them, durable sleeps

A job spawned by another's handler records its ``parent_id`` (``ix_jobs_parent`` finds a parent's
children, to cancel them with it). A parent parked until its children finish is in the new status
``waiting_children`` with the children it waits for in ``waiting_for`` (a check keeps the two
together). A job parked by a durable sleep is queued with ``run_after`` at its wake-up time and
``sleeping_until`` saying so.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "'queued', 'running', 'waiting_input', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("waiting_for", sa.ARRAY(sa.Uuid()), nullable=True))
    op.add_column("jobs", sa.Column("sleeping_until", sa.DateTime(timezone=True), nullable=True))
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint(
        op.f("ck_jobs_status"), "jobs", f"status IN ({_BEFORE}, 'waiting_children')"
    )
    op.create_check_constraint(
        op.f("ck_jobs_waiting_for"),
        "jobs",
        "(status = 'waiting_children') = (waiting_for IS NOT NULL)",
    )
    op.create_index(
        "ix_jobs_parent", "jobs", ["parent_id"], postgresql_where=sa.text("parent_id IS NOT NULL")
    )


def downgrade() -> None:
    # a waiting parent cannot be kept without its status: it is queued again and, re-run from the
    # start, finds its children by their idempotency keys
    op.execute(
        "UPDATE jobs SET status = 'queued', waiting_for = NULL, run_after = now()"
        " WHERE status = 'waiting_children'"
    )
    op.drop_index("ix_jobs_parent", table_name="jobs")
    op.drop_constraint(op.f("ck_jobs_waiting_for"), "jobs", type_="check")
    op.drop_constraint(op.f("ck_jobs_status"), "jobs", type_="check")
    op.create_check_constraint(op.f("ck_jobs_status"), "jobs", f"status IN ({_BEFORE})")
    op.drop_column("jobs", "sleeping_until")
    op.drop_column("jobs", "waiting_for")
    op.drop_column("jobs", "parent_id")
