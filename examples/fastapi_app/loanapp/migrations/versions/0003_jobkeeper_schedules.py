"""jobkeeper revision 0003 (periodic schedules), in the application's history: an upgrade of
jobkeeper is a revision of the application's own."""

import jobkeeper.migrate
from alembic import op

revision = "0003_jobkeeper_schedules"
down_revision = "0002_jobkeeper"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0003")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "0002")
