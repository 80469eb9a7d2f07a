"""jobkeeper's revision 0007 (storage settings for churn: fillfactor and autovacuum thresholds),
as the application takes a new jobkeeper release: one revision of its own that moves jobkeeper's
tables on."""

import jobkeeper.migrate
from alembic import op

revision = "0007_jobkeeper_churn_storage"
down_revision = "0006_jobkeeper_trace_context"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0007")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "0006")
