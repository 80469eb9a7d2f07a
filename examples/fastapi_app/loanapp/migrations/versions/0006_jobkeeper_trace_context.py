"""jobkeeper's revision 0006 (the trace context a job was submitted in), as the application takes
a new jobkeeper release: one revision of its own that moves jobkeeper's tables on."""

import jobkeeper.migrate
from alembic import op

revision = "0006_jobkeeper_trace_context"
down_revision = "0005_jobkeeper_workflows"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0006")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "0005")
