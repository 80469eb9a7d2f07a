"""Maintenance: the sweeper, periodic upkeep that exactly one process runs at a time, and the
retention policy it applies, both built from ``Settings`` here.

One pass, under a session advisory lock (so it dies with a crashed holder and needs no cleanup):

* lease recovery: jobs whose worker stopped renewing its lease are re-queued or failed;
* input deadlines: an overdue question with an ``Escalate`` step left goes to that step's
  assignee with its new deadline; any other overdue question's ``on_timeout`` is applied;
* retention: the input of jobs finished ``payload_ttl`` ago is cleared; jobs finished ``job_ttl``
  ago are deleted with their history, after their kind's ``on_expire`` hook ran, leaving a
  tombstone so they answer ``job_expired``; tombstones older than ``tombstone_ttl`` are purged.
  Pinned jobs are exempt. Policies can differ per kind;
* the worker registry: workers silent for ``forget_workers_after`` seconds are forgotten (their
  jobs were recovered through lease expiry long before).

Everything runs in small batches (short transactions, bounded locks) and scans only partial
indexes of what is due, so a pass costs what expired, not the table size. A failing hook keeps its
job for the next pass and never blocks the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from uuid import UUID

from jobkeeper.domain.validate import validate_kind
from jobkeeper.domain.values import Job
from jobkeeper.errors import DatabaseUnavailable, InvalidRequest
from jobkeeper.manager import JobManager
from jobkeeper.settings import KindRetention, Settings

__all__ = ["ExpiryHooks", "Retention", "SweepReport", "Sweeper"]

log = logging.getLogger("jobkeeper.maintenance")
_BATCH = 100
# retention's batches: every batch is a commit, so a WAL flush; with batches of 100 a sweeper on a
# busy server (flushes of tens of ms) deleted fewer jobs per second than the workers finished
# (bench_churn.py), and the table grew without bound. Hooks still run one job at a time.
_RETENTION_BATCH = 1_000
ExpiryHook = Callable[[Job], Awaitable[None]]


class ExpiryHooks:
    """``@hooks.on_expire("kind")``: an async function called with the job just before retention
    deletes it, to remove the application's own artifacts (files, blobs)."""

    def __init__(self) -> None:
        self._hooks: dict[str, ExpiryHook] = {}

    def on_expire(self, kind: str) -> Callable[[ExpiryHook], ExpiryHook]:
        def register(hook: ExpiryHook) -> ExpiryHook:
            name = validate_kind(kind)
            if name in self._hooks:
                raise InvalidRequest("kind", f"an on_expire hook for {name!r} exists already")
            self._hooks[name] = hook
            return hook

        return register

    def get(self, kind: str) -> ExpiryHook | None:
        return self._hooks.get(kind)

    def any_of(self, kinds: list[str] | None, other_kinds: list[str]) -> bool:
        """Whether a hook is registered for one of ``kinds`` (``None``: of any kind but
        ``other_kinds``)."""
        return any(k in kinds if kinds is not None else k not in other_kinds for k in self._hooks)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs keep their input, themselves, and their tombstones (seconds)."""

    payload_ttl: float = 86_400.0
    job_ttl: float = 604_800.0
    tombstone_ttl: float = 2_592_000.0
    by_kind: Mapping[str, KindRetention] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        return cls(
            settings.payload_ttl,
            settings.job_ttl,
            settings.tombstone_ttl,
            dict(settings.retention_by_kind),
        )

    def groups(self) -> list[tuple[list[str] | None, list[str], float, float]]:
        """``(kinds or None for the rest, kinds excluded, payload_ttl, job_ttl)`` per policy."""
        groups: list[tuple[list[str] | None, list[str], float, float]] = [
            (
                [kind],
                [],
                override.payload_ttl or self.payload_ttl,
                override.job_ttl or self.job_ttl,
            )
            for kind, override in self.by_kind.items()
        ]
        groups.append((None, list(self.by_kind), self.payload_ttl, self.job_ttl))
        return groups


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one pass did (``swept`` is False when another process held the sweeper lock)."""

    swept: bool = True
    leases_recovered: int = 0
    inputs_timed_out: int = 0
    questions_escalated: int = 0
    payloads_cleared: int = 0
    jobs_expired: int = 0
    hook_failures: int = 0
    tombstones_purged: int = 0
    workers_pruned: int = 0
    parents_woken: int = 0


class Sweeper:
    """Runs ``sweep()`` every ``interval`` seconds with ``run()``, or once on demand.

    ``retention=None`` skips retention (lease recovery, deadlines and the worker registry only).
    ``lock_idle_limit``: a sweeper stopped mid-pass for this long loses the sweeper lock, so a
    paused process cannot keep every other process from recovering leases.
    """

    def __init__(
        self,
        jobs: JobManager,
        *,
        interval: float = 5.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        retention: Retention | None = None,
        hooks: ExpiryHooks | None = None,
        on_report: Callable[[SweepReport], object] | None = None,
        forget_workers_after: float = 600.0,
        lock_idle_limit: float = 30.0,
    ) -> None:
        self._jobs = jobs
        self._interval = interval
        self._backoff = (backoff_base, backoff_max)
        self._retention = retention
        self._hooks = hooks or ExpiryHooks()
        self._on_report = on_report
        self._forget_workers_after = forget_workers_after
        self._lock_idle_limit = lock_idle_limit

    @classmethod
    def from_settings(
        cls,
        jobs: JobManager,
        settings: Settings,
        *,
        interval: float | None = None,
        hooks: ExpiryHooks | None = None,
        on_report: Callable[[SweepReport], object] | None = None,
    ) -> Sweeper:
        """The sweeper ``settings`` describe (retention included), every ``interval`` seconds
        (default: ``settings.sweep_interval``)."""
        return cls(
            jobs,
            interval=settings.sweep_interval if interval is None else interval,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            retention=Retention.from_settings(settings),
            hooks=hooks,
            on_report=on_report,
            # a stopped sweeper delays lease recovery by at most about one more lease
            lock_idle_limit=settings.lease_seconds,
        )

    async def sweep(self) -> SweepReport:
        """One pass, batch by batch until nothing is left, if no other process is sweeping."""
        async with self._jobs.sweep_lock(idle_limit=self._lock_idle_limit) as held:
            if not held:
                return SweepReport(swept=False)
            base, cap = self._backoff
            recovered = escalated = timed_out = 0
            while batch := await self._jobs.recover_expired(
                limit=_BATCH, backoff_base=base, backoff_max=cap
            ):
                recovered += len(batch)
            while batch := await self._jobs.escalate_questions(limit=_BATCH):
                escalated += len(batch)
            while batch := await self._jobs.expire_input_deadlines(limit=_BATCH):
                timed_out += len(batch)
            woken = 0  # parents whose last child's process died before waking them
            while batch := await self._jobs.wake_waiting_parents(limit=_BATCH):
                woken += len(batch)
            pruned = await self._jobs.workers.prune(self._forget_workers_after)
            report = SweepReport(
                leases_recovered=recovered,
                inputs_timed_out=timed_out,
                questions_escalated=escalated,
                workers_pruned=pruned,
                parents_woken=woken,
            )
            if self._retention is not None:
                report = await self._retain(self._retention, report)
        if any(value for name, value in asdict(report).items() if name != "swept"):
            log.info("sweep: %s", report)
        if self._on_report is not None:
            self._on_report(report)
        return report

    async def _retain(self, policy: Retention, report: SweepReport) -> SweepReport:
        """Retention in rounds: one batch of each step (clear inputs, expire jobs, per policy)
        per round, until no step finds anything or half the lock's idle limit has passed (after
        one round at least). Jobs may finish faster than one step keeps up with; taking the
        steps in turn keeps each of them going, and the bound ends the pass (the rest is the
        next pass's) so that lease recovery, at the start of every pass, is never held up
        behind a backlog, and the pass ends before its lock's transaction would."""
        jobs = self._jobs
        groups = policy.groups()
        skip: list[set[UUID]] = [set() for _ in groups]  # jobs whose hook failed, per policy
        cleared = expired = 0
        deadline = time.monotonic() + self._lock_idle_limit / 2
        busy = True
        while busy:
            busy = False
            for (kinds, others, payload_ttl, job_ttl), failed in zip(groups, skip, strict=True):
                # Without a hook, every job due for deletion goes this pass or the next: its
                # input goes with it, and is not cleared first (when retention is behind, that
                # was half its work). A hook that fails keeps its job past its TTL, so there
                # every due input is cleared.
                hooked = self._hooks.any_of(kinds, others)
                batch = await jobs.clear_payloads(
                    ttl=payload_ttl,
                    kinds=kinds,
                    other_kinds=others,
                    limit=_RETENTION_BATCH,
                    job_ttl=None if hooked else job_ttl,
                )
                cleared += batch
                if hooked:
                    due = await jobs.due_for_expiry(
                        ttl=job_ttl,
                        kinds=kinds,
                        other_kinds=others,
                        skip=list(failed),
                        limit=_RETENTION_BATCH,
                    )
                    ready = []
                    for job in due:
                        if await self._run_hook(job):
                            ready.append(job)
                        else:
                            failed.add(job.id)
                    expired += len(await jobs.expire(ready))
                    found = bool(due)
                else:  # nothing to run first: chosen and deleted in one statement
                    gone = await jobs.expire_due(
                        ttl=job_ttl, kinds=kinds, other_kinds=others, limit=_RETENTION_BATCH
                    )
                    expired += len(gone)
                    found = bool(gone)
                busy = busy or bool(batch) or found
            if time.monotonic() >= deadline:
                break
        purged = 0
        while batch_count := await jobs.purge_tombstones(
            ttl=policy.tombstone_ttl, limit=_RETENTION_BATCH
        ):
            purged += batch_count
        return replace(
            report,
            payloads_cleared=cleared,
            jobs_expired=expired,
            hook_failures=sum(len(failed) for failed in skip),
            tombstones_purged=purged,
        )

    async def _run_hook(self, job: Job) -> bool:
        hook = self._hooks.get(job.kind)
        if hook is None:
            return True
        try:
            await hook(job)
        except Exception:
            log.exception("on_expire hook for %s (%s) failed; retried next sweep", job.id, job.kind)
            return False
        return True

    async def run(self) -> None:
        """Sweep forever (until cancelled); a database outage is logged and waited out."""
        while True:
            try:
                await self.sweep()
            except DatabaseUnavailable as exc:
                log.warning("sweep failed: %s", exc)
            except Exception:  # a bug in one pass must not end sweeping (nor the worker)
                log.exception("sweep failed unexpectedly")
            await asyncio.sleep(self._interval)
