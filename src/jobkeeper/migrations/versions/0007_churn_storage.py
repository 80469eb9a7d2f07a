"""storage settings for churn: fillfactor and autovacuum thresholds per table

``jobs`` is written three times or more per job (submit, claim, completion, clearing the input),
so it keeps 30 % of each page free (``fillfactor = 70``): the new version of a row goes on the
row's own page, where the next access prunes the old one, instead of on another page found
through the free space map; updates that change no indexed column (heartbeats, progress,
checkpoints) become HOT updates, which add no index entry at all. Its autovacuum starts after
2 % of the table (plus 1,000 rows) is dead instead of Postgres's 20 %: a table that holds a week
of finished jobs would otherwise carry millions of dead versions, and every index with it,
before the first vacuum. ``job_events`` gets rows appended and deleted in bulk (retention), so it
is vacuumed, and its visibility map kept current, after 2 % of new or dead rows;
``job_tombstones`` after 5 %. Only storage parameters change: nothing is rewritten or locked for
long (ALTER TABLE ... SET takes a brief SHARE UPDATE EXCLUSIVE lock; the fillfactor applies to
pages written from now on). docs/operations.md says why, with the churn benchmark's numbers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# per table, as declared in jobkeeper.schema (postgresql_with; tests/test_migrations.py compares)
STORAGE: dict[str, dict[str, float]] = {
    "jobs": {
        "fillfactor": 70,
        "autovacuum_vacuum_scale_factor": 0.02,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_analyze_scale_factor": 0.02,
        "autovacuum_analyze_threshold": 1000,
    },
    "job_events": {
        "autovacuum_vacuum_scale_factor": 0.02,
        "autovacuum_vacuum_threshold": 1000,
        "autovacuum_vacuum_insert_scale_factor": 0.02,
    },
    "job_tombstones": {
        "autovacuum_vacuum_scale_factor": 0.05,
        "autovacuum_vacuum_insert_scale_factor": 0.05,
    },
}


def upgrade() -> None:
    for table, options in STORAGE.items():
        settings = ", ".join(f"{name} = {value}" for name, value in options.items())
        op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    for table, options in STORAGE.items():
        op.execute(f"ALTER TABLE {table} RESET ({', '.join(options)})")
