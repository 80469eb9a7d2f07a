"""jobkeeper's revision 0005 (workflows: child jobs, parents waiting for them, durable sleeps), as
the application takes a new jobkeeper release: one revision of its own that moves jobkeeper on."""

import jobkeeper.migrate
from alembic import op

revision = "0005_jobkeeper_workflows"
down_revision = "0004_jobkeeper_inbox"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0005")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "0004")
