"""The hot cache: version awareness, no stale fills, floors, TTL, bounds, threads, and the manager.

Unit tests drive ``JobCache`` directly with a fake clock (no sleeping); the DB-backed tests at the
end use a real Postgres through ``JobManager``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sys
import threading
from collections.abc import Iterator
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jobkeeper.cache import JobCache, Ticket
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.errors import JobNotFound
from jobkeeper.manager import JobManager
from jobkeeper.testing import data_layer
from support import make_job

TTL = 10.0
FLOOR_MAP_MIN = 1024  # JobCache keeps max(2 * maxsize, 1024) floors


class FakeClock:
    """A timer for ``JobCache``: returns ``now``; adds ``step`` after every read (0: frozen)."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.step = 0.0

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> JobCache:
    return JobCache(8, TTL, timer=clock)


def version_of(cache: JobCache, job_id: UUID) -> int | None:
    job = cache.get(job_id)
    return None if job is None else job.version


def flood_floors(cache: JobCache, count: int = FLOOR_MAP_MIN + 8) -> None:
    """Tell the cache about ``count`` unrelated jobs: its bounded floor map forgets older ones."""
    for _ in range(count):
        cache.invalidate(uuid4(), 2)  # a floor of 1 is never recorded


# --- 1. version awareness ---------------------------------------------------------------------


def test_older_version_never_replaces_newer(cache: JobCache) -> None:
    job_id = uuid4()
    assert cache.store(make_job(id=job_id, version=2), cache.ticket())
    assert cache.store(make_job(id=job_id, version=1), cache.ticket()) is False
    assert version_of(cache, job_id) == 2
    assert cache.store(make_job(id=job_id, version=3), cache.ticket())
    assert version_of(cache, job_id) == 3
    assert cache.stats().refused_stores == 1


def test_equal_version_is_accepted_and_keeps_the_entry(cache: JobCache) -> None:
    first = make_job(version=4)
    again = dataclasses.replace(first, payload={"other": True})
    assert cache.store(first, cache.ticket())
    assert cache.store(again, cache.ticket())
    assert cache.get(first.id) is first


# --- 2. no stale fills --------------------------------------------------------------------------


def test_slow_fill_after_newer_write_is_refused(cache: JobCache) -> None:
    job_id = uuid4()
    reader_ticket = cache.ticket()  # a reader sends its SELECT and sees v1 ...
    writer_ticket = cache.ticket()
    assert cache.store(make_job(id=job_id, version=2), writer_ticket)  # ... a write commits v2
    assert cache.store(make_job(id=job_id, version=1), reader_ticket) is False
    assert version_of(cache, job_id) == 2


def test_slow_fill_after_invalidation_of_uncached_job_is_refused(cache: JobCache) -> None:
    job_id = uuid4()
    reader_ticket = cache.ticket()
    assert cache.invalidate(job_id, 2) is False  # nothing cached to drop
    assert cache.store(make_job(id=job_id, version=1), reader_ticket) is False
    assert cache.get(job_id) is None
    assert cache.store(make_job(id=job_id, version=2), reader_ticket)
    assert version_of(cache, job_id) == 2


def test_invalidate_with_newer_version_drops_entry(cache: JobCache) -> None:
    job_id = uuid4()
    cache.store(make_job(id=job_id, version=3), cache.ticket())
    assert cache.invalidate(job_id, 5) is True
    assert cache.get(job_id) is None


@pytest.mark.parametrize("told", [1, 3])
def test_invalidate_with_older_or_equal_version_keeps_entry(cache: JobCache, told: int) -> None:
    job = make_job(version=3)
    cache.store(job, cache.ticket())
    assert cache.invalidate(job.id, told) is False
    assert cache.get(job.id) is job


def test_invalidate_raises_the_floor(cache: JobCache) -> None:
    job_id = uuid4()
    cache.store(make_job(id=job_id, version=3), cache.ticket())
    cache.invalidate(job_id, 5)
    assert cache.store(make_job(id=job_id, version=4), cache.ticket()) is False
    assert cache.get(job_id) is None
    assert cache.store(make_job(id=job_id, version=5), cache.ticket())
    assert version_of(cache, job_id) == 5


# --- 3. floors survive eviction and expiry -------------------------------------------------------


def test_floor_survives_lru_eviction(clock: FakeClock) -> None:
    cache = JobCache(2, TTL, timer=clock)
    a = uuid4()
    old_ticket = cache.ticket()
    assert cache.store(make_job(id=a, version=3), old_ticket)
    cache.store(make_job(version=1), cache.ticket())
    cache.store(make_job(version=1), cache.ticket())
    assert cache.get(a) is None
    assert cache.stats().evictions == 1
    assert cache.store(make_job(id=a, version=2), old_ticket) is False
    assert cache.store(make_job(id=a, version=2), cache.ticket()) is False
    assert cache.get(a) is None
    assert cache.store(make_job(id=a, version=3), old_ticket)
    assert version_of(cache, a) == 3


def test_floor_survives_ttl_expiry(cache: JobCache, clock: FakeClock) -> None:
    a = uuid4()
    old_ticket = cache.ticket()
    assert cache.store(make_job(id=a, version=3), old_ticket)
    clock.now = TTL
    assert cache.expire() == 1
    assert cache.stats().expirations == 1
    assert cache.store(make_job(id=a, version=2), old_ticket) is False
    assert cache.get(a) is None
    assert cache.store(make_job(id=a, version=3), old_ticket)
    assert version_of(cache, a) == 3


# --- 4. forgotten floors ---------------------------------------------------------------------


def test_forgotten_floor_refuses_tickets_older_than_the_forgetting(clock: FakeClock) -> None:
    cache = JobCache(1, TTL, timer=clock)  # floor map holds 1024 jobs
    a = uuid4()
    before = cache.ticket()
    assert cache.store(make_job(id=a, version=2), before)
    cache.store(make_job(version=1), cache.ticket())  # evicts a; its floor (2) stays
    assert cache.get(a) is None
    refused = cache.stats().refused_stores

    flood_floors(cache)  # a's floor is forgotten

    # With the floor still known, v2 would be accepted (2 >= floor 2); refusing it proves the
    # bucket rule: the cache cannot vouch for a ticket taken before it forgot the job.
    assert cache.store(make_job(id=a, version=2), before) is False
    assert cache.get(a) is None
    assert cache.stats().refused_stores == refused + 1
    after = cache.ticket()
    assert cache.store(make_job(id=a, version=2), after)
    assert version_of(cache, a) == 2
    assert cache.stats().refused_stores == refused + 1


def test_late_older_invalidation_after_forgetting_does_not_admit_stale_fill(
    clock: FakeClock,
) -> None:
    # Regression: store() used to consult the forgotten bucket only when the job had no floor.
    cache = JobCache(1, TTL, timer=clock)
    a = uuid4()
    reader_ticket = cache.ticket()  # a slow reader's SELECT sees v2 (v3 not yet committed)
    assert cache.store(make_job(id=a, version=3), cache.ticket())  # our own write of v3
    assert version_of(cache, a) == 3
    cache.store(make_job(version=1), cache.ticket())  # evicts a; floor 3
    flood_floors(cache)  # floor of a forgotten; its bucket remembers when
    cache.invalidate(a, 2)  # notification of v2 (committed before v3) arrives late
    cache.store(make_job(id=a, version=2), reader_ticket)  # the slow fill lands
    got = version_of(cache, a)
    assert got is None or got >= 3, f"cache served v{got} after having served v3"


def test_entry_is_never_replaced_by_older_version_even_with_its_floor_forgotten(
    clock: FakeClock,
) -> None:
    cache = JobCache(1, TTL, timer=clock)
    job = make_job(version=3)
    cache.store(job, cache.ticket())
    flood_floors(cache)  # the entry stays, its floor is forgotten
    assert cache.store(make_job(id=job.id, version=2), cache.ticket()) is False
    assert cache.get(job.id) is job


@pytest.mark.parametrize("drop", ["evict", "expire"])
def test_dropping_an_entry_whose_floor_was_forgotten_remembers_its_version(
    clock: FakeClock, drop: str
) -> None:
    cache = JobCache(1, TTL, timer=clock)
    a = uuid4()
    cache.store(make_job(id=a, version=3), cache.ticket())
    flood_floors(cache)  # a stays cached, its floor is forgotten
    ticket = cache.ticket()  # taken after the forgetting: the bucket rule does not refuse it
    if drop == "evict":
        cache.store(make_job(version=1), cache.ticket())
        assert cache.stats().evictions == 1
    else:
        clock.now = TTL
        assert cache.expire() == 1
    assert cache.get(a) is None
    assert cache.store(make_job(id=a, version=2), ticket) is False
    assert cache.get(a) is None


# --- 5. TTL -------------------------------------------------------------------------------------


def test_entry_is_served_before_ttl_and_not_after(cache: JobCache, clock: FakeClock) -> None:
    job = make_job(version=1)
    cache.store(job, cache.ticket())
    clock.now = TTL - 0.001
    assert cache.get(job.id) is job
    clock.now = TTL
    assert cache.get(job.id) is None


def test_expire_returns_number_removed_and_counts_them(cache: JobCache, clock: FakeClock) -> None:
    early = [make_job() for _ in range(3)]
    for job in early:
        cache.store(job, cache.ticket())
    clock.now = 5.0
    late = make_job()
    cache.store(late, cache.ticket())
    assert cache.expire() == 0
    clock.now = TTL + 1.0  # the early ones expired at 10, the late one expires at 15
    assert cache.expire() == 3
    assert cache.expire() == 0
    stats = cache.stats()
    assert stats.expirations == 3
    assert stats.size == 1
    assert stats.evictions == 0
    assert cache.get(late.id) is late
    assert all(cache.get(job.id) is None for job in early)


def test_expired_entry_not_yet_removed_does_not_let_an_older_version_in(
    cache: JobCache, clock: FakeClock
) -> None:
    a = uuid4()
    cache.store(make_job(id=a, version=3), cache.ticket())
    clock.now = TTL  # expired, but nothing has removed it yet
    assert cache.get(a) is None
    assert cache.store(make_job(id=a, version=2), cache.ticket()) is False
    assert cache.get(a) is None
    assert cache.store(make_job(id=a, version=3), cache.ticket())
    assert version_of(cache, a) == 3


# --- 6. bound -------------------------------------------------------------------------------------


def test_cache_stays_bounded_and_counts_evictions(clock: FakeClock) -> None:
    maxsize = 16
    cache = JobCache(maxsize, TTL, timer=clock)
    jobs = [make_job() for _ in range(10 * maxsize)]
    for job in jobs:
        assert cache.store(job, cache.ticket())
    stats = cache.stats()
    assert stats.size <= maxsize
    assert stats.maxsize == maxsize
    assert stats.evictions == 9 * maxsize
    assert all(cache.get(job.id) is job for job in jobs[-maxsize:])  # LRU keeps the newest


# --- 7. hits and misses ----------------------------------------------------------------------


def test_hit_and_miss_counters(cache: JobCache, clock: FakeClock) -> None:
    job = make_job()
    assert cache.get(job.id) is None
    cache.store(job, cache.ticket())
    assert cache.get(job.id) is job
    assert cache.get(job.id) is job
    assert cache.get(uuid4()) is None
    clock.now = TTL
    assert cache.get(job.id) is None  # expired: a miss
    stats = cache.stats()
    assert (stats.hits, stats.misses) == (2, 3)


# --- 8. threads ---------------------------------------------------------------------------------


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("fast_thread_switching")
def test_concurrent_threads_keep_the_invariants() -> None:
    threads_n, ops, maxsize = 8, 5_000, 20
    cache = JobCache(maxsize, 3_600.0)  # the real clock; nothing expires during the test
    keys = [uuid4() for _ in range(50)]
    db_lock = threading.Lock()
    committed = dict.fromkeys(keys, 1)  # "the database": committed version per job
    invalidated = dict.fromkeys(keys, 0)  # highest version ever passed to invalidate()
    errors: list[BaseException] = []
    regressions: list[str] = []
    start = threading.Barrier(threads_n)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        seen: dict[UUID, int] = {}
        # stores whose statement already ran: (ticket, job, version); finished later, out of order
        in_flight: list[tuple[Ticket, UUID, int]] = []

        def finish_one() -> None:
            ticket, key, version = in_flight.pop(rng.randrange(len(in_flight)))
            cache.store(make_job(id=key, version=version), ticket)

        try:
            start.wait()
            for _ in range(ops):
                key = rng.choice(keys)
                op = rng.random()
                if op < 0.3:  # own write (ticket, commit) or read-through fill (ticket, SELECT)
                    ticket = cache.ticket()
                    with db_lock:
                        if op < 0.15:
                            committed[key] += 1
                        version = committed[key]
                    in_flight.append((ticket, key, version))
                    if rng.random() < 0.5 or len(in_flight) > 8:
                        finish_one()
                elif op < 0.4:
                    if in_flight:
                        finish_one()
                elif op < 0.52:  # change notification
                    with db_lock:
                        version = committed[key]
                        invalidated[key] = max(invalidated[key], version)
                    cache.invalidate(key, version)
                elif op < 0.55:
                    cache.ticket()
                else:
                    got = cache.get(key)
                    if got is not None:
                        assert got.id == key
                        if got.version < seen.get(key, 0):
                            regressions.append(f"{key}: v{got.version} after v{seen[key]}")
                        seen[key] = max(seen.get(key, 0), got.version)
            while in_flight:
                finish_one()
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()

    assert errors == []
    assert regressions == []
    stats = cache.stats()
    assert stats.size <= maxsize
    assert stats.evictions > 0
    for key in keys:
        got = cache.get(key)
        assert got is None or invalidated[key] <= got.version <= committed[key]


# --- 9. stateful model ---------------------------------------------------------------------


class CacheMachine(RuleBasedStateMachine):
    """``JobCache`` against a model database with slow readers, writers and notifications."""

    KEYS = 4

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cache = JobCache(3, TTL, timer=self.clock)
        self.keys = [uuid4() for _ in range(self.KEYS)]
        self.db = dict.fromkeys(self.keys, 1)
        # tickets taken, each with the database as a read sent right then would see it
        self.tickets: list[tuple[Ticket, dict[UUID, int]]] = []
        # committed own writes not yet stored: (key, version, ticket taken before the commit)
        self.pending: list[tuple[UUID, int, Ticket]] = []
        self.known = dict.fromkeys(self.keys, 0)  # max version invalidated or stored (True)
        self.returned = dict.fromkeys(self.keys, 0)  # max version get() returned
        self.floods = 0

    def _store(self, key: UUID, version: int, ticket: Ticket) -> None:
        assert version <= self.db[key]
        if self.cache.store(make_job(id=key, version=version), ticket):
            self.known[key] = max(self.known[key], version)

    @rule()
    def take_ticket(self) -> None:
        self.tickets.append((self.cache.ticket(), dict(self.db)))

    @rule(k=st.integers(0, KEYS - 1), store_now=st.booleans())
    def commit(self, k: int, store_now: bool) -> None:
        key = self.keys[k]
        ticket = self.cache.ticket()
        self.db[key] += 1
        if store_now:
            self._store(key, self.db[key], ticket)
        else:
            self.pending.append((key, self.db[key], ticket))

    @precondition(lambda self: bool(self.pending))
    @rule(i=st.integers(0, 1_000))
    def store_own_write(self, i: int) -> None:
        self._store(*self.pending.pop(i % len(self.pending)))

    @precondition(lambda self: bool(self.tickets))
    @rule(i=st.integers(0, 1_000), k=st.integers(0, KEYS - 1))
    def slow_fill(self, i: int, k: int) -> None:
        ticket, snapshot = self.tickets[i % len(self.tickets)]
        key = self.keys[k]
        self._store(key, snapshot[key], ticket)

    @rule(k=st.integers(0, KEYS - 1))
    def fresh_fill(self, k: int) -> None:
        ticket = self.cache.ticket()
        key = self.keys[k]
        self._store(key, self.db[key], ticket)

    @rule(k=st.integers(0, KEYS - 1))
    def invalidate(self, k: int) -> None:
        key = self.keys[k]
        self.cache.invalidate(key, self.db[key])
        self.known[key] = max(self.known[key], self.db[key])

    @rule(dt=st.sampled_from([1.0, TTL / 2, TTL]))
    def advance_clock(self, dt: float) -> None:
        self.clock.now += dt

    @rule()
    def expire(self) -> None:
        self.cache.expire()

    @precondition(lambda self: self.floods < 2)  # each flood is ~1,000 calls: keep it rare
    @rule()
    def flood(self) -> None:
        self.floods += 1
        flood_floors(self.cache)

    @invariant()
    def reads_never_go_back(self) -> None:
        for key in self.keys:
            job = self.cache.get(key)
            if job is None:
                continue
            assert job.id == key
            assert job.version >= self.returned[key], "a read went back in time"
            assert job.version >= self.known[key], "older than a version the cache was told about"
            assert job.version <= self.db[key], "a version that was never committed"
            self.returned[key] = job.version

    @invariant()
    def bounded(self) -> None:
        assert self.cache.stats().size <= 3


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# --- reset ------------------------------------------------------------------------------------


def test_reset_drops_everything_and_refuses_older_tickets(cache: JobCache) -> None:
    jobs = [make_job(version=3) for _ in range(3)]
    before = cache.ticket()
    for job in jobs:
        cache.store(job, before)
    cache.reset()
    assert cache.stats().size == 0
    assert all(cache.get(job.id) is None for job in jobs)
    assert cache.store(make_job(id=jobs[0].id, version=3), before) is False
    assert cache.store(make_job(version=1), before) is False  # a job it never saw: cannot vouch
    after = cache.ticket()
    assert cache.store(make_job(id=jobs[0].id, version=2), after) is False  # floor kept
    assert cache.store(make_job(id=jobs[0].id, version=3), after)
    assert version_of(cache, jobs[0].id) == 3


def test_reset_remembers_versions_of_entries_whose_floor_was_forgotten(clock: FakeClock) -> None:
    cache = JobCache(1, TTL, timer=clock)
    a = uuid4()
    cache.store(make_job(id=a, version=3), cache.ticket())
    flood_floors(cache)  # a stays cached, its floor is forgotten
    cache.reset()
    assert cache.store(make_job(id=a, version=2), cache.ticket()) is False
    assert cache.get(a) is None


# --- regression: invalidate() when the entry expires during the call ----------------------------


def test_invalidate_does_not_raise_when_entry_expires_during_the_call(
    cache: JobCache, clock: FakeClock
) -> None:
    # Regression: invalidate() used `del` after a frozen-timer get(); the del read the clock again.
    job = make_job(version=1)
    cache.store(job, cache.ticket())  # at t=0: expires at t=TTL
    clock.now, clock.step = TTL - 0.5, 1.0  # the clock moves on while invalidate() runs
    assert cache.invalidate(job.id, 2) in (True, False)
    clock.step = 0.0
    assert cache.get(job.id) is None


def test_invalidate_drops_entry_whatever_instant_it_expires() -> None:
    for offset in range(6):  # wherever the expiry instant falls among store()'s clock reads
        clock = FakeClock()
        cache = JobCache(8, TTL, timer=clock)
        job = make_job(version=1)
        clock.step = 1.0  # each clock read during the store is a second later than the one before
        cache.store(job, cache.ticket())
        clock.step = 0.0
        clock.now = TTL + offset + 0.5
        cache.invalidate(job.id, 2)
        got = cache.get(job.id)
        assert got is None or got.version >= 2, f"v{got.version} served after invalidate(v2)"


# --- 10. through JobManager, on a real Postgres -----------------------------------------------


async def test_manager_cache_is_bounded_and_reads_fall_back_to_postgres(
    database_url: str, tenant: str
) -> None:
    async with await JobManager.connect(database_url, cache_size=50) as manager:
        submitted = [await manager.submit(tenant, "cache.bound", {"i": i}) for i in range(500)]
        for i, job in enumerate(submitted):
            got = await manager.get(job.id, tenant=tenant)
            assert got == job
            assert got.payload == {"i": i}
        stats = manager.cache_stats()
    assert stats.maxsize == 50
    assert stats.size <= 50
    assert stats.evictions >= 450
    assert stats.misses >= 450


async def test_raced_read_never_plants_older_version_than_completed_cancel(
    database_url: str, tenant: str
) -> None:
    # Poll mode with a long interval: no change notification reaches this manager during the test,
    # so only the cache's tickets and floors can keep a raced v1 out (the feed cannot mask it).
    async with (
        await JobManager.connect(database_url) as submitter,
        await JobManager.connect(database_url, feed_mode="poll", feed_interval=60.0) as manager,
    ):

        async def race(i: int, job_id: UUID) -> None:
            read = manager.get(job_id, tenant=tenant)
            cancel = manager.cancel(job_id, tenant=tenant)
            if i % 2:
                got, cancelled = await asyncio.gather(read, cancel)
            else:
                cancelled, got = await asyncio.gather(cancel, read)
            assert got.version in (1, 2)
            assert (cancelled.status, cancelled.version) == (JobStatus.CANCELLED, 2)

        # submitted elsewhere, so this manager's cache has never seen these jobs
        jobs = [await submitter.submit(tenant, "cache.race", {}) for _ in range(200)]
        for start in range(0, len(jobs), 10):  # 10 races at a time: the pool has 10 connections
            await asyncio.gather(*(race(i, job.id) for i, job in enumerate(jobs[start:][:10])))
        for job in jobs:
            hits = manager.cache_stats().hits
            after = await manager.get(job.id, tenant=tenant)
            assert manager.cache_stats().hits == hits + 1  # served by the cache
            assert after.version == 2, f"cache served v{after.version} after the cancel"
            assert after == await manager.get(job.id, tenant=tenant, consistency="strong")


async def test_read_finishing_after_a_stored_cancel_is_refused(
    database_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race above, forced: the read's real SELECT sees v1, its result is held back until the
    cancel (v2) is committed and stored, then the manager tries to store v1."""
    async with (
        await JobManager.connect(database_url) as submitter,
        await JobManager.connect(database_url, feed_mode="poll", feed_interval=60.0) as manager,
    ):
        repository = data_layer(manager).jobs
        real_get = repository.get
        read_done = asyncio.Event()
        release = asyncio.Event()

        async def slow_get(job_id: UUID, tenant: str) -> Job | None:
            job = await real_get(job_id, tenant)
            read_done.set()
            await release.wait()
            return job

        monkeypatch.setattr(repository, "get", slow_get)
        for _ in range(20):
            job = await submitter.submit(tenant, "cache.race", {})
            read_done.clear()
            release.clear()
            refused = manager.cache_stats().refused_stores
            read = asyncio.create_task(manager.get(job.id, tenant=tenant))
            await read_done.wait()
            cancelled = await manager.cancel(job.id, tenant=tenant)
            assert cancelled.version == 2
            release.set()
            assert (await read).version == 1  # the caller gets what it read ...
            assert manager.cache_stats().refused_stores == refused + 1  # ... the cache refuses it
            after = await manager.get(job.id, tenant=tenant)
            assert after is cancelled


async def test_cache_hits_are_shared_frozen_snapshots(job_manager: JobManager, tenant: str) -> None:
    job = await job_manager.submit(tenant, "cache.frozen", {"a": [1, {"b": 2}]})
    hits = job_manager.cache_stats().hits
    first = await job_manager.get(job.id, tenant=tenant)
    second = await job_manager.get(job.id, tenant=tenant)
    assert first is second
    assert job_manager.cache_stats().hits == hits + 2
    with pytest.raises(TypeError):
        first.payload["a"] = 1
    with pytest.raises(TypeError):
        first.payload["a"][1]["b"] = 3
    with pytest.raises(AttributeError):
        first.payload["a"].append(2)  # arrays are tuples
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = JobStatus.CANCELLED  # type: ignore[misc]
    assert (await job_manager.get(job.id, tenant=tenant)).payload == {"a": (1, {"b": 2})}


async def test_cache_hit_of_another_tenant_is_not_found(
    job_manager: JobManager, tenant: str
) -> None:
    job = await job_manager.submit(tenant, "cache.tenant", {})
    assert job_manager.cache_stats().size >= 1
    with pytest.raises(JobNotFound):
        await job_manager.get(job.id, tenant=f"{tenant}-other")


def test_a_cache_of_size_zero_holds_nothing(clock: FakeClock) -> None:
    cache = JobCache(0, TTL, timer=clock)
    job = make_job(version=3)
    assert not cache.enabled
    assert cache.store(job, cache.ticket()) is False
    assert cache.get(job.id) is None
    assert cache.invalidate(job.id, 4) is False
    assert cache.stats().size == 0
