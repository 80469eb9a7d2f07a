"""jobkeeper's revision 0004 (the inbox: question versions and claims), as the application
takes a new jobkeeper release: one revision of its own that moves jobkeeper's tables on."""

import jobkeeper.migrate
from alembic import op

revision = "0004_jobkeeper_inbox"
down_revision = "0003_jobkeeper_schedules"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0004")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "0003")
