"""``JobManager``: the facade over Postgres and the hot cache, and the one way into the data layer.

Writes commit to Postgres first and then store the committed row in the cache; reads try the cache,
fall back to Postgres and warm the cache. Every argument is validated before any I/O, so bad input
raises a typed error and writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import logging
import os
import socket
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from jobkeeper import tracing
from jobkeeper.cache import CacheStats, JobCache, Ticket
from jobkeeper.domain.batch import JobSpec, Submitted, validate_batch
from jobkeeper.domain.questions import (
    Question,
    QuestionPage,
    addressees,
    answer_problems,
    question_of,
    same_json,
    validate_assignee,
)
from jobkeeper.domain.schedules import (
    NewSchedule,
    Schedule,
    next_tick,
    validate_schedule,
    validate_spec,
)
from jobkeeper.domain.status import TERMINAL_EVENTS, JobStatus
from jobkeeper.domain.validate import (
    DEFAULT_SCHEMA,
    MAX_SEQUENCE,
    encode_json,
    optional_text,
    parse_job_id,
    validate_kind,
    validate_new_job,
    validate_tenant,
)
from jobkeeper.domain.values import (
    Job,
    JobCounts,
    JobEvent,
    JobLease,
    JobPage,
    Lease,
    NewJob,
    Progress,
)
from jobkeeper.errors import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidAnswer,
    InvalidRequest,
    JobkeeperError,
    JobNotFound,
    LeaseLost,
    NotWaitingForInput,
    QuestionChanged,
    QuestionClaimed,
    QueueFull,
    ScheduleExists,
    ScheduleNotFound,
)
from jobkeeper.feed import (
    BatchListener,
    Change,
    ChangeFeed,
    ChangeListener,
    FeedMode,
    FeedStatus,
)
from jobkeeper.postgres import EXPIRED_VERSION, Postgres
from jobkeeper.postgres.batch import Full
from jobkeeper.postgres.borrowed import Borrowed, CallerConnection, borrow
from jobkeeper.postgres.keys import KeyStatements
from jobkeeper.postgres.workers import WorkerStatements
from jobkeeper.settings import Settings
from jobkeeper.supervise import until_reachable
from jobkeeper.watchers import WatchHub, WatchStats

__all__ = ["Consistency", "JobManager", "Role"]

log = logging.getLogger("jobkeeper.manager")

Consistency = Literal["cached", "strong"]
# an API process keeps a cache in step with every change; a worker process keeps none and hears
# only the changes workers act on (new work, cancel requests)
Role = Literal["api", "worker"]
_Written = TypeVar("_Written", Job, Job | None, list[Job])
MAX_PAGE = 500
# An idempotent submit whose winning row vanishes (deleted by retention) between the conflicting
# insert and the read is retried; more than this many rounds means something is deleting in a loop.
_SUBMIT_ROUNDS = 3
# a catch-up lists at most this many changed jobs (more than the cache holds: it is reset instead)
_MIN_CATCH_UP = 1_000
# an answer refused for a claim that expired (or a question escalated) just then is tried again
_ANSWER_ROUNDS = 3
MAX_CLAIM_SECONDS = 3_600.0


def _answered_with(job: Job, key: str | None, answer: Any) -> bool:
    """Whether ``key`` (default: the latest answered question) holds this answer."""
    answers = job.answers or {}
    if key is None and answers:
        key = max(answers, key=lambda k: str(answers[k].get("answered_at")))
    entry = answers.get(key) if key is not None else None
    return entry is not None and same_json(entry.get("answer"), json.loads(answer))


def _schedule_id(value: object) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidRequest("schedule_id", f"not a UUID: {value!r}") from None


def _principal(value: object) -> str:
    principal = optional_text("principal", value)
    if principal is None:
        raise InvalidRequest("principal", "who is asking is required")
    return principal


# an inbox cursor: the last question's deadline (microseconds since the epoch, this for none)
# and job id, 24 bytes as 32 base64url characters; any 32 such characters are a cursor
_NO_DEADLINE = -(2**63)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_EARLIEST = (datetime(1, 1, 2, tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LATEST = (datetime(9999, 12, 30, tzinfo=UTC) - _EPOCH) // _MICROSECOND


def _encode_inbox_cursor(question: Question) -> str:
    deadline = question.deadline
    micros = _NO_DEADLINE if deadline is None else (deadline - _EPOCH) // _MICROSECOND
    raw = micros.to_bytes(8, "big", signed=True) + question.job_id.bytes
    return base64.urlsafe_b64encode(raw).decode()


def _decode_inbox_cursor(cursor: str) -> tuple[datetime | None, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor.encode("ascii"))
    except (ValueError, binascii.Error):
        raw = b""
    if len(raw) != 24:
        raise InvalidRequest("cursor", "not a cursor returned by inbox()")
    micros = int.from_bytes(raw[:8], "big", signed=True)
    if micros == _NO_DEADLINE:
        return None, UUID(bytes=raw[8:])
    micros = min(max(micros, _EARLIEST), _LATEST)
    return _EPOCH + micros * _MICROSECOND, UUID(bytes=raw[8:])


def _held_by_other(job: Job, principal: str | None) -> QuestionClaimed | None:
    """``QuestionClaimed`` if someone other than ``principal`` holds the job's question now."""
    holder, until = job.claimed_by, job.claim_expires_at
    if holder is None or until is None or holder == principal or until <= datetime.now(UTC):
        return None
    return QuestionClaimed(job.id, holder, until)


class _NotHeld(JobkeeperError):
    """A release by a principal that holds nothing: not an error, the question as it is."""

    def __init__(self, job: Job) -> None:
        super().__init__("nothing held")
        self.job = job


def _encode_cursor(job_id: UUID) -> str:
    return base64.urlsafe_b64encode(job_id.bytes).rstrip(b"=").decode()


def _decode_cursor(cursor: str) -> UUID:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return UUID(bytes=raw)
    except (ValueError, binascii.Error, TypeError):
        raise InvalidRequest("cursor", "not a cursor returned by list()") from None


def _invalidate(cache: JobCache, changes: Sequence[Change]) -> None:
    """Apply a batch of the feed's changes to the cache. A first version is news to no cache
    (nothing older can be cached, and a floor of 1 refuses nothing), so the new jobs of a
    batch cost no id parsing here."""
    for change in changes:
        if change.version > 1:
            cache.invalidate(UUID(change.job_id), change.version)


class JobManager:
    """Durable job state in Postgres with a bounded, version-aware hot cache in front.

    Open with ``await JobManager.connect(url)`` (or ``async with await JobManager.connect(url)``);
    close with ``await close()``. The change feed keeps the cache in step with changes that other
    processes commit; while it cannot vouch for the cache, reads go to Postgres.
    """

    def __init__(
        self,
        postgres: Postgres,
        cache: JobCache,
        feed: ChangeFeed,
        *,
        max_queued: int | None = None,
        max_queued_per_kind: int | None = None,
        queue_full_retry_after: float = 5.0,
    ) -> None:
        self._pg = postgres
        self._cache = cache
        self._feed = feed
        self._max_queued = max_queued
        self._max_queued_per_kind = max_queued_per_kind
        self._retry_after = queue_full_retry_after
        # each observer with the operations it has no use for
        self._observers: list[tuple[Callable[[str, Job], object], frozenset[str]]] = []
        self._watchers = WatchHub(
            feed.subscribe_batches, postgres.jobs.events_of_many, interval=feed.interval
        )
        # who wrote a change, in the audit trail of questions: this process
        self.replica = f"{socket.gethostname()}:{os.getpid()}"

    @classmethod
    async def connect(
        cls,
        database: str | AsyncEngine,
        *,
        schema: str = DEFAULT_SCHEMA,
        role: Role = "api",
        cache_size: int = 10_000,
        cache_ttl: float = 30.0,
        pool_size: int = 10,
        prepared_statements: bool = True,
        command_timeout: float = 10.0,
        feed_mode: FeedMode = "notify",
        feed_interval: float | None = None,
        max_queued: int | None = None,
        max_queued_per_kind: int | None = None,
        queue_full_retry_after: float = 5.0,
        wait: float = 0.0,
    ) -> JobManager:
        """Open a pool to ``database``, check that Postgres answers and start the change feed.

        ``database`` is a URL (``postgresql://`` or ``postgresql+asyncpg://``) or the
        application's own SQLAlchemy ``AsyncEngine``, whose URL (credentials included) is used:
        jobkeeper opens a pool of its own of ``pool_size`` connections plus one for the change
        feed (docs/embedding.md says how to size both). The tables are those in ``schema``.

        ``feed_mode="poll"`` is for transaction-mode poolers (no LISTEN/NOTIFY), with
        ``prepared_statements=False`` for one that cannot keep them (PgBouncer before 1.21;
        docs/operations.md); every process on one database must use the same mode.
        ``command_timeout``: seconds a statement may take before its connection counts as lost
        (``DatabaseUnavailable``), so a silently dead network link fails reads and writes
        instead of hanging them.
        ``feed_interval`` is the catch-up period (default 1 s with notify, where it is a safety
        net, and 0.25 s with poll, where it is the bound).
        ``max_queued`` (per tenant) and ``max_queued_per_kind`` bound the queue: ``submit`` then
        raises ``QueueFull`` with a ``retry_after`` hint of ``queue_full_retry_after`` seconds.
        ``role="worker"`` (what ``jobkeeper worker`` runs) keeps no cache and hears only the
        changes workers act on; ``cache_size=0`` keeps no cache in an API process (every read
        goes to Postgres).
        ``wait``: seconds to keep trying while Postgres cannot be reached (each failure logged at
        WARNING, with backoff), then ``DatabaseUnavailable`` saying how long it waited; the
        default 0 tries once, as a library call should. A missing schema is raised at once.
        """
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait >= 0:
            raise InvalidRequest("wait", "seconds >= 0")
        if role not in ("api", "worker"):
            raise InvalidRequest("role", "'api' or 'worker'")
        if command_timeout <= 0:
            raise InvalidRequest("command_timeout", "seconds, more than 0")
        if cache_size < 0 or cache_ttl <= 0:
            raise InvalidRequest("cache", "cache_size must be >= 0 and cache_ttl > 0")
        if feed_mode not in ("notify", "poll"):
            raise InvalidRequest("feed_mode", "'notify' or 'poll'")
        for name, limit in (
            ("max_queued", max_queued),
            ("max_queued_per_kind", max_queued_per_kind),
        ):
            if limit is not None and limit < 1:
                raise InvalidRequest(name, "a positive integer or None")
        interval = feed_interval or (1.0 if feed_mode == "notify" else 0.25)
        url = (
            database.url.render_as_string(hide_password=False)
            if isinstance(database, AsyncEngine)
            else database
        )
        postgres = Postgres.create(
            url,
            schema=schema,
            pool_size=pool_size,
            notify=feed_mode == "notify",
            prepared_statements=prepared_statements,
            command_timeout=command_timeout,
        )
        cache = JobCache(cache_size if role == "api" else 0, cache_ttl)
        feed = ChangeFeed(
            postgres.database,
            mode=feed_mode,
            interval=interval,
            max_jobs=max(cache_size, _MIN_CATCH_UP),
            on_reset=cache.reset,
            catch_up=role == "api",
            work_only=role == "worker",
        )
        if cache.enabled:
            feed.subscribe_batches(functools.partial(_invalidate, cache))
        try:
            await until_reachable("connecting to Postgres", postgres.ping, within=wait)
            await feed.start()
        except BaseException:
            await feed.close()
            await postgres.close()
            raise
        return cls(
            postgres,
            cache,
            feed,
            max_queued=max_queued,
            max_queued_per_kind=max_queued_per_kind,
            queue_full_retry_after=queue_full_retry_after,
        )

    @classmethod
    async def from_settings(
        cls, settings: Settings, *, role: Role = "api", wait: float | None = None
    ) -> JobManager:
        """``connect`` with everything taken from ``Settings`` (``JOBKEEPER_*`` variables). A
        process started from settings waits ``settings.startup_wait`` for Postgres (``wait``
        overrides it: the CLI's one-shot commands pass 0)."""
        if not settings.database_url:
            raise InvalidRequest("database_url", "set JOBKEEPER_DATABASE_URL")
        return await cls.connect(
            settings.database_url,
            schema=settings.pg_schema,
            role=role,
            cache_size=settings.cache_size,
            cache_ttl=settings.cache_ttl,
            pool_size=settings.pool_size,
            prepared_statements=settings.prepared_statements,
            command_timeout=settings.command_timeout,
            feed_mode=settings.feed_mode,
            feed_interval=settings.feed_interval,
            max_queued=settings.max_queued,
            max_queued_per_kind=settings.max_queued_per_kind,
            queue_full_retry_after=settings.queue_full_retry_after,
            wait=settings.startup_wait if wait is None else wait,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop the change feed and close every database connection of this manager."""
        await self._watchers.stop()
        await self._feed.close()
        await self._pg.close()

    # --- services that do not touch jobs -----------------------------------------------------

    @property
    def keys(self) -> KeyStatements:
        """API keys (stored by hash): ``create``, ``live``, ``revoke``, ``list``."""
        return self._pg.keys

    @property
    def workers(self) -> WorkerStatements:
        """The registry of worker processes: ``register``, ``heartbeat``, ``unregister``,
        ``live``, ``prune``."""
        return self._pg.workers

    async def ping(self) -> None:
        """``DatabaseUnavailable`` unless Postgres answers, ``SchemaMissing`` without the schema."""
        await self._pg.ping()

    async def queue_depth(self) -> dict[str, int]:
        """How many jobs are queued, running, waiting for input and waiting for their children
        (all tenants)."""
        return await self._pg.jobs.queue_depth()

    # --- writes ------------------------------------------------------------------------------

    async def submit(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        run_after: datetime | None = None,
        pinned: bool = False,
        connection: CallerConnection | None = None,
    ) -> Job:
        """Record a new ``queued`` job and return it.

        With an ``idempotency_key``, repeating the same request returns the job the first one
        created (exactly one row, even under concurrent submits); the same key with a different
        request raises ``IdempotencyConflict``.

        ``connection``: the application's SQLAlchemy ``AsyncSession`` or ``AsyncConnection``, or
        an asyncpg ``Connection``, with its transaction open. The job and its event are then
        written in that transaction: they commit or roll back with the application's rows, no
        worker, replica or cache sees the job before the commit, and workers are told at the
        commit. The returned job is not cached (it may never commit).
        """
        job, _ = await self.submit_or_replay(
            tenant,
            kind,
            payload,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            priority=priority,
            max_attempts=max_attempts,
            run_after=run_after,
            pinned=pinned,
            connection=connection,
        )
        return job

    async def submit_or_replay(
        self,
        tenant: str,
        kind: str,
        payload: Any,
        *,
        idempotency_key: str | None = None,
        concurrency_key: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        run_after: datetime | None = None,
        pinned: bool = False,
        connection: CallerConnection | None = None,
    ) -> tuple[Job, bool]:
        """Like ``submit``, also telling whether this call created the job (``False``: a replay)."""
        new = validate_new_job(
            tenant=tenant,
            kind=kind,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            run_after=run_after,
            idempotency_key=idempotency_key,
            concurrency_key=concurrency_key,
            pinned=pinned,
        )
        on = None if connection is None else await borrow(connection)
        with tracing.submitting((new.kind,)) as span:
            job, created = await self._insert_or_replay(new, on, span.carrier())
            span.message(job)
        return job, created

    async def _insert_or_replay(
        self, new: NewJob, on: Borrowed | None, trace_context: str | None
    ) -> tuple[Job, bool]:
        """Insert ``new``, or find the job its idempotency key already names (``False``)."""
        for _ in range(_SUBMIT_ROUNDS):
            ticket = self._cache.ticket()
            job = await self._pg.jobs.insert(
                new,
                max_queued=self._max_queued,
                max_queued_per_kind=self._max_queued_per_kind,
                on=on,
                notify=self._pg.notifies,
                trace_context=trace_context,
            )
            if job is not None:
                if on is None:  # in the caller's transaction, it may never commit
                    self._remember((job,), ticket, "submitted")
                return job, True
            found = None
            if new.idempotency_key is not None:
                found = await self._pg.jobs.find_by_idempotency_key(
                    new.tenant, new.idempotency_key, on=on
                )
                if found is None:
                    expired = await self._pg.jobs.expired_key(
                        new.tenant, new.idempotency_key, on=on
                    )
                    if expired is not None:
                        raise expired
            if found is None:
                if self._max_queued is None and self._max_queued_per_kind is None:
                    continue  # the key's row vanished between the two statements: insert again
                raise await self._queue_full(new, on)
            job, fingerprint = found
            if fingerprint != new.fingerprint:
                raise IdempotencyConflict(job.idempotency_key or "", job.id)
            if on is None:
                self._cache.store(job, ticket)
            return job, False
        raise RuntimeError("idempotent submit kept losing its row; is something deleting jobs?")

    async def submit_many(
        self,
        tenant: str,
        items: Iterable[JobSpec | Mapping[str, Any]],
        *,
        connection: CallerConnection | None = None,
    ) -> list[Submitted]:
        """Record many new jobs at once, all or nothing: one ``Submitted(job, created)`` per
        item, in the items' order.

        Each item is a ``JobSpec`` (or a mapping of its fields): the options of ``submit``.
        An item whose ``idempotency_key`` holds the same request already returns that job
        (``created`` is ``False``); one whose key holds another request raises
        ``IdempotencyConflict``. Items sharing a key within the batch name one job if their
        requests are the same, else the later one is refused (``InvalidRequest``). Every error
        about an item names it (``index``, and ``item <index>:`` in the message), and then
        nothing is written. ``max_queued`` and ``max_queued_per_kind`` apply to the batch as a
        whole: ``QueueFull`` if its new jobs would not all fit.

        The new jobs and their ``submitted`` events are written by one statement (one round
        trip when no key already exists and no queue limit is set). ``connection`` works as for
        ``submit``: everything happens in the caller's transaction.
        """
        batch = validate_batch(tenant, items)
        on = None if connection is None else await borrow(connection)
        if not batch.rows:
            return []
        with tracing.submitting((row.kind for row in batch.rows), batch=len(batch.rows)) as span:
            written = await self._pg.batch.insert(
                batch,
                max_queued=self._max_queued,
                max_queued_per_kind=self._max_queued_per_kind,
                on=on,
                notify=self._pg.notifies,
                trace_context=span.carrier(),
            )
        if isinstance(written, Full):
            limit = self._max_queued if written.kind is None else self._max_queued_per_kind
            assert limit is not None
            raise QueueFull(batch.tenant, limit, self._retry_after, written.kind)
        # A batch's jobs are not put in the cache (docs/consistency.md): a thousand of them would
        # push out as many hot entries, and storing them cost more than their statement. A read
        # of one misses once and fills it.
        if on is None and self._observers:  # in the caller's transaction, it may never commit
            for job, created in written:
                if created:
                    self._tell("submitted", job)
        seen: set[int] = set()
        submitted = []
        for row in batch.row_of:  # a later item with the same key and request: a replay
            job, created = written[row]
            submitted.append(Submitted(job, created and row not in seen))
            seen.add(row)
        return submitted

    async def _queue_full(self, new: NewJob, on: Borrowed | None) -> QueueFull:
        """Which limit refused the job: the tenant's, unless only the kind's is reached."""
        if self._max_queued is not None and (
            self._max_queued_per_kind is None
            or await self._pg.jobs.queued_for(new.tenant, on=on) >= self._max_queued
        ):
            return QueueFull(new.tenant, self._max_queued, self._retry_after)
        assert self._max_queued_per_kind is not None
        return QueueFull(new.tenant, self._max_queued_per_kind, self._retry_after, new.kind)

    async def cancel(
        self, job_id: UUID | str, *, tenant: str, cancelled_by: str | None = None
    ) -> Job:
        """Cancel a job: a queued or waiting one becomes ``cancelled`` at once; a running one gets
        ``cancel_requested`` so its worker stops it. Raises ``JobFinished`` if already terminal.

        ``cancelled_by`` (a principal such as ``"user:alice"``, never a secret) is recorded in
        the event's data, as ``answered_by`` is for an answer."""
        job_id, tenant = parse_job_id(job_id), validate_tenant(tenant)
        cancelled_by = optional_text("cancelled_by", cancelled_by)

        async def write() -> Job:
            with tracing.settling("cancel", job_id) as span:
                job, _ = await self._pg.jobs.cancel(job_id, tenant, cancelled_by=cancelled_by)
                span.outcome(job.status.value)
            return job

        job = await self._recorded("cancelled", write(), cancelled_by=cancelled_by)
        if job.status is not JobStatus.CANCELLED:  # running, flagged: its children go at once
            await self._cancel_children([job], cancelled_by)
        return job

    async def _cancel_children(self, parents: Iterable[Job], cancelled_by: str | None) -> None:
        """Cancel the unfinished children of ``parents`` (a running child is flagged); through
        ``_recorded``, a cancelled child's own children follow, level by level."""
        by_tenant: dict[str, list[UUID]] = {}
        for parent in parents:
            by_tenant.setdefault(parent.tenant, []).append(parent.id)
        for tenant, ids in by_tenant.items():
            try:
                await self._recorded(
                    "cancelled", self._pg.jobs.cancel_children(ids, tenant, cancelled_by)
                )
            except DatabaseUnavailable as exc:  # the parents' change is committed: report it
                log.warning("cancelling the children of %s failed: %s", ids, exc)

    # --- for workers: fenced writes (the lease token must match) ------------------------------

    async def _recorded(
        self, operation: str, write: Awaitable[_Written], *, cancelled_by: str | None = None
    ) -> _Written:
        """Run ``write`` (not started yet) with a cache ticket taken before it, then remember
        what it changed: the one path of every job write that returns rows. ``cancelled_by``:
        who a cancel request came from, recorded on the children a cancelled job takes."""
        ticket = self._cache.ticket()
        result = await write
        changed = result if isinstance(result, list) else [] if result is None else [result]
        self._remember(changed, ticket, operation)
        await self._wake_parents_of(changed)
        # a job cancelled any way (a request, a cancelling timeout, a release) takes its children
        cancelled = [j for j in changed if j.status is JobStatus.CANCELLED]
        await self._cancel_children(cancelled, cancelled_by)
        return result

    def _remember(self, changed: Iterable[Job], ticket: Ticket, operation: str) -> None:
        """Every write of this process ends here: cache the committed rows, tell observers."""
        for job in changed:
            self._cache.store(job, ticket)
            self._tell(operation, job)

    def _tell(self, operation: str, job: Job) -> None:
        for observer, skip in self._observers:
            if operation not in skip:
                observer(operation, job)

    def _observed(self, operation: str) -> bool:
        """Whether an observer wants the jobs of ``operation`` (else they need not be read)."""
        return any(operation not in skip for _, skip in self._observers)

    def observe(
        self, observer: Callable[[str, Job], object], *, skip: Collection[str] = ()
    ) -> None:
        """Call ``observer(operation, job)`` with every row this process writes (``submitted``,
        ``claimed``, ``succeeded``, ``failed``, ``cancelled``, ``recovered``, ...) for metrics,
        but for the operations in ``skip``. Retention reads the jobs it clears (``payload_cleared``)
        or deletes (``expired``) back whole only for an observer that wants them."""
        self._observers.append((observer, frozenset(skip)))

    async def claim(
        self, worker_id: UUID, *, kinds: Sequence[str] | None, limit: int, lease_seconds: float
    ) -> list[Lease]:
        """Claim up to ``limit`` runnable jobs (``FOR UPDATE SKIP LOCKED``), each with a lease."""
        ticket = self._cache.ticket()
        leases = await self._pg.leases.claim(
            worker_id, kinds=kinds, limit=limit, lease_seconds=lease_seconds
        )
        self._remember([lease.job for lease in leases], ticket, "claimed")
        return leases

    async def renew_leases(
        self, leases: Sequence[tuple[UUID, UUID]], lease_seconds: float
    ) -> dict[UUID, bool]:
        """Extend held leases; ``{job_id: cancel_requested}`` for those still held."""
        return await self._pg.leases.heartbeat(leases, lease_seconds)

    async def report_progress(self, lease: Lease, progress: Progress) -> Job | None:
        """A worker's progress report; ``None`` if it no longer holds the lease."""
        return await self._recorded("progress", self._pg.leases.progress(lease, progress))

    async def mark_succeeded(
        self, done: Sequence[tuple[Lease, str, Progress | None]]
    ) -> list[UUID]:
        """Record results (JSON text, with a last progress report) of several jobs in one
        statement; lost leases are skipped. Returns the ids of the jobs marked succeeded.

        The new rows are read back only for a cache or an observer to keep; a worker process
        has neither and is spared decoding them."""
        completions = [(lease.job.id, lease.token, result, last) for lease, result, last in done]
        if not (self._cache.enabled or self._observed("succeeded")):
            succeeded = await self._pg.leases.complete_ids(completions)
            await self._wake({parent for _, parent in succeeded if parent is not None})
            return [job_id for job_id, _ in succeeded]
        changed = await self._recorded("succeeded", self._pg.leases.complete(completions))
        return [job.id for job in changed]

    async def mark_failed(
        self,
        lease: Lease,
        error: Mapping[str, Any],
        *,
        retryable: bool,
        delay: float | None,
        backoff_base: float,
        backoff_max: float,
    ) -> Job | None:
        """Record a failure: retried with backoff, failed, or cancelled if that was asked."""
        failed = self._pg.leases.fail(
            lease,
            error=error,
            retryable=retryable,
            delay=delay,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
        )
        return await self._recorded("failed", failed)

    async def mark_cancelled(self, lease: Lease) -> Job | None:
        """The handler stopped on a cancel request (children it spawned meanwhile are cancelled
        too); ``None`` if the lease was lost."""
        return await self._recorded("cancelled", self._pg.leases.mark_cancelled(lease))

    async def release(self, leases: Sequence[Lease]) -> list[Job]:
        """Give leases back so other workers run the jobs (graceful shutdown)."""
        return await self._recorded("released", self._pg.leases.release(leases))

    async def recover_expired(
        self, *, limit: int = 100, backoff_base: float = 1.0, backoff_max: float = 300.0
    ) -> list[Job]:
        """Re-queue or fail jobs whose lease expired (a dead or cut-off worker's jobs)."""
        recovered = self._pg.leases.recover_expired(
            limit=limit, backoff_base=backoff_base, backoff_max=backoff_max
        )
        return await self._recorded("recovered", recovered)

    async def ask(self, lease: Lease, prompt: Mapping[str, Any]) -> Job | None:
        """Park the job until a person answers (a worker's ``ctx.ask``); ``None``: the lease is
        gone or cancel was requested."""
        asked = self._pg.leases.ask(lease, encode_json("prompt", prompt), prompt.get("timeout"))
        return await self._recorded("asked", asked)

    async def checkpoint(self, lease: Lease, key: str, result_json: str) -> Job | None:
        """Keep a side effect's result under ``key``; ``None``: the lease is gone."""
        kept = self._pg.leases.checkpoint(lease, key, result_json)
        return await self._recorded("checkpoint", kept)

    async def fence(self, lease: Lease, connection: CallerConnection) -> None:
        """Make the caller's open transaction on ``connection`` (an ``AsyncSession``, an
        ``AsyncConnection`` or an asyncpg connection, as ``submit`` takes) conditional on
        ``lease``: the job's row is locked until that transaction ends if the lease still holds
        it by Postgres's clock, so no recovery can hand the job to another worker before the
        caller commits; else ``LeaseLost`` (roll back). A handler calls ``ctx.fenced``."""
        on = await borrow(connection)
        if not await self._pg.leases.hold(lease, on):
            raise LeaseLost(lease.job.id)

    async def escalate_questions(self, *, limit: int = 100) -> list[Job]:
        """Move each overdue question with an ``Escalate`` step left to that step's assignee,
        with its new deadline (the sweeper runs this before ``expire_input_deadlines``)."""
        escalated = self._pg.questions.escalate(limit=limit, replica=self.replica)
        return await self._recorded("escalated", escalated)

    async def expire_input_deadlines(self, *, limit: int = 100) -> list[Job]:
        """Apply each overdue question's ``on_timeout`` (fail, cancel or default answer)."""
        timed_out = self._pg.questions.expire_input_deadlines(limit=limit, replica=self.replica)
        return await self._recorded("input_timeout", timed_out)

    # --- workflows: durable sleeps, child jobs, parents waiting for them -----------------------

    async def sleep(
        self, lease: Lease, key: str, *, until: datetime | None = None, seconds: float = 0.0
    ) -> Job | None:
        """Park the job until ``until`` (or ``seconds`` from now, by Postgres's clock), keeping
        the wake-up time under ``key``; ``None``: the lease is gone or cancel was requested."""
        slept = self._pg.workflows.sleep(lease, key, until=until, seconds=seconds)
        return await self._recorded("sleeping", slept)

    async def woke(self, lease: Lease, key: str) -> Job | None:
        """The re-run reached the sleep under ``key`` it was parked in; ``None``: lease gone."""
        return await self._recorded("woke", self._pg.workflows.woke(lease, key))

    async def spawn(self, lease: Lease, key: str, spec: JobSpec) -> tuple[Job, Job | None]:
        """Submit ``spec`` as a child of the leased job, idempotently per ``key`` (its key is
        ``<parent id>/<key>``: a re-run gets the same child), and record it under ``key`` in the
        parent. The child, and the parent as recorded (``None``: the lease is gone)."""
        new = replace(
            validate_new_job(
                tenant=lease.job.tenant,
                kind=spec.kind,
                payload=spec.payload,
                priority=spec.priority,
                max_attempts=spec.max_attempts,
                run_after=spec.run_after,
                idempotency_key=f"{lease.job.id}/{key}",
                concurrency_key=spec.concurrency_key,
                pinned=spec.pinned,
            ),
            parent_id=lease.job.id,
        )
        # a child's submit span is one of the parent's run: its trace goes on in the child
        with tracing.submitting((new.kind,)) as span:
            child, _ = await self._insert_or_replay(new, None, span.carrier())
            span.message(child)
        parent = await self._recorded("spawned", self._pg.workflows.spawned(lease, key, child))
        return child, parent

    async def children(self, tenant: str, job_ids: Sequence[UUID]) -> list[Job]:
        """The jobs ``job_ids`` of ``tenant`` as Postgres has them now, in that order
        (``JobNotFound`` for one that is missing)."""
        found = {job.id: job for job in await self._pg.jobs.many(list(job_ids))}
        for job_id in job_ids:
            if job_id not in found or found[job_id].tenant != tenant:
                raise JobNotFound(job_id)
        return [found[job_id] for job_id in job_ids]

    async def wait_for_children(self, lease: Lease, job_ids: Sequence[UUID]) -> Job | None:
        """Park the job until the jobs ``job_ids`` have finished; ``None``: the lease is gone or
        cancel was requested. If they finished meanwhile, it is queued again at once."""
        parked = await self._recorded("waiting", self._pg.workflows.wait(lease, job_ids))
        if parked is not None:
            await self._wake({parked.id})  # after the park commits: postgres/workflows.py
        return parked

    async def wake_waiting_parents(self, *, limit: int = 100) -> list[Job]:
        """Queue again up to ``limit`` parents whose children have all finished: the sweeper's
        backstop for a process that died between a child's end and its parent's wake-up."""
        return await self._recorded("woken", self._pg.workflows.wake_due(limit=limit))

    async def _wake_parents_of(self, changed: Iterable[Job]) -> None:
        await self._wake({job.parent_id for job in changed if job.terminal and job.parent_id})

    async def _wake(self, parents: set[UUID]) -> None:
        """Queue again those of ``parents`` whose children have all finished. Run after the
        commit that may have finished them (postgres/workflows.py says why no wake-up is lost);
        a failure is only logged: the change it follows is committed, and the sweeper wakes the
        parent later."""
        if not parents:
            return
        try:
            await self._recorded("woken", self._pg.workflows.wake(sorted(parents)))
        except DatabaseUnavailable as exc:
            log.warning("waking the parents %s failed (the sweeper will): %s", parents, exc)

    # --- retention (the sweeper's) -------------------------------------------------------------

    def sweep_lock(
        self, *, idle_limit: float = 30.0
    ) -> contextlib.AbstractAsyncContextManager[bool]:
        """Hold the sweeper lock for the block if no other process does; yields whether held.

        A holder that stops talking to Postgres for ``idle_limit`` seconds loses the lock.
        """
        return self._pg.retention.sweep_lock(idle_limit=idle_limit)

    async def clear_payloads(
        self,
        *,
        ttl: float,
        kinds: Sequence[str] | None,
        other_kinds: Sequence[str],
        limit: int,
        job_ttl: float | None = None,
    ) -> int:
        """Clear the input of up to ``limit`` unpinned jobs finished ``ttl`` seconds ago (of
        ``kinds``, or of any kind but ``other_kinds``) but not ``job_ttl`` seconds ago (those
        are due for deletion; ``None``: them too); returns how many. Observers that want
        ``payload_cleared`` are handed each job; without one the rows are not read back whole,
        and this process's cache drops them (the next read fetches them)."""
        whole = self._observed("payload_cleared")
        cleared = self._pg.retention.clear_payloads(
            ttl=ttl, kinds=kinds, other_kinds=other_kinds, limit=limit, job_ttl=job_ttl, whole=whole
        )
        if whole:
            return len(await self._recorded("payload_cleared", cleared))
        changed: list[tuple[UUID, int]] = await cleared
        for job_id, version in changed:
            self._cache.invalidate(job_id, version)
        return len(changed)

    async def due_for_expiry(
        self,
        *,
        ttl: float,
        kinds: Sequence[str] | None,
        other_kinds: Sequence[str],
        skip: Sequence[UUID],
        limit: int,
    ) -> list[Job]:
        """Up to ``limit`` unpinned jobs finished ``ttl`` seconds ago, oldest first, not ``skip``
        (jobs whose hooks failed this pass)."""
        return await self._pg.retention.due_for_expiry(
            ttl=ttl, kinds=kinds, other_kinds=other_kinds, skip=skip, limit=limit
        )

    async def expire(self, due: Sequence[Job]) -> list[UUID]:
        """Delete these jobs (finished and unpinned still) with their history, keeping tombstones;
        returns the ids deleted. This process's cache drops them at once, other processes' caches
        when the change feed tells them, and observers hear ``expired``."""
        gone = set(await self._pg.retention.expire([job.id for job in due]))
        for job in due:
            if job.id in gone:
                self._cache.invalidate(job.id, EXPIRED_VERSION)
                self._tell("expired", job)
        return [job.id for job in due if job.id in gone]

    async def expire_due(
        self, *, ttl: float, kinds: Sequence[str] | None, other_kinds: Sequence[str], limit: int
    ) -> list[UUID]:
        """``due_for_expiry`` and ``expire`` at once, for jobs that have no ``on_expire`` hook
        to run first (the caller knows): returns the ids deleted. Without an observer that wants
        ``expired``, one statement chooses and deletes them, and none is read back whole."""
        if self._observed("expired"):
            due = await self.due_for_expiry(
                ttl=ttl, kinds=kinds, other_kinds=other_kinds, skip=(), limit=limit
            )
            return await self.expire(due)
        gone = await self._pg.retention.expire_due(
            ttl=ttl, kinds=kinds, other_kinds=other_kinds, limit=limit
        )
        for job_id in gone:
            self._cache.invalidate(job_id, EXPIRED_VERSION)
        return gone

    async def purge_tombstones(self, *, ttl: float, limit: int) -> int:
        """Forget up to ``limit`` jobs expired ``ttl`` seconds ago (their ids answer not found)."""
        return await self._pg.retention.purge_tombstones(ttl=ttl, limit=limit)

    async def pin(self, job_id: UUID | str, *, tenant: str) -> Job:
        """Exempt the job from retention (its input, row and history are kept)."""
        return await self._set_pinned(job_id, tenant, True)

    async def unpin(self, job_id: UUID | str, *, tenant: str) -> Job:
        """Subject the job to retention again."""
        return await self._set_pinned(job_id, tenant, False)

    async def _set_pinned(self, job_id: UUID | str, tenant: str, pinned: bool) -> Job:
        job_id, tenant = parse_job_id(job_id), validate_tenant(tenant)
        job = await self._recorded("pinned", self._pg.jobs.set_pinned(job_id, tenant, pinned))
        if job is None:  # already so (or gone)
            return await self.get(job_id, tenant=tenant, consistency="strong")
        return job

    # --- periodic schedules (domain/schedules.py; fired by workers: worker/scheduler.py) -------

    async def create_schedule(
        self,
        tenant: str,
        name: str,
        kind: str,
        *,
        cron: str | None = None,
        every: timedelta | None = None,
        timezone: str = "UTC",
        payload: Any = None,
        misfire: str = "latest",
        max_catch_up: int = 100,
        priority: int = 0,
        max_attempts: int = 3,
        concurrency_key: str | None = None,
        paused: bool = False,
    ) -> Schedule:
        """Submit a ``kind`` job with ``payload`` at each tick of ``cron`` (five fields, read on
        the wall clock of ``timezone``) or of ``every`` (whole seconds); workers of that kind
        fire it, one job per tick. ``misfire`` (``latest``, ``all`` up to ``max_catch_up``, or
        ``none``) says what runs of ticks missed while no worker ran. ``ScheduleExists`` if the
        tenant has a schedule of that ``name``."""
        spec = validate_spec(
            cron=cron, every=every, timezone=timezone, misfire=misfire, max_catch_up=max_catch_up
        )
        if callable(payload):
            raise InvalidRequest("payload", "a JSON value (a function only in @tasks.periodic)")
        new = validate_schedule(
            tenant=tenant,
            name=name,
            kind=kind,
            spec=spec,
            payload=payload,
            priority=priority,
            max_attempts=max_attempts,
            concurrency_key=concurrency_key,
            paused=paused,
        )
        created = await self._pg.schedules.create(new, next_tick(spec, datetime.now(UTC)))
        if created is None:
            raise ScheduleExists(new.name)
        return created

    async def declare_schedule(self, new: NewSchedule) -> Schedule:
        """Write a schedule a worker's registry declares (``@tasks.periodic``): created, or
        updated to the code's definition with its pause kept."""
        return await self._pg.schedules.declare(new, next_tick(new.spec, datetime.now(UTC)))

    async def list_schedules(self, *, tenant: str, limit: int = MAX_PAGE) -> tuple[Schedule, ...]:
        """The tenant's schedules by name (at most ``limit``)."""
        tenant = validate_tenant(tenant)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest("limit", f"an integer from 1 to {MAX_PAGE} is required")
        return tuple(await self._pg.schedules.of_tenant(tenant, limit=limit))

    async def get_schedule(self, schedule_id: UUID | str, *, tenant: str) -> Schedule:
        schedule_id, tenant = _schedule_id(schedule_id), validate_tenant(tenant)
        found = await self._pg.schedules.get(schedule_id, tenant)
        if found is None:
            raise ScheduleNotFound(schedule_id)
        return found

    async def pause_schedule(self, schedule_id: UUID | str, *, tenant: str) -> Schedule:
        """Stop submitting jobs (pausing a paused schedule changes nothing)."""
        schedule_id, tenant = _schedule_id(schedule_id), validate_tenant(tenant)
        paused = await self._pg.schedules.pause(schedule_id, tenant)
        return paused or await self.get_schedule(schedule_id, tenant=tenant)

    async def resume_schedule(self, schedule_id: UUID | str, *, tenant: str) -> Schedule:
        """Submit jobs again from the first tick after now: ticks that passed while paused are
        skipped, not missed."""
        for _ in range(_SUBMIT_ROUNDS):  # the definition changed between the read and the write
            current = await self.get_schedule(schedule_id, tenant=tenant)
            if not current.paused:
                return current
            following = next_tick(current.spec, datetime.now(UTC))
            resumed = await self._pg.schedules.resume(
                current.id, current.tenant, following, current.updated_at
            )
            if resumed is not None:
                return resumed
        raise RuntimeError("resuming kept losing to concurrent changes of the schedule")

    async def delete_schedule(self, schedule_id: UUID | str, *, tenant: str) -> None:
        """Delete a schedule (the jobs it submitted stay; a declared one comes back when a
        worker that declares it starts)."""
        schedule_id, tenant = _schedule_id(schedule_id), validate_tenant(tenant)
        if not await self._pg.schedules.delete(schedule_id, tenant):
            raise ScheduleNotFound(schedule_id)

    async def due_schedules(
        self, kinds: Sequence[str], computed: Sequence[UUID], *, limit: int = 100
    ) -> tuple[datetime | None, list[Schedule]]:
        """For a scheduler: the database's clock and the running schedules of ``kinds`` (those
        with computed payloads only if in ``computed``), soonest first."""
        return await self._pg.schedules.soonest(kinds, computed, limit=limit)

    async def fire_schedule(
        self, schedule: Schedule, ticks: Sequence[tuple[datetime, Any]], following: datetime
    ) -> list[Job]:
        """Submit one job per ``(tick, payload)`` (``None`` as the payload of a schedule's own
        payload) and move the schedule on to ``following``, unless another scheduler did so
        first: Postgres lets exactly one job per schedule and tick exist. The jobs created."""
        encoded = [
            (tick, encode_json("payload", value) if schedule.computed_payload else None)
            for tick, value in ticks
        ]
        fired = self._pg.schedules.fire(schedule, encoded, following)
        return await self._recorded("submitted", fired)

    # --- human in the loop -------------------------------------------------------------------

    async def answer(
        self,
        job_id: UUID | str,
        *,
        tenant: str,
        answer: Any,
        answered_by: str | None = None,
        question_key: str | None = None,
        expected_version: int | None = None,
    ) -> Job:
        """Answer the question a waiting job asked; the job is queued again to resume.

        The answer is validated against the question's JSON Schema and choices
        (``InvalidAnswer``), committed before this returns, and recorded with who answered and
        when. A job not waiting (or waiting on another question than ``question_key``) raises
        ``NotWaitingForInput``; of two concurrent answers one wins. Repeating the answer that was
        accepted returns the job again instead (a safe retry). While someone other than
        ``answered_by`` holds the question (``claim_question``) it raises ``QuestionClaimed``;
        with ``expected_version``, a question that changed since (asked anew, escalated) raises
        ``QuestionChanged``. Nothing is changed by a refusal.
        """
        job_id, tenant = parse_job_id(job_id), validate_tenant(tenant)
        answered_by = optional_text("answered_by", answered_by)
        question_key = optional_text("question_key", question_key)
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or not 1 <= expected_version <= MAX_SEQUENCE
        ):
            raise InvalidRequest("expected_version", f"an integer from 1 to {MAX_SEQUENCE}")
        # before judging the answer: another tenant's job is simply not found
        current = await self._committed(job_id, tenant)
        try:
            answer_json = encode_json("answer", answer)
        except InvalidRequest as exc:
            raise InvalidAnswer(job_id, [exc.message]) from None
        for round_ in range(_ANSWER_ROUNDS):
            if round_:  # refused: answered by someone else, claimed, or changed: look again
                current = await self._committed(job_id, tenant)
            key = question_key
            if current.status is not JobStatus.WAITING_INPUT or key not in (
                None,
                current.prompt["key"],
            ):
                break
            key = current.prompt["key"]
            version = current.question_version
            if expected_version is not None and version != expected_version:
                raise QuestionChanged(job_id, expected_version, version)
            problems = answer_problems(current.prompt, answer)
            if problems:
                raise InvalidAnswer(job_id, problems)
            held = _held_by_other(current, answered_by)
            if held is not None:
                raise held
            answered = self._pg.questions.answer(
                job_id,
                tenant,
                key,
                answer_json,
                answered_by,
                expected_version=version,  # the version whose schema the answer was checked by
                replica=self.replica,
            )
            with tracing.settling("answer", job_id, current.kind, link=current) as span:
                job = await self._recorded("answered", answered)
                span.outcome(None if job is None else job.status.value)
            if job is not None:
                return job
        else:  # refused every round: held (whatever this host's clock says) or changing
            holder, until = current.claimed_by, current.claim_expires_at
            if holder is not None and until is not None and holder != answered_by:
                raise QuestionClaimed(job_id, holder, until)
            raise QuestionChanged(job_id, current.question_version or 0, current.question_version)
        if _answered_with(current, key, answer_json):  # a retry of the accepted answer
            return current
        raise NotWaitingForInput(job_id, current.status.value, question_key)

    # --- the work queue of questions ---------------------------------------------------------

    async def inbox(
        self,
        tenant: str,
        *,
        principal: str,
        roles: Iterable[str] = (),
        kind: str | None = None,
        assignee: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> QuestionPage:
        """The open questions of ``tenant`` that ``principal`` (with ``roles``) may answer: those
        for anyone, for ``user:<principal>`` (or the principal itself) and for ``role:<r>`` of its
        roles; oldest deadline first, those without one last. ``kind`` and ``assignee`` narrow
        it; pass ``next_cursor`` back as ``cursor`` for the next page. Read from Postgres."""
        tenant, principal = validate_tenant(tenant), _principal(principal)
        role_names = [_principal(role) for role in roles]
        kind = None if kind is None else validate_kind(kind)
        assignee = validate_assignee("assignee", assignee)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest("limit", f"an integer from 1 to {MAX_PAGE} is required")
        after = None if cursor is None else _decode_inbox_cursor(cursor)
        rows = await self._pg.questions.inbox(
            tenant,
            addressees=addressees(principal, role_names),
            kind=kind,
            assignee=assignee,
            after=after,
            limit=limit + 1,
        )
        now = datetime.now(UTC)
        items = tuple(question_of(job, now=now) for job in rows[:limit])
        next_cursor = _encode_inbox_cursor(items[-1]) if len(rows) > limit else None
        return QuestionPage(items=items, next_cursor=next_cursor)

    async def question(self, job_id: UUID | str, *, tenant: str) -> Question:
        """The open question of a waiting job, with who holds it (``NotWaitingForInput`` if the
        job waits for nothing). Read from Postgres."""
        job = await self.get(job_id, tenant=tenant, consistency="strong")
        if job.status is not JobStatus.WAITING_INPUT:
            raise NotWaitingForInput(job.id, job.status.value)
        return question_of(job, now=datetime.now(UTC))

    async def claim_question(
        self,
        job_id: UUID | str,
        tenant: str,
        principal: str,
        *,
        takeover: bool = False,
        ttl: float = 300.0,
    ) -> Question:
        """Hold the job's question for ``ttl`` seconds (again: renew), so that only
        ``principal`` may answer it meanwhile. Someone else's live claim raises
        ``QuestionClaimed`` unless ``takeover`` (recorded as ``question_taken_over``); a job not
        waiting raises ``NotWaitingForInput``. The claim ends with the answer, a release, an
        escalation, or its expiry."""
        job_id, tenant, principal = (
            parse_job_id(job_id),
            validate_tenant(tenant),
            _principal(principal),
        )
        if (
            isinstance(ttl, bool)
            or not isinstance(ttl, int | float)
            or not 0 < ttl <= MAX_CLAIM_SECONDS
        ):
            raise InvalidRequest("ttl", f"seconds, more than 0 and at most {MAX_CLAIM_SECONDS:g}")
        claim = self._pg.questions.claim(
            job_id,
            tenant,
            principal,
            takeover=takeover is True,
            ttl=float(ttl),
            replica=self.replica,
        )
        job = await self._recorded("question_claimed", claim)
        if job is None:
            raise await self._refused_question(job_id, tenant, principal)
        return question_of(job, now=datetime.now(UTC))

    async def release_question(self, job_id: UUID | str, tenant: str, principal: str) -> Question:
        """Give back the job's question ``principal`` holds (nothing to do if it holds none;
        ``QuestionClaimed`` if someone else does)."""
        job_id, tenant, principal = (
            parse_job_id(job_id),
            validate_tenant(tenant),
            _principal(principal),
        )
        released = self._pg.questions.release(job_id, tenant, principal, self.replica)
        job = await self._recorded("question_released", released)
        if job is None:
            error = await self._refused_question(job_id, tenant, principal)
            if not isinstance(error, _NotHeld):
                raise error
            job = error.job
        return question_of(job, now=datetime.now(UTC))

    async def _refused_question(self, job_id: UUID, tenant: str, principal: str) -> JobkeeperError:
        """Why a claim or release matched no row (read only to build the error)."""
        try:
            current = await self._committed(job_id, tenant)
        except JobNotFound as exc:
            return exc
        if current.status is not JobStatus.WAITING_INPUT:
            return NotWaitingForInput(job_id, current.status.value)
        return _held_by_other(current, principal) or _NotHeld(current)

    async def _committed(self, job_id: UUID, tenant: str) -> Job:
        """The job as Postgres has it now (``JobNotFound`` or ``JobExpired`` if it has not)."""
        current = await self._pg.jobs.get(job_id, tenant)
        if current is None:
            raise await self._pg.jobs.missing(job_id, tenant)
        return current

    async def waiting_questions(self) -> list[tuple[str, str, int]]:
        """``(tenant, kind, open questions)`` for every pair that has some (for metrics)."""
        return await self._pg.questions.waiting_counts()

    async def watch(
        self, job_id: UUID | str, *, tenant: str, after: int = 0
    ) -> AsyncIterator[JobEvent]:
        """The job's history after ``after``, then its events as they happen, each once and in
        order, until a terminal event (succeeded, failed, cancelled, expired).

        History is read from ``job_events`` once, when the watch starts; from then on the events
        come from the manager's one fan-out of the change feed (``jobkeeper.watchers``: one read
        per batch of changes, however many watch), and a watcher that falls behind or misses
        events re-reads its history once. So nothing is missed or repeated across reconnects:
        this is what ``GET /jobs/{id}/events`` streams with ``Last-Event-ID``. Close an iterator
        left before its end (``contextlib.aclosing``) so that the fan-out stops feeding it.
        """
        job_id = parse_job_id(job_id)
        # subscribed before the history is read, so nothing committed between the two is lost
        subscription = self._watchers.open(job_id)
        try:
            last = after
            history = await self.events(job_id, tenant=tenant, after=last)
            if not history:
                # resumed at or past the end (an SSE client reconnecting after the last event)
                job = await self.get(job_id, tenant=tenant, consistency="strong")
                if job.terminal and last >= job.version:
                    return
                self._watchers.synced(subscription, job.version)
            else:
                self._watchers.synced(subscription, history[-1].seq)
            while True:
                for event in history:
                    yield event
                    last = event.seq
                    if event.type in TERMINAL_EVENTS:
                        return
                # not held while waiting: a watcher of a long history would keep all of it
                history = ()
                handed = await subscription.next()
                fresh = None if handed is None else [e for e in handed if e.seq > last]
                # a job's sequence numbers have no holes: a jump means events were missed
                if fresh is None or (fresh and fresh[0].seq != last + 1):
                    history = await self.events(job_id, tenant=tenant, after=last)
                else:
                    history = tuple(fresh)
        finally:
            self._watchers.close(subscription)

    # --- reads -------------------------------------------------------------------------------

    async def get(
        self, job_id: UUID | str, *, tenant: str, consistency: Consistency = "cached"
    ) -> Job:
        """The job as last committed, from the cache when it holds it.

        ``consistency="strong"`` always reads Postgres. A job of another tenant raises
        ``JobNotFound``, exactly like a missing one.
        """
        job_id, tenant = parse_job_id(job_id), validate_tenant(tenant)
        if consistency == "cached" and self._feed.vouches():
            hit = self._cache.get(job_id)
            if hit is not None:
                if hit.tenant != tenant:
                    raise JobNotFound(job_id)
                return hit
        elif consistency not in ("cached", "strong"):
            raise InvalidRequest("consistency", "'cached' or 'strong'")
        ticket = self._cache.ticket()
        job = await self._pg.jobs.get(job_id, tenant)
        if job is None:
            raise await self._pg.jobs.missing(job_id, tenant)
        self._cache.store(job, ticket)
        return job

    async def list(
        self,
        *,
        tenant: str,
        status: JobStatus | str | None = None,
        kind: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of the tenant's jobs, newest first, read from Postgres (keyset pagination)."""
        tenant = validate_tenant(tenant)
        if status is not None:
            try:
                status = JobStatus(status)
            except ValueError:
                raise InvalidRequest("status", f"one of {[s.value for s in JobStatus]}") from None
        if kind is not None:
            kind = validate_kind(kind)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest("limit", f"an integer from 1 to {MAX_PAGE} is required")
        before = None if cursor is None else _decode_cursor(cursor)
        ticket = self._cache.ticket()
        rows = await self._pg.jobs.list_jobs(
            tenant, status=status, kind=kind, limit=limit + 1, before=before
        )
        items = tuple(rows[:limit])
        for job in items:
            self._cache.store(job, ticket)
        next_cursor = _encode_cursor(items[-1].id) if len(rows) > limit else None
        return JobPage(items=items, next_cursor=next_cursor)

    async def events(
        self, job_id: UUID | str, *, tenant: str, after: int = 0
    ) -> tuple[JobEvent, ...]:
        """The job's history after sequence number ``after``, oldest first."""
        job_id, tenant = parse_job_id(job_id), validate_tenant(tenant)
        if isinstance(after, bool) or not isinstance(after, int) or not 0 <= after <= MAX_SEQUENCE:
            raise InvalidRequest("after", f"an integer from 0 to {MAX_SEQUENCE} is required")
        history = await self._pg.jobs.events(job_id, tenant, after=after)
        if not history:
            await self.get(job_id, tenant=tenant)  # raises JobNotFound for a missing job
        return tuple(history)

    async def counts(self, *, tenant: str, cap: int = 10_000) -> JobCounts:
        """How many jobs the tenant has: queued, running and waiting per kind (exact), and
        finished per status, each counted up to ``cap`` so a long history costs a bounded read.
        Read from Postgres (the dashboard's counts and queue by kind)."""
        tenant = validate_tenant(tenant)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise InvalidRequest("cap", "a positive integer is required")
        live = await self._pg.jobs.live_counts(tenant)
        finished = await self._pg.jobs.finished_counts(tenant, cap)
        return JobCounts(
            live={(kind, JobStatus(status)): n for kind, status, n in live},
            finished={JobStatus(status): n for status, n in finished},
            cap=cap,
        )

    async def get_many(self, job_ids: Iterable[UUID]) -> tuple[Job, ...]:
        """The jobs of ``job_ids`` that exist, of EVERY tenant, in one read of Postgres.

        For a service that fans changes out to many watchers and filters by tenant itself (the
        dashboard's live rows): one read per batch of changes, whoever watches.
        """
        ids = list(dict.fromkeys(job_ids))[:MAX_PAGE]
        if not ids:
            return ()
        ticket = self._cache.ticket()
        found = tuple(await self._pg.jobs.many(ids))
        for job in found:
            self._cache.store(job, ticket)
        return found

    async def leases(self, job_ids: Iterable[UUID | str], *, tenant: str) -> dict[UUID, JobLease]:
        """Who runs each of these jobs of the tenant and until when, and when a waiting job's
        question times out (jobs of other tenants are left out)."""
        tenant = validate_tenant(tenant)
        ids = list(dict.fromkeys(parse_job_id(j) for j in job_ids))
        if not ids:
            return {}
        if len(ids) > MAX_PAGE:
            raise InvalidRequest("job_ids", f"at most {MAX_PAGE} at once")
        return {lease.job_id: lease for lease in await self._pg.jobs.leases(tenant, ids)}

    # --- cache upkeep ------------------------------------------------------------------------

    def cleanup_expired(self) -> int:
        """Drop expired cache entries now (a lifespan task calls this periodically)."""
        return self._cache.expire()

    def cache_stats(self) -> CacheStats:
        """Hit, miss, eviction and expiry counters of the hot cache."""
        return self._cache.stats()

    def feed_status(self) -> FeedStatus:
        """Whether the change feed is connected and vouching for the cache (for readiness)."""
        return self._feed.status()

    def watch_stats(self) -> WatchStats:
        """Open ``watch()`` iterators, the jobs they watch, the fan-out's reads and the
        watchers cut off with a gap (for metrics)."""
        return self._watchers.stats()

    def subscribe(self, listener: ChangeListener) -> Callable[[], None]:
        """Call ``listener(job_id, version, status)`` for every committed change any process
        makes (``status`` is ``None`` when the change was found by a catch-up); returns an
        unsubscribe function. Listeners run on the event loop and must not block.

        A manager without a cache (``cache_size=0``, as worker processes run) hears only the
        changes workers act on: jobs queued and cancel requests for running jobs; in notify mode
        it runs no catch-ups, so one announced while its feed was reconnecting is missed."""
        return self._feed.subscribe(listener)

    def subscribe_batches(self, listener: BatchListener) -> Callable[[], None]:
        """Like ``subscribe``, but ``listener(changes)`` gets each batch of changes at once, each
        ``[job_id_text, version, status]`` as notified (status ``None`` when a catch-up found
        it): the cheap form for a listener that cares about few of many changes (a
        worker hears every other worker's claims and completions)."""
        return self._feed.subscribe_batches(listener)
