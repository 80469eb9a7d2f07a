"""the trace context a job was submitted in

One nullable ``jsonb`` column, ``jobs.trace_context``: the W3C ``traceparent`` (and
``tracestate``) of the span that submitted the job, stored by ``JobManager.submit`` when
OpenTelemetry is installed and configured (``jobkeeper[otel]``, docs/tracing.md), and continued by
the spans of the job's runs. Adding a nullable column without a default rewrites nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("trace_context", JSONB(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "trace_context")
