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
cannot be mutated, so no copy is needed. ``TTLCache`` does the bookkeeping (bound, least recently
stored first out, expiry); hits are served from a plain dict of ``(job, expires_at)`` that mirrors
it, because ``TTLCache.__getitem__`` alone costs more than the rest of a hit (benchmarks.md).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cachetools import LRUCache, TTLCache

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


class _Entries(TTLCache[UUID, Job]):
    """``TTLCache`` that reports every job it drops by LRU eviction or by expiry."""

    def __init__(
        self,
        maxsize: int,
        ttl: float,
        timer: Callable[[], float],
        on_evict: Callable[[Job], None],
        on_expire: Callable[[Job], None],
    ) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self._on_evict = on_evict
        self._on_expire = on_expire

    def popitem(self) -> tuple[UUID, Job]:
        key, job = super().popitem()
        self._on_evict(job)
        return key, job

    def expire(self, time: Any = None) -> list[tuple[UUID, Job]]:
        expired: list[tuple[UUID, Job]] = super().expire(time)
        for _, job in expired:
            self._on_expire(job)
        return expired


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
        self._entries = _Entries(max(maxsize, 1), ttl, timer, self._evicted, self._expired)
        self._hot: dict[UUID, tuple[Job, float]] = {}  # mirrors _entries: (job, expires_at)
        self._floors = _Floors(max(2 * maxsize, 1024), self._forgot)
        self._forgotten_at = [0] * _BUCKETS
        self._epoch = 0
        self._hits = self._misses = self._evictions = self._expirations = self._refused = 0

    # callbacks, always invoked with the lock held
    def _raise_floor(self, job_id: UUID, version: int) -> None:
        # versions start at 1, so a floor of 1 refuses nothing: a new job costs the bounded
        # floor map no entry, and pushes no other job's floor out
        if version > 1 and self._floors.get(job_id, 0) < version:
            self._floors[job_id] = version

    def _evicted(self, job: Job) -> None:
        self._evictions += 1
        self._hot.pop(job.id, None)
        self._raise_floor(job.id, job.version)

    def _expired(self, job: Job) -> None:
        self._expirations += 1
        self._hot.pop(job.id, None)
        self._raise_floor(job.id, job.version)

    def _forgot(self, job_id: UUID) -> None:
        self._epoch += 1
        self._forgotten_at[hash(job_id) % _BUCKETS] = self._epoch

    def get(self, job_id: UUID) -> Job | None:
        """The cached snapshot, or ``None`` (counted as a hit or a miss)."""
        with self._lock:
            entry = self._hot.get(job_id)
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
            stale = self._forgotten_at[
                hash(job.id) % _BUCKETS
            ] > ticket or job.version < self._floors.get(job.id, 0)
            held = self._hot.get(job.id)
            current = None if held is None else held[0]
            if stale or (current is not None and current.version > job.version):
                self._refused += 1
                return False
            self._raise_floor(job.id, job.version)
            if current is not None and current.version == job.version:
                job = current  # the same committed row, confirmed again: keep it, renew its TTL
            with self._entries.timer as now:  # one clock reading for both structures
                self._entries[job.id] = job
                self._hot[job.id] = (job, now + self._ttl)
            return True

    def invalidate(self, job_id: UUID, version: int) -> bool:
        """``version`` was committed elsewhere: drop an older entry; ``True`` if one was dropped."""
        if not self.enabled:
            return False
        with self._lock:
            self._raise_floor(job_id, version)
            held = self._hot.get(job_id)  # the authority on what get() may serve
            if held is None or held[0].version >= version:
                return False
            self._hot.pop(job_id)
            self._entries.pop(job_id, None)  # may have expired already: pop, never del
            return True

    def reset(self) -> None:
        """Forget every entry and refuse every store whose ticket predates this call.

        For when more jobs changed than can be invalidated one by one (a long feed outage).
        """
        with self._lock:
            for job in self._entries.values():
                self._raise_floor(job.id, job.version)
            self._entries.clear()
            self._hot.clear()
            self._epoch += 1
            self._forgotten_at = [self._epoch] * _BUCKETS

    def expire(self) -> int:
        """Remove expired entries now; returns how many."""
        with self._lock:
            return len(self._entries.expire())

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                refused_stores=self._refused,
                size=len(self._entries),
                maxsize=int(self._entries.maxsize),
            )
