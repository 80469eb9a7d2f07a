"""Live rows for the dashboard: ONE change subscription per manager, fanned out to every browser.

The change feed says which job changed (id, version), not whose it is. ``LiveJobs`` gathers the
changed ids for a moment, reads them all in one ``JobManager.get_many`` (one read per batch,
however many browsers watch) and hands each job to the watchers of its tenant. It subscribes
while someone watches and unsubscribes when the last one leaves. A watcher too slow to keep up
loses its oldest rows (each row is a full snapshot: the next change of a job repairs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any
from uuid import UUID

from jobkeeper.api.ui.inbox import question_state
from jobkeeper.domain.values import Job
from jobkeeper.errors import JobkeeperError
from jobkeeper.manager import JobManager

__all__ = ["LiveJobs", "live_row"]

log = logging.getLogger("jobkeeper.api.ui")
# changes are gathered this long before one read serves them all
BATCH_SECONDS = 0.1
# rows one watcher may have unread before its oldest are dropped
WATCHER_BACKLOG = 1_000


class LiveJobs:
    """Fans the manager's changes out to per-tenant watchers (see the module docstring)."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs
        self._watchers: dict[str, set[asyncio.Queue[Job]]] = {}
        self._pending: set[UUID] = set()
        self._wake = asyncio.Event()
        self._unsubscribe: Callable[[], None] | None = None
        self._pump: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def watch(self, tenant: str) -> AsyncIterator[asyncio.Queue[Job]]:
        """A queue of the tenant's jobs as they change, while the context is open."""
        queue: asyncio.Queue[Job] = asyncio.Queue(WATCHER_BACKLOG)
        self._watchers.setdefault(tenant, set()).add(queue)
        if self._unsubscribe is None:
            self._unsubscribe = self._jobs.subscribe(self._on_change)
            self._pump = asyncio.create_task(self._run(), name="jobkeeper-ui-live")
        try:
            yield queue
        finally:
            watchers = self._watchers[tenant]
            watchers.discard(queue)
            if not watchers:
                del self._watchers[tenant]
            if not self._watchers:
                await self._stop()

    def watching(self) -> int:
        """How many watchers there are (all tenants)."""
        return sum(len(queues) for queues in self._watchers.values())

    def _on_change(self, job_id: UUID, _version: int, _status: str | None) -> None:
        self._pending.add(job_id)
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(BATCH_SECONDS)  # let a burst of changes gather into one read
            self._wake.clear()  # before taking the ids: a change after this wakes us again
            ids, self._pending = self._pending, set()
            try:
                changed = await self._jobs.get_many(ids)
            except JobkeeperError as exc:  # Postgres away: the next change retries
                log.warning("dashboard live rows: %s", exc)
                continue
            for job in changed:
                for queue in self._watchers.get(job.tenant, ()):
                    _offer(queue, job)

    async def _stop(self) -> None:
        # detach everything before awaiting: a watcher arriving meanwhile starts afresh
        unsubscribe, pump = self._unsubscribe, self._pump
        self._unsubscribe = self._pump = None
        self._pending.clear()
        self._wake.clear()
        if unsubscribe is not None:
            unsubscribe()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


def _offer(queue: asyncio.Queue[Job], job: Job) -> None:
    if queue.full():
        queue.get_nowait()  # the oldest row goes; a newer snapshot follows for every job
    queue.put_nowait(job)


def live_row(job: Job) -> dict[str, Any]:
    """What a live row carries: enough to redraw a job's row, bar and buttons, and the inbox
    card of its question (who it is for, who holds it, its version and deadline)."""
    return {
        "id": str(job.id),
        "kind": job.kind,
        "status": job.status.value,
        "fraction": job.progress.fraction,
        "message": job.progress.message,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "cancel_requested": job.cancel_requested,
        "pinned": job.pinned,
        "version": job.version,
        "created_at": job.created_at.isoformat(),
        "updated_at": job.updated_at.isoformat(),
        "question": question_state(job),
    }
