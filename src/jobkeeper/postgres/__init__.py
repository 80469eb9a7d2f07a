"""The data layer: the only place with SQL. ``manager``, ``feed`` and ``testing`` import it;
everything else reaches the database through ``JobManager`` (an import-linter contract keeps it
so)."""

from jobkeeper.postgres.leases import Completion
from jobkeeper.postgres.notify import (
    CANCEL_REQUESTED,
    CHANNEL,
    EXPIRED_VERSION,
    WORK_CHANNEL,
    CatchUp,
    Change,
    FeedConnection,
)
from jobkeeper.postgres.store import Postgres

__all__ = [
    "CANCEL_REQUESTED",
    "CHANNEL",
    "EXPIRED_VERSION",
    "WORK_CHANNEL",
    "CatchUp",
    "Change",
    "Completion",
    "FeedConnection",
    "Postgres",
]
