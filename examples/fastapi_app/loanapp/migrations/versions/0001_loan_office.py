"""The loan office's tables."""

import sqlalchemy as sa
from alembic import op

revision = "0001_loan_office"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("token", sa.Text, nullable=False, unique=True),
        sa.Column("office", sa.Text, nullable=False),
        sa.Column("underwriter", sa.Boolean, nullable=False),
    )
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("office", sa.Text, nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("pages", sa.Integer, nullable=True),
    )
    op.create_table(
        "loans",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("office", sa.Text, nullable=False),
        sa.Column("applicant", sa.Text, nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("decided_by", sa.Text, nullable=True),
        sa.Column("job_id", sa.Text, nullable=True),
    )
    op.create_table("workers", sa.Column("name", sa.Text, primary_key=True))


def downgrade() -> None:
    for table in ("workers", "loans", "documents", "users"):
        op.drop_table(table)
