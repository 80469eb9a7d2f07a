"""Live watchers of jobs' events (``JobManager.watch``): ONE change subscription per manager,
fanned out per job.

A watcher reads its job's history once when it starts (and again after a gap). From then on the
hub feeds it: it hears the change feed's batches, reads the new events of every watched job that
changed in ONE statement (one read per batch of changes, however many watch) and hands each
watcher its job's events. Events are shared between the watchers of a job, not copied.

Each job's channel has a cursor, the last sequence number it handed out; it starts at the
history a watcher read (or just before the first change heard) and the next read starts past
it. A job's sequence numbers have no holes (every version has its event), so a watcher that is
handed events not following its last one knows it has a gap and re-reads its history once.

Slow consumers: a watcher holds at most ``backlog`` unread events. Past that its backlog is
dropped and it is told it has a gap: its memory is bounded, and it re-reads what it missed from
Postgres when it catches up. Safety net: every ``interval`` seconds the hub reads past the cursor
of every watched job (one statement), so a notification that never came (a feed reconnecting, a
worker-role manager that hears only work) delays events by at most that long. The hub runs one
task while anyone watches and none otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

from jobkeeper.clock import nap
from jobkeeper.domain.values import JobEvent
from jobkeeper.feed import EXPIRED_VERSION, BatchListener, Change

__all__ = ["BACKLOG", "Subscription", "WatchHub", "WatchStats"]

log = logging.getLogger("jobkeeper.watchers")
# unread events one watcher may hold before it is cut off with a gap
BACKLOG = 1_000
# reads the events of several jobs, each after its own sequence number (every tenant's)
Fetch = Callable[[Mapping[UUID, int]], Awaitable[Mapping[UUID, Sequence[JobEvent]]]]
Subscribe = Callable[[BatchListener], Callable[[], None]]


@dataclass(frozen=True, slots=True)
class WatchStats:
    """The hub's state and counters, for metrics."""

    watchers: int  # open watch() iterators
    jobs: int  # jobs with at least one watcher
    reads: int  # fan-out reads (each serves every watcher of the jobs it read)
    gaps: int  # watchers cut off with a gap (slow, or their job expired)


class Subscription:
    """One watcher's inbox: its job's events in order, or word of a gap."""

    __slots__ = ("_backlog", "_events", "_gap", "_ready", "job_id")

    def __init__(self, job_id: UUID, backlog: int) -> None:
        self.job_id = job_id
        self._backlog = backlog
        self._events: deque[JobEvent] = deque()
        self._gap = False
        self._ready = asyncio.Event()

    def deliver(self, events: Sequence[JobEvent]) -> bool:
        """Queue ``events``; False if that cut the watcher off (its backlog was full)."""
        if self._gap:
            return True  # the re-read that follows the gap finds these too
        if len(self._events) + len(events) > self._backlog:
            self.lose()
            return False
        self._events.extend(events)
        self._ready.set()
        return True

    def lose(self) -> None:
        """Drop what is queued: the watcher re-reads its history instead."""
        self._events.clear()
        self._gap = True
        self._ready.set()

    async def next(self) -> list[JobEvent] | None:
        """The events handed over since the last call (waits for some), or ``None``: some were
        lost, re-read the history."""
        await self._ready.wait()
        self._ready.clear()
        events = list(self._events)
        self._events.clear()
        if self._gap:
            self._gap = False
            return None
        return events


class _Channel:
    """The watchers of one job and the last sequence number handed to them."""

    __slots__ = ("cursor", "job_id", "subscribers")

    def __init__(self, job_id: UUID) -> None:
        self.job_id = job_id
        self.subscribers: set[Subscription] = set()
        self.cursor: int | None = None


class WatchHub:
    """Fans the change feed out to the watchers of each job (see the module docstring)."""

    def __init__(
        self, subscribe: Subscribe, fetch: Fetch, *, interval: float, backlog: int = BACKLOG
    ) -> None:
        self._subscribe = subscribe
        self._fetch = fetch
        self._interval = interval
        self._backlog = backlog
        # keyed by the job id as notified (text), so a batch is matched without parsing it
        self._channels: dict[str, _Channel] = {}
        # changed jobs to read: the lowest version heard (where a channel without cursor starts)
        self._dirty: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._watchers = self._reads = self._gaps = 0

    def open(self, job_id: UUID) -> Subscription:
        """Start feeding a watcher of ``job_id``; ``close`` it when done."""
        key = str(job_id)
        channel = self._channels.get(key)
        if channel is None:
            channel = self._channels[key] = _Channel(job_id)
        subscription = Subscription(job_id, self._backlog)
        channel.subscribers.add(subscription)
        self._watchers += 1
        if self._task is None:
            self._unsubscribe = self._subscribe(self._on_changes)
            self._task = asyncio.create_task(self._run(), name="jobkeeper-watchers")
        return subscription

    def synced(self, subscription: Subscription, seq: int) -> None:
        """The watcher has read its job's history through ``seq``: a channel that has handed
        nothing out yet starts there (one that has keeps its cursor, so no watcher misses
        events between the two; a watcher behind it sees a gap)."""
        channel = self._channels.get(str(subscription.job_id))
        if channel is not None and channel.cursor is None:
            channel.cursor = seq

    def close(self, subscription: Subscription) -> None:
        """Stop feeding the watcher; the hub's task ends after the last one leaves."""
        key = str(subscription.job_id)
        channel = self._channels.get(key)
        if channel is None or subscription not in channel.subscribers:
            return
        channel.subscribers.discard(subscription)
        self._watchers -= 1
        if not channel.subscribers:
            del self._channels[key]
            self._dirty.pop(key, None)
        if not self._channels:
            self._wake.set()  # the task sees nobody left and ends

    def stats(self) -> WatchStats:
        return WatchStats(self._watchers, len(self._channels), self._reads, self._gaps)

    async def stop(self) -> None:
        """Cut every watcher off and end the task (the manager is closing)."""
        for channel in self._channels.values():
            for subscription in channel.subscribers:
                subscription.lose()
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- the task ------------------------------------------------------------------------------

    def _on_changes(self, changes: Sequence[Change]) -> None:
        channels, dirty = self._channels, self._dirty
        heard = False
        for job_id, version, _status in changes:
            channel = channels.get(job_id)
            if channel is None or (channel.cursor is not None and version <= channel.cursor):
                continue
            if version == EXPIRED_VERSION:  # its events are gone: watchers re-read, not found
                self._cut_off(channel)
                continue
            dirty[job_id] = min(version, dirty.get(job_id, version))
            heard = True
        if heard:
            self._wake.set()

    def _cut_off(self, channel: _Channel) -> None:
        for subscription in channel.subscribers:
            subscription.lose()
            self._gaps += 1

    async def _run(self) -> None:
        clock = asyncio.get_running_loop().time
        next_sweep = clock() + self._interval
        try:
            while self._channels:
                await nap(self._wake, max(0.0, next_sweep - clock()))
                # timed, not idle-triggered: changes of some jobs must not postpone the others'
                sweep = clock() >= next_sweep
                if sweep:
                    next_sweep = clock() + self._interval
                due = self._due(sweep=sweep)
                if not due:
                    continue
                try:
                    found = await self._fetch(due)
                except Exception as exc:  # read again at the next change or sweep
                    log.warning("reading watched jobs' events failed (%s); retrying", exc)
                    for job_id, after in due.items():
                        self._dirty.setdefault(str(job_id), after + 1)
                    continue
                self._reads += 1
                self._hand_out(found)
        finally:
            # no await between the last check of _channels and this: an open() that comes
            # after sees no task and starts one
            self._task = None
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def _due(self, *, sweep: bool) -> dict[UUID, int]:
        """Where to read from, per job: the changed jobs (or, in a sweep, every watched job
        with a cursor)."""
        dirty, self._dirty = self._dirty, {}
        due: dict[UUID, int] = {}
        for key in self._channels if sweep else dirty:
            channel = self._channels.get(key)
            if channel is None:
                continue
            if channel.cursor is not None:
                due[channel.job_id] = channel.cursor
            elif key in dirty:
                due[channel.job_id] = dirty[key] - 1
        return due

    def _hand_out(self, found: Mapping[UUID, Sequence[JobEvent]]) -> None:
        for job_id, events in found.items():
            channel = self._channels.get(str(job_id))
            if channel is None:
                continue
            cursor = channel.cursor
            fresh = events if cursor is None else [e for e in events if e.seq > cursor]
            if not fresh:
                continue
            channel.cursor = fresh[-1].seq
            for subscription in channel.subscribers:
                if not subscription.deliver(fresh):
                    self._gaps += 1
