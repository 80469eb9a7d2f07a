"""jobkeeper's tables, in their own schema, at jobkeeper revision 0002: they move with the
application's history and in its transaction."""

import jobkeeper.migrate
from alembic import op

revision = "0002_jobkeeper"
down_revision = "0001_loan_office"


def upgrade() -> None:
    jobkeeper.migrate.upgrade(op.get_bind(), "0002")


def downgrade() -> None:
    jobkeeper.migrate.downgrade(op.get_bind(), "base")
