"""The worker: the claim loop (the producer), the heartbeat, the completer (successes written in
batches), the progress flush and the shutdown drain. Each job runs in a task of its own whose body
is ``Executor.execute``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import operator
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from jobkeeper import tracing
from jobkeeper.clock import nap
from jobkeeper.domain.values import Lease
from jobkeeper.errors import DatabaseUnavailable, InvalidRequest, LifespanFailed
from jobkeeper.feed import CANCEL_REQUESTED, Change
from jobkeeper.maintenance import Retention, Sweeper
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.supervise import supervised, while_leased
from jobkeeper.worker.context import JobContext, StopReason
from jobkeeper.worker.executor import Executor
from jobkeeper.worker.registry import TaskRegistry
from jobkeeper.worker.scheduler import Scheduler

log = logging.getLogger("jobkeeper.worker")

_ID, _STATUS = operator.itemgetter(0), operator.itemgetter(2)  # of a change feed Change


@dataclass(slots=True)
class _Running:
    ctx: JobContext
    task: asyncio.Task[None]
    is_async: bool


class Completer:
    """Writes successes in batches: every success queued while a write is in flight goes out in
    the next statement. A handler's task ends once its success is queued, so its slot is free and
    the next claim overlaps the write."""

    def __init__(self, jobs: JobManager) -> None:
        self._jobs = jobs
        # each success with its settle span (jobkeeper.tracing), ended once it is written
        self._queued: list[tuple[JobContext, str, tracing.Span]] = []
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # set while none is queued or being written
        self._written.set()

    def add(self, ctx: JobContext, result_json: str) -> None:
        """Queue the success of ``ctx``'s job (``result_json``: its encoded result)."""
        span = tracing.settle_later(ctx.job, "complete") if ctx.traced else tracing.OFF
        self._queued.append((ctx, result_json, span))
        self._written.clear()
        self._wake.set()

    async def wait_written(self) -> None:
        """Return once every queued success is written (or its write failed)."""
        await self._written.wait()

    async def run(self) -> None:
        """Write every completion that piled up meanwhile in one statement."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queued = self._queued, []
            if batch:
                await self._write(batch)
            if not self._queued:
                self._written.set()

    async def _write(self, batch: Sequence[tuple[JobContext, str, tracing.Span]]) -> None:
        done = [(c.lease, r, c.latest) for c, r, _ in batch]
        try:
            written = set(
                await while_leased(
                    f"recording {len(batch)} completions",
                    lambda: self._jobs.mark_succeeded(done),
                    valid_until=lambda: max(c.lease_valid_until for c, _, _ in batch),
                )
            )
        except Exception as exc:  # past the leases: recovery runs the jobs again
            log.error("recording %d completions failed: %s", len(batch), exc)
            for _, _, span in batch:
                span.outcome(None, type(exc).__qualname__)
                span.end()
            return
        for ctx, _, span in batch:
            if ctx.job.id in written:
                span.outcome("succeeded")
            else:
                span.outcome(None, "lease_lost")
            span.end()
            if ctx.job.id not in written:
                log.warning(
                    "job %s finished but its lease was lost (or an earlier attempt of this write"
                    " committed); its result stands only if so",
                    ctx.job.id,
                )


class Worker:
    """Runs jobs of the registered kinds (``kinds`` narrows them) until stopped."""

    def __init__(
        self,
        jobs: JobManager,
        tasks: TaskRegistry,
        *,
        concurrency: int = 4,
        kinds: Sequence[str] | None = None,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        shutdown_grace: float = 30.0,
        progress_interval: float = 0.5,
        retention: Retention | None = None,
    ) -> None:
        if concurrency < 1:
            raise InvalidRequest("concurrency", "at least 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise InvalidRequest("lease_seconds", "lease_seconds and poll_interval must be > 0")
        self.id = uuid.uuid4()
        self._jobs = jobs
        self._tasks = tasks
        self._kinds = tuple(kinds) if kinds is not None else tasks.kinds
        unknown = set(self._kinds) - set(tasks.kinds)
        if unknown:
            raise InvalidRequest("kinds", f"no handler registered for {sorted(unknown)}")
        self._concurrency = concurrency
        self._lease_seconds = lease_seconds
        self._heartbeat_interval = lease_seconds / 3
        self._poll_interval = poll_interval
        self._grace = shutdown_grace
        self._progress_interval = progress_interval
        self._running: dict[str, _Running] = {}  # by job id as text, as the change feed spells it
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_now = asyncio.Event()
        self._completer = Completer(jobs)
        self._executor = Executor(
            jobs,
            threads=concurrency,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            complete=self._completer.add,
            progress_due=self._progress_due,
        )
        self._spawned: set[asyncio.Task[None]] = set()
        self._resources: Any = None  # what the registry's lifespan yielded, during run()
        # every worker sweeps (one at a time): expired leases, deadlines and, with a retention
        # policy, retention with this registry's on_expire hooks; no janitor to schedule
        self._sweeper = Sweeper(
            jobs,
            interval=self._heartbeat_interval,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            retention=retention,
            hooks=tasks.expiry_hooks,
            # paused mid-pass, this worker holds up others' recovery for about one lease at most
            lock_idle_limit=lease_seconds,
        )
        # every worker fires the due ticks of its kinds' schedules; Postgres keeps it to one job
        # per tick (worker/scheduler.py)
        self._scheduler = Scheduler(
            jobs, tasks.periodic_schedules(self._kinds), self._kinds, interval=poll_interval
        )

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run a short side task, keeping a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # --- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: Settings, tasks: TaskRegistry, *, jobs: JobManager, **overrides: Any
    ) -> Worker:
        """The worker ``settings`` describe (``JOBKEEPER_*``: concurrency, lease, backoff,
        shutdown grace, retention), on the open manager ``jobs`` (``JobManager.from_settings(
        settings, role="worker")``); ``overrides`` replace any of the constructor's arguments."""
        options: dict[str, Any] = {
            "concurrency": settings.worker_concurrency,
            "lease_seconds": settings.lease_seconds,
            "backoff_base": settings.backoff_base,
            "backoff_max": settings.backoff_max,
            "shutdown_grace": settings.shutdown_grace,
            "retention": Retention.from_settings(settings),
        }
        options.update(overrides)
        return cls(jobs, tasks, **options)

    async def run(self) -> None:
        """Enter the registry's lifespan, work until ``stop()``, then drain, release leftover
        leases, deregister and leave the lifespan. A lifespan that fails to enter raises
        ``LifespanFailed`` before anything starts (``jobkeeper worker`` exits with its message)."""
        async with contextlib.AsyncExitStack() as stack:
            lifespan, resources = self._tasks.lifespan, None
            if lifespan is not None:
                try:
                    resources = await stack.enter_async_context(lifespan())
                except Exception as exc:
                    raise LifespanFailed(exc) from exc
            await self._work(resources)

    async def _work(self, resources: Any) -> None:
        self._resources = resources
        self._executor.start(asyncio.get_running_loop())
        await self._jobs.workers.register(
            self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            kinds=self._kinds,
            concurrency=self._concurrency,
        )
        unsubscribe = self._jobs.subscribe_batches(self._on_changes)
        # Everything alive now (modules, the registry, the lifespan's resources) lives as long as
        # the process: out of the collector's sight, the full collections that a job's
        # allocations keep triggering no longer scan it (5 of ~35 µs of CPU per no-op job).
        gc.freeze()
        helpers = [
            asyncio.create_task(
                supervised(f"{name} loop", loop), name=f"jobkeeper-{name.replace(' ', '-')}"
            )
            for name, loop in (
                ("heartbeat", self._heartbeat_loop),
                ("sweeper", self._sweeper.run),
                ("completion", self._completer.run),
                ("scheduler", self._scheduler.run),
            )
        ]
        log.info(
            "worker %s started: kinds %s, concurrency %d", self.id, self._kinds, self._concurrency
        )
        try:
            await supervised("claim loop", self._claim_loop)
            await self._drain()
        finally:
            unsubscribe()
            side = [*helpers, *self._spawned]
            for helper in side:
                helper.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            self._executor.close()
            with contextlib.suppress(DatabaseUnavailable):
                await self._jobs.workers.unregister(self.id)
            log.info("worker %s stopped", self.id)

    def stop(self) -> None:
        """Stop claiming and drain gracefully; called a second time, release leases at once."""
        if self._stopping:
            self._stop_now.set()
        self._stopping = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT call ``stop()`` (a second signal stops at once)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    @property
    def running_jobs(self) -> tuple[UUID, ...]:
        return tuple(r.ctx.job.id for r in self._running.values())

    # --- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            free = self._concurrency - len(self._running)
            claimed = 0
            if free > 0:
                asked, since = time.monotonic(), time.time_ns()
                try:
                    leases = await self._jobs.claim(
                        self.id, kinds=self._kinds, limit=free, lease_seconds=self._lease_seconds
                    )
                except DatabaseUnavailable as exc:
                    failures += 1
                    log.warning("claim failed (%s); retrying", exc)
                    await nap(self._wake, min(self._poll_interval, 0.1 * 2**failures))
                    continue
                failures = 0
                if self._stopping:  # stopped while claiming: give these back untouched
                    with contextlib.suppress(DatabaseUnavailable):
                        await self._jobs.release(leases)
                    break
                claimed = len(leases)
                tracing.claimed(leases, since)
                # asked once per batch, not twice per job (a run span, a settle span)
                traced = tracing.enabled()
                for lease in leases:
                    self._start(lease, asked + self._lease_seconds, traced)
            if claimed and claimed == free:
                await asyncio.sleep(0)  # maybe more work: claim again once handlers got a turn
                continue
            await nap(self._wake, self._poll_interval)

    def _on_changes(self, changes: Sequence[Change]) -> None:
        """What the change feed says (``postgres/notify.py``): a job queued wakes the claim loop;
        a cancel request for one of this worker's jobs stops it; a change found by a catch-up
        (status ``None``, what changed unknown) does both, the stop after a read. Nothing else
        concerns a worker, so its own writes need no filtering: a lost lease shows in the next
        heartbeat or fenced write. Most changes are other workers', so the tests run in C (set
        operations)."""
        statuses = set(map(_STATUS, changes))
        if "queued" in statuses or None in statuses:
            self._wake.set()
        if self._running and not self._running.keys().isdisjoint(map(_ID, changes)):
            for job_id, _version, status in changes:
                running = self._running.get(job_id)
                if running is None or running.ctx.finishing:
                    continue
                if status == CANCEL_REQUESTED:
                    self._stop_job(running, "cancel")
                elif status is None:
                    self._spawn(self._check_cancel(running))

    async def _check_cancel(self, running: _Running) -> None:
        job = running.ctx.job
        try:
            current = await self._jobs.get(job.id, tenant=job.tenant, consistency="strong")
        except Exception:  # the heartbeat is the fallback
            log.debug("cancel check for %s failed", job.id, exc_info=True)
            return
        if current.cancel_requested:
            self._stop_job(running, "cancel")

    def _stop_job(self, running: _Running, reason: StopReason) -> None:
        running.ctx.stop(reason)
        if running.is_async:
            running.task.cancel()
        # a sync handler's thread cannot be interrupted: it sees ctx.cancelled and stops itself

    # --- running a job -----------------------------------------------------------------------

    def _start(self, lease: Lease, valid_until: float, traced: bool) -> None:
        ctx = JobContext(self._executor, lease, self._resources)
        ctx.lease_valid_until = valid_until
        ctx.traced = traced
        spec = self._tasks.get(lease.job.kind)
        text = ctx.job_text
        task = asyncio.create_task(self._executor.execute(ctx, spec), name=f"jobkeeper-job-{text}")
        self._running[text] = _Running(ctx, task, spec is not None and spec.is_async)
        task.add_done_callback(functools.partial(self._finished, text))

    def _finished(self, job_text: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_text, None)
        self._wake.set()  # a slot is free

    # --- progress ----------------------------------------------------------------------------

    def _progress_due(self, ctx: JobContext) -> None:
        """On the loop, once a context has progress to write: write it within the interval."""
        delay = max(0.0, ctx.last_flush + self._progress_interval - time.monotonic())
        asyncio.get_running_loop().call_later(delay, lambda: self._spawn(self._flush_progress(ctx)))

    async def _flush_progress(self, ctx: JobContext) -> None:
        report = ctx.take_progress()
        if report is None or ctx.job_text not in self._running:
            return
        try:
            job = await self._jobs.report_progress(ctx.lease, report)
        except DatabaseUnavailable as exc:
            log.warning("progress of %s not recorded: %s", ctx.job.id, exc)
            return
        if job is None:
            running = self._running.get(ctx.job_text)
            if running is not None:
                self._stop_job(running, "lease_lost")

    # --- leases ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            running = list(self._running.values())
            asked = time.monotonic()
            try:
                held = await self._jobs.renew_leases(
                    [(r.ctx.job.id, r.ctx.lease.token) for r in running], self._lease_seconds
                )
                await self._jobs.workers.heartbeat(self.id)
            except DatabaseUnavailable as exc:
                log.warning("heartbeat failed (%s); leases expire if this lasts", exc)
                continue
            for entry in running:
                job_id = entry.ctx.job.id
                if job_id in held:
                    entry.ctx.lease_valid_until = asked + self._lease_seconds
                if entry.ctx.finishing:
                    continue  # its outcome is being written; nothing to stop
                if job_id not in held:
                    log.warning("lease on %s lost; stopping its handler", job_id)
                    self._stop_job(entry, "lease_lost")
                elif held[job_id]:
                    self._stop_job(entry, "cancel")

    async def _drain(self) -> None:
        """Let running handlers finish for the grace period, then give their leases back."""
        if self._running:
            log.info("waiting up to %.0f s for %d running jobs", self._grace, len(self._running))
            tasks = [r.task for r in self._running.values()]
            waiting = asyncio.ensure_future(asyncio.wait(tasks, timeout=self._grace))
            stop_now = asyncio.ensure_future(self._stop_now.wait())
            await asyncio.wait({waiting, stop_now}, return_when=asyncio.FIRST_COMPLETED)
            stop_now.cancel()
            waiting.cancel()
        leftovers = list(self._running.values())
        await self._completer.wait_written()  # successes already recorded by handlers go out first
        if not leftovers:
            return
        for running in leftovers:
            self._stop_job(running, "shutdown")
        try:
            released = await asyncio.wait_for(
                self._jobs.release([r.ctx.lease for r in leftovers]), timeout=5.0
            )
            log.info("released %d leases back to the queue", len(released))
        except (DatabaseUnavailable, TimeoutError) as exc:
            log.error("could not release leases (%s); they expire and are recovered", exc)
        await asyncio.gather(*(r.task for r in leftovers), return_exceptions=True)
