"""The change feed: every committed change to a job reaches this process's cache.

Two paths, one rule (a change is applied as ``invalidate(job_id, version)``, which is idempotent):

* **notify** (default): each writing process announces its changes right after they commit
  (``postgres/notify.py`` owns the wire format); one dedicated connection per process LISTENs,
  so changes arrive about a millisecond after commit.
* **catch-up**: a query over ``job_events`` past a commit-order-safe cursor (see
  ``postgres/notify.py``). It runs after every (re)connect, so changes committed while the
  listener was away are never lost, and every ``interval`` seconds as a safety net and health
  check. In **poll** mode (for transaction-mode poolers, where LISTEN does not work) it is the
  only path, and writers send no notifications.

The feed *vouches* for the cache only while it is connected and its last catch-up is recent; the
manager reads through to Postgres otherwise. ``docs/consistency.md`` states the resulting bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import asyncpg

from jobkeeper.clock import nap
from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.postgres import CANCEL_REQUESTED, EXPIRED_VERSION, Change, FeedConnection
from jobkeeper.postgres.notify import catch_up, decode, open_feed
from jobkeeper.postgres.pool import LINK_ERRORS, Database

__all__ = [
    "CANCEL_REQUESTED",
    "EXPIRED_VERSION",
    "BatchListener",
    "Change",
    "ChangeFeed",
    "ChangeListener",
    "FeedMode",
    "FeedStatus",
]

FeedMode = Literal["notify", "poll"]
# called with (job_id, version, status); status is None when a catch-up found the change
ChangeListener = Callable[[UUID, int, str | None], object]
# called with each batch of changes as notified (``Change``, job ids as text): the cheap form for
# a listener that cares about few of many changes, which picks out its own with set operations
BatchListener = Callable[[Sequence[Change]], object]
log = logging.getLogger("jobkeeper.feed")

# what ends a connection, or a round of the loop, without being a bug
_LOST = (*LINK_ERRORS, DatabaseUnavailable, asyncpg.PostgresError)
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


@dataclass(frozen=True, slots=True)
class FeedStatus:
    """The feed's health, for readiness checks and metrics."""

    mode: FeedMode
    connected: bool
    vouching: bool
    seconds_since_sync: float | None
    notifications: int
    catch_ups: int
    reconnects: int


class ChangeFeed:
    """Keeps one process in step with every committed change (see the module docstring)."""

    def __init__(
        self,
        database: Database,
        *,
        mode: FeedMode,
        interval: float,
        max_jobs: int,
        on_reset: Callable[[], object],
        clock: Callable[[], float] = time.monotonic,
        catch_up: bool = True,
        work_only: bool = False,
    ) -> None:
        self._database = database
        self._work_only = work_only
        # without a cache to repair (notify mode, a worker process), listeners hear notifications
        # only; each has its own fallback (a worker polls, watch()'s fan-out sweeps), so the
        # catch-up query, which reads every event since the last, would serve nobody
        self._catches_up = catch_up or mode == "poll"
        self._mode: FeedMode = mode
        self._interval = interval
        self._max_jobs = max_jobs
        self._listeners: list[ChangeListener] = []
        self._batch_listeners: list[BatchListener] = []
        self._on_reset = on_reset
        self._clock = clock
        # a catch-up older than this no longer vouches: the loop missed two rounds
        self._max_lag = 2 * interval + 1.0
        self._conn: FeedConnection | None = None
        self._cursor: int | None = None
        self._synced_at: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._notifications = self._catch_ups = self._reconnects = 0

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener`` for every change (in the order subscribed); returns an unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def subscribe_batches(self, listener: BatchListener) -> Callable[[], None]:
        """Call ``listener`` with each batch of changes in their cheap form (``Change``)."""
        self._batch_listeners.append(listener)
        return lambda: self._batch_listeners.remove(listener)

    def _batch_changed(self, changes: Sequence[Change]) -> None:
        for listener in tuple(self._batch_listeners):
            try:
                listener(changes)
            except Exception:
                log.exception("change listener %r failed", listener)

    def _changed(self, job_id: UUID, version: int, status: str | None) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(job_id, version, status)
            except Exception:  # one faulty listener must not starve the others or the cache
                log.exception("change listener %r failed", listener)

    async def start(self) -> None:
        """Connect and take the starting cursor (raises ``DatabaseUnavailable``), then run."""
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="jobkeeper-change-feed")

    async def close(self) -> None:
        """Stop the background task and close the connection; idempotent."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drop_connection()

    @property
    def interval(self) -> float:
        """Seconds between catch-ups: the longest a missed notification can go unnoticed."""
        return self._interval

    def vouches(self) -> bool:
        """Whether cached entries may be served: connected and recently in sync."""
        conn, synced_at = self._conn, self._synced_at
        if conn is None or synced_at is None or conn.is_closed():
            return False
        return self._clock() - synced_at <= self._max_lag

    def status(self) -> FeedStatus:
        conn = self._conn
        return FeedStatus(
            mode=self._mode,
            connected=conn is not None and not conn.is_closed(),
            vouching=self.vouches(),
            seconds_since_sync=None if self._synced_at is None else self._clock() - self._synced_at,
            notifications=self._notifications,
            catch_ups=self._catch_ups,
            reconnects=self._reconnects,
        )

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._drop_connection()
                    self._reconnects += 1
                    await self._connect()
                    log.info("change feed reconnected after %d failed attempts", failures)
                    failures = 0
                await nap(self._wake, self._interval)
                if self._conn is not None and not self._conn.is_closed():
                    await self._catch_up()
            except _LOST as exc:
                failures += 1
                self._lost(exc, failures)
            except Exception as exc:  # a bug must not end the feed: the cache is bypassed meanwhile
                failures += 1
                log.exception("change feed failed unexpectedly")
                self._lost(exc, failures)
            else:
                continue
            await self._drop_connection()
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(failures, 10))
            await nap(self._wake, delay * random.uniform(0.5, 1.0))

    def _lost(self, exc: BaseException, failures: int) -> None:
        self._synced_at = None
        if failures == 1:
            log.warning("change feed lost (%s); the cache is bypassed until it is back", exc)

    async def _connect(self) -> None:
        listen = self._on_payload if self._mode == "notify" else None
        self._conn = await open_feed(
            self._database, listen=listen, on_lost=self._on_lost, work_only=self._work_only
        )
        if self._cursor is None:
            # the cache starts empty, so history before this point is not needed
            self._cursor = await self._conn.horizon()
        # LISTEN is active before this catch-up, so nothing falls between the two paths
        await self._catch_up()

    async def _catch_up(self) -> None:
        conn, cursor = self._conn, self._cursor
        if conn is None or cursor is None:
            raise DatabaseUnavailable("change feed is not connected")
        started = self._clock()
        await conn.ping()  # the LISTEN connection is alive (the catch-up runs on the pool)
        if not self._catches_up:
            self._synced_at = started
            return
        found = await catch_up(self._database, cursor, self._max_jobs)
        if found.truncated:
            self._on_reset()  # more changed jobs than the cache holds: drop everything
        else:
            for job_id, version in found.changes:
                self._changed(job_id, version, None)
            if self._batch_listeners and found.changes:
                self._batch_changed(
                    [Change(str(job_id), version, None) for job_id, version in found.changes]
                )
        self._cursor = found.cursor
        self._synced_at = started
        self._catch_ups += 1

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    # --- callbacks from the connection (run on the event loop) --------------------------------

    def _on_payload(self, payload: str) -> None:
        self._notifications += 1
        try:
            changes = decode(payload)
            parsed = (
                [(UUID(c.job_id), c.version, c.status) for c in changes] if self._listeners else []
            )
        except ValueError as exc:
            log.warning("ignoring malformed change notification %r: %s", payload[:200], exc)
            self._wake.set()  # a catch-up finds whatever it described
            return
        self._batch_changed(changes)
        for job_id, version, status in parsed:
            self._changed(job_id, version, status)

    def _on_lost(self) -> None:
        self._synced_at = None
        self._wake.set()
