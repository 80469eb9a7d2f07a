"""The registry of worker processes: each registers, heartbeats and deregisters; the sweeper
prunes those silent for long (their jobs are recovered through lease expiry anyway)."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from jobkeeper.domain.values import WorkerInfo
from jobkeeper.postgres.compile import raw
from jobkeeper.postgres.pool import Database

__all__ = ["WorkerStatements"]

_REGISTER = raw(
    "INSERT INTO workers (id, host, pid, kinds, concurrency) VALUES ($1, $2, $3, $4, $5)",
    "id",
    "host",
    "pid",
    "kinds",
    "concurrency",
)
_BEAT = raw("UPDATE workers SET heartbeat_at = now() WHERE id = $1", "id")
_UNREGISTER = raw("DELETE FROM workers WHERE id = $1", "id")
# workers silent for longer than $1 s are gone
_PRUNE = raw(
    "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1::float8)"
    " RETURNING id",
    "seconds",
)
_LIVE = raw(
    "SELECT id, host, pid, kinds, concurrency, started_at, heartbeat_at FROM workers"
    " WHERE heartbeat_at >= now() - make_interval(secs => $1::float8) ORDER BY started_at",
    "seconds",
)


class WorkerStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def register(
        self, worker_id: UUID, *, host: str, pid: int, kinds: Sequence[str] | None, concurrency: int
    ) -> None:
        params = {
            "id": worker_id,
            "host": host,
            "pid": pid,
            "kinds": None if kinds is None else list(kinds),
            "concurrency": concurrency,
        }
        await self._db.rows(_REGISTER, params, read=False)

    async def heartbeat(self, worker_id: UUID) -> None:
        await self._db.rows(_BEAT, {"id": worker_id}, read=False)

    async def unregister(self, worker_id: UUID) -> None:
        await self._db.rows(_UNREGISTER, {"id": worker_id}, read=False)

    async def prune(self, silent_for: float) -> int:
        """Forget workers that have not heartbeaten for ``silent_for`` seconds; how many."""
        return len(await self._db.rows(_PRUNE, {"seconds": silent_for}, read=False))

    async def live(self, within: float) -> list[WorkerInfo]:
        """Workers that heartbeat within the last ``within`` seconds, oldest first."""
        rows = await self._db.rows(_LIVE, {"seconds": within}, read=True)
        return [
            WorkerInfo(
                id=r["id"],
                host=r["host"],
                pid=r["pid"],
                kinds=None if r["kinds"] is None else tuple(r["kinds"]),
                concurrency=r["concurrency"],
                started_at=r["started_at"],
                heartbeat_at=r["heartbeat_at"],
            )
            for r in rows
        ]
