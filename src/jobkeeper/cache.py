"""The hot cache: a bounded TTL map of immutable job snapshots that never goes back in time.

Postgres is the truth; this cache only accelerates reads, under two rules:

* **Version-aware.** An entry is never replaced by an older version of the same job.
* **No stale fills.** A database read that raced a newer write must not plant the older row. Every
  store carries a *ticket* taken before its database statement was sent. The cache keeps a *floor*:
  the highest version it has known for each job it recently dropped or was told about (its own
  writes, change notifications, evictions, expiries). A store below the floor is refused. The floor
  map is bounded; when it forgets a job, the job's hash bucket records the moment, and a store whose
  ticket predates a forgetting in its bucket is refused too (it can only cost a cache fill, never
  correctness). ``reset()`` forgets everything at once, for when the change feed cannot say which
  jobs changed. This is the "lease" idea of memcache at Facebook, applied to versions.

All operations take one ``threading.Lock`` and never await, so the cache is safe for concurrent
asyncio tasks and for handler threads alike. Hits return the stored frozen ``Job`` itself: it
cannot be mutated, so no copy is needed. Entries are ``(job, expires_at)`` in an ``OrderedDict``
in the order they were stored: every entry lives ``ttl`` seconds, so that is also the order they
expire in, and the bound drops the least recently stored first; the C dict does in a dict
operation or two what ``cachetools.TTLCache``'s linked lists did in Python (a batch of a thousand
new jobs spent more time in them than in its own statement: benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from uuid import UUID

from cachetools import LRUCache

from jobkeeper.domain.values import Job

__all__ = ["CacheStats", "JobCache", "Ticket"]

Ticket = int
_BUCKETS = 65_536  # a forgotten floor refuses in-flight fills of 1/65,536 of the jobs


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was created, and its current size."""

    hits: int
    misses: int
    evictions: int
    expirations: int
    refused_stores: int
    size: int
    maxsize: int


class _Floors(LRUCache[UUID, int]):
    """Highest known version per job, bounded; reports each job it forgets."""

    def __init__(self, maxsize: int, on_forget: Callable[[UUID], None]) -> None:
        super().__init__(maxsize=maxsize)
        self._on_forget = on_forget

    def popitem(self) -> tuple[UUID, int]:
        key, version = super().popitem()
        self._on_forget(key)
        return key, version


class JobCache:
    """Bounded, TTL-limited, version-aware cache of ``Job`` snapshots keyed by job id.

    ``maxsize=0`` holds nothing: every ``get`` misses and stores are dropped (worker processes,
    which read little, skip the bookkeeping on their hot path).
    """

    def __init__(
        self, maxsize: int, ttl: float, *, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.enabled = maxsize > 0
        self._lock = threading.Lock()
        self._timer = timer
        self._ttl = ttl
        self._maxsize = max(maxsize, 1)
        # (job, expires_at), least recently stored (so soonest to expire) first
        self._entries: OrderedDict[UUID, tuple[Job, float]] = OrderedDict()
        self._floors = _Floors(max(2 * maxsize, 1024), self._forgot)
        self._forgotten_at = [0] * _BUCKETS
        self._epoch = 0
        self._hits = self._misses = self._evictions = self._expirations = self._refused = 0

    # callbacks, always invoked with the lock held
    def _raise_floor(self, job_id: UUID, version: int) -> None:
        # versions start at 1, so a floor of 1 refuses nothing: a new job (a submit, each job of
        # a batch) costs the bounded floor map no entry, and pushes no other job's floor out
        if version > 1 and self._floors.get(job_id, 0) < version:
            self._floors[job_id] = version

    def _expire(self, now: float) -> int:
        """Drop the entries expired at ``now`` (the oldest stored first); how many."""
        entries, dropped = self._entries, 0
        while entries:
            job, expires_at = next(iter(entries.values()))
            if now < expires_at:
                break
            del entries[job.id]
            self._raise_floor(job.id, job.version)
            dropped += 1
        self._expirations += dropped
        return dropped

    def _forgot(self, job_id: UUID) -> None:
        self._epoch += 1
        self._forgotten_at[hash(job_id) % _BUCKETS] = self._epoch

    def get(self, job_id: UUID) -> Job | None:
        """The cached snapshot, or ``None`` (counted as a hit or a miss)."""
        with self._lock:
            entry = self._entries.get(job_id)
            if entry is None or self._timer() >= entry[1]:
                self._misses += 1
                return None
            self._hits += 1
            return entry[0]

    def ticket(self) -> Ticket:
        """Take before sending the database statement whose result will be stored."""
        with self._lock:
            return self._epoch

    def store(self, job: Job, ticket: Ticket) -> bool:
        """Store a committed snapshot read or written after ``ticket``; ``False`` if refused."""
        if not self.enabled:
            return False
        with self._lock:
            return self._store(job, ticket)

    def store_many(self, jobs: Iterable[Job], ticket: Ticket) -> None:
        """``store`` each of ``jobs`` (a batch written after ``ticket``), under one lock."""
        if not self.enabled:
            return
        with self._lock:
            for job in jobs:
                self._store(job, ticket)

    def _store(self, job: Job, ticket: Ticket) -> bool:
        """``store``, with the lock held."""
        stale = self._forgotten_at[
            hash(job.id) % _BUCKETS
        ] > ticket or job.version < self._floors.get(job.id, 0)
        held = self._entries.get(job.id)
        current = None if held is None else held[0]
        if stale or (current is not None and current.version > job.version):
            self._refused += 1
            return False
        self._raise_floor(job.id, job.version)
        if current is not None and current.version == job.version:
            job = current  # the same committed row, confirmed again: keep it, renew its TTL
        now, entries = self._timer(), self._entries
        self._expire(now)
        entries[job.id] = (job, now + self._ttl)
        entries.move_to_end(job.id)  # stored again: it expires last
        while len(entries) > self._maxsize:
            _, (old, _) = entries.popitem(last=False)
            self._evictions += 1
            self._raise_floor(old.id, old.version)
        return True

    def invalidate(self, job_id: UUID, version: int) -> bool:
        """``version`` was committed elsewhere: drop an older entry; ``True`` if one was dropped."""
        if not self.enabled:
            return False
        with self._lock:
            held = self._entries.get(job_id)
            if held is not None and held[0].version >= version:
                return False  # (its removal raises the floor to its version: no need now)
            self._raise_floor(job_id, version)
            if held is None:
                return False
            del self._entries[job_id]
            return True

    def reset(self) -> None:
        """Forget every entry and refuse every store whose ticket predates this call.

        For when more jobs changed than can be invalidated one by one (a long feed outage).
        """
        with self._lock:
            for job, _ in self._entries.values():
                self._raise_floor(job.id, job.version)
            self._entries.clear()
            self._epoch += 1
            self._forgotten_at = [self._epoch] * _BUCKETS

    def expire(self) -> int:
        """Remove expired entries now; returns how many."""
        with self._lock:
            return self._expire(self._timer())

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                refused_stores=self._refused,
                size=len(self._entries),
                maxsize=self._maxsize,
            )
