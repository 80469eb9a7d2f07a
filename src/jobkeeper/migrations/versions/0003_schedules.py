"""periodic schedules: the ``schedules`` table, and each scheduled job's schedule and tick

A job a schedule submitted carries ``schedule_id`` and ``scheduled_for`` (its tick); the partial
unique index ``uq_jobs_schedule_tick`` holds only such jobs and allows one job per schedule and
tick, whatever the number of schedulers. Both columns are nullable without a default, so adding
them rewrites nothing.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TZ = sa.DateTime(timezone=True)
_NOW = sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("cron", sa.Text(), nullable=True),
        sa.Column("every_seconds", sa.BigInteger(), nullable=True),
        sa.Column("timezone", sa.Text(), server_default="UTC", nullable=False),
        sa.Column("misfire", sa.Text(), server_default="latest", nullable=False),
        sa.Column("max_catch_up", sa.Integer(), server_default="100", nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("computed_payload", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("priority", sa.Integer(), server_default="0", nullable=False),
        sa.Column("max_attempts", sa.Integer(), server_default="3", nullable=False),
        sa.Column("concurrency_key", sa.Text(), nullable=True),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("declared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("next_tick", _TZ, nullable=False),
        sa.Column("last_tick", _TZ, nullable=True),
        sa.Column("created_at", _TZ, server_default=_NOW, nullable=False),
        sa.Column("updated_at", _TZ, server_default=_NOW, nullable=False),
        sa.CheckConstraint(
            "(cron IS NULL) <> (every_seconds IS NULL)", name="ck_schedules_cron_or_every"
        ),
        sa.CheckConstraint("every_seconds > 0", name="ck_schedules_every_seconds"),
        sa.CheckConstraint("misfire IN ('latest', 'all', 'none')", name="ck_schedules_misfire"),
        sa.CheckConstraint("max_catch_up >= 1", name="ck_schedules_max_catch_up"),
        sa.CheckConstraint("priority BETWEEN 0 AND 32767", name="ck_schedules_priority"),
        sa.CheckConstraint("max_attempts BETWEEN 1 AND 1000", name="ck_schedules_max_attempts"),
        sa.PrimaryKeyConstraint("id", name="pk_schedules"),
        sa.UniqueConstraint("tenant", "name", name="uq_schedules_tenant_name"),
    )
    op.create_index(
        "ix_schedules_next_tick",
        "schedules",
        ["next_tick"],
        postgresql_where=sa.text("NOT paused"),
    )
    op.add_column("jobs", sa.Column("schedule_id", sa.Uuid(), nullable=True))
    op.add_column("jobs", sa.Column("scheduled_for", _TZ, nullable=True))
    op.create_index(
        "uq_jobs_schedule_tick",
        "jobs",
        ["schedule_id", "scheduled_for"],
        unique=True,
        postgresql_where=sa.text("schedule_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_jobs_schedule_tick", table_name="jobs")
    op.drop_column("jobs", "scheduled_for")
    op.drop_column("jobs", "schedule_id")
    op.drop_index("ix_schedules_next_tick", table_name="schedules")
    op.drop_table("schedules")
