"""Workers: claim jobs, run their handlers under fenced leases, and record what happened.

```python
tasks = TaskRegistry()

@tasks.task("convert_pdf")
async def convert(ctx: JobContext, payload: dict) -> dict: ...

worker = Worker(jobs, tasks, concurrency=4)
await worker.run()        # until worker.stop(); SIGTERM/SIGINT with install_signal_handlers()
```

* **Claims** take up to the free slots at once (``FOR UPDATE SKIP LOCKED``), woken by the change
  feed when a job is queued, with a polling fallback; no busy loop when idle.
* **Leases** are renewed by one heartbeat statement for all of the worker's jobs. Every write a
  worker makes presents its lease token, so a worker whose lease was taken over (it was paused,
  cut off or too slow to heartbeat) can overwrite nothing: it learns so and stops the handler.
* **Recovery** needs no janitor: every worker re-queues jobs whose lease expired, with backoff.
* **Cancellation** reaches the handler through the change feed (heartbeat responses as fallback):
  an async handler's task is cancelled; a sync handler sees ``ctx.cancelled`` and stops at its next
  ``ctx.raise_if_cancelled()``.
* **Progress** is coalesced: ``ctx.progress()`` only records, and at most one write per job per
  ``progress_interval`` reaches Postgres.
* **Shutdown**: ``stop()`` stops claiming, lets handlers finish for ``shutdown_grace`` seconds, then
  releases the remaining leases (the jobs are queued again, the attempt not counted); a second
  ``stop()`` (a second signal) releases at once.
* **Questions**: ``await ctx.ask(...)`` parks the job in ``waiting_input`` without holding a slot;
  an answer queues it again and the handler is re-invoked from the start, where ``ctx.ask``
  returns stored answers at once (replay) and ``ctx.checkpoint`` returns stored side effects.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import operator
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias
from uuid import UUID

from jobkeeper.domain.questions import build_prompt
from jobkeeper.domain.validate import encode_json, optional_text, validate_kind, validate_progress
from jobkeeper.domain.values import Job, Lease, Progress
from jobkeeper.errors import (
    DatabaseUnavailable,
    InvalidRequest,
    JobCancelled,
    PermanentFailure,
    Retry,
)
from jobkeeper.feed import Change
from jobkeeper.logs import job_id_var
from jobkeeper.maintenance import ExpiryHook, ExpiryHooks, Retention, Sweeper
from jobkeeper.manager import JobManager

__all__ = ["JobContext", "Task", "TaskRegistry", "Worker"]

log = logging.getLogger("jobkeeper.worker")

AsyncHandler: TypeAlias = Callable[["JobContext", Any], Awaitable[Any]]
SyncHandler: TypeAlias = Callable[["JobContext", Any], Any]
_TRACEBACK_LIMIT = 8_000  # characters of traceback kept with a failure
_ID, _STATUS = operator.itemgetter(0), operator.itemgetter(2)  # of a change feed Change
_StopReason = Literal["cancel", "lease_lost", "shutdown"]


class _Suspended(BaseException):
    """Unwinds a handler whose job now waits for input (or whose lease is gone). A
    ``BaseException``, so a handler's ``except Exception`` does not swallow it."""


@dataclass(frozen=True, slots=True)
class Task:
    """A registered handler: ``is_async`` handlers run on the event loop, others in a thread."""

    kind: str
    handler: AsyncHandler | SyncHandler
    is_async: bool


class TaskRegistry:
    """Maps job kinds to handlers. ``@tasks.task("kind")`` registers a function."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self.expiry_hooks = ExpiryHooks()

    def on_expire(self, kind: str) -> Callable[[ExpiryHook], ExpiryHook]:
        """Register an async ``hook(job)`` run before retention deletes a job of ``kind``."""
        return self.expiry_hooks.on_expire(kind)

    def task(self, kind: str) -> Callable[[Any], Any]:
        """Register the decorated function for ``kind`` (async: on the loop; sync: in a thread)."""

        def register(handler: Any) -> Any:
            self.register(kind, handler)
            return handler

        return register

    def register(self, kind: str, handler: AsyncHandler | SyncHandler) -> None:
        kind = validate_kind(kind)
        if kind in self._tasks:
            raise InvalidRequest("kind", f"{kind!r} is already registered")
        self._tasks[kind] = Task(kind, handler, inspect.iscoroutinefunction(handler))

    def get(self, kind: str) -> Task | None:
        return self._tasks.get(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._tasks)


class JobContext:
    """What a handler gets besides its payload. Safe to use from a sync handler's thread."""

    def __init__(self, worker: Worker, lease: Lease) -> None:
        self._worker = worker
        self.lease = lease
        self._job_text = str(lease.job.id)  # the id as logs and the change feed spell it
        # set once by the loop, read by handler threads: a plain attribute is enough (the GIL)
        self._stop_reason: _StopReason | None = None
        self._lock = threading.Lock()
        self._pending: Progress | None = None
        self.latest: Progress | None = None
        self._flush_scheduled = False
        self._last_flush = 0.0
        self.known_version = lease.job.version
        self.finishing = False  # its outcome is being written: feed echoes are expected
        self._answers: Mapping[str, Any] = lease.job.answers or {}
        self._checkpoints: dict[str, Any] = (
            dict(lease.job.checkpoints) if lease.job.checkpoints else {}
        )
        self._asked = 0

    @property
    def job(self) -> Job:
        """The job as it was claimed (attempts already counts this run)."""
        return self.lease.job

    @property
    def cancelled(self) -> bool:
        """Whether cancellation was requested (or the lease was lost): stop as soon as you can."""
        return self._stop_reason is not None

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` once cancellation was requested; call it between work steps."""
        if self._stop_reason is not None:
            raise JobCancelled(f"job {self.job.id} was cancelled")

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Report progress. It is coalesced: the latest report is written at most once per
        ``progress_interval``, so calling it in a tight loop is fine."""
        report = validate_progress(fraction, message)
        with self._lock:
            self._pending = report
            self.latest = report  # what the completion records, whatever flushes are in flight
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        self._worker.schedule_progress(self)

    # --- questions and checkpoints (the replay model) ------------------------------------------

    async def ask(
        self,
        prompt: str,
        *,
        schema: dict[str, Any] | None = None,
        choices: Sequence[Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the person's deadline, not the call's
        on_timeout: Literal["fail", "cancel", "default"] = "fail",
        default: Any = None,
        key: str | None = None,
    ) -> Any:
        """Ask a person and return the answer.

        The first time, the job moves to ``waiting_input`` with the question stored durably, the
        lease is released (no worker slot is held while a person thinks) and the handler unwinds.
        Once answered, any worker re-invokes the handler, and this call returns the stored answer
        at once. Questions are matched by ``key`` (default: their order, ``q1``, ``q2``...), so
        ask them in a stable order. ``timeout`` seconds without an answer: ``on_timeout`` fails
        the job (code ``input_timeout``), cancels it, or resumes with ``default``.
        """
        question = self._question(prompt, schema, choices, timeout, on_timeout, default, key)
        if not isinstance(question, dict):
            return question.answer
        await self._worker.park(self, question)
        raise AssertionError("park() always raises")

    def ask_sync(
        self,
        prompt: str,
        *,
        schema: dict[str, Any] | None = None,
        choices: Sequence[Any] | None = None,
        timeout: float | None = None,
        on_timeout: Literal["fail", "cancel", "default"] = "fail",
        default: Any = None,
        key: str | None = None,
    ) -> Any:
        """``ask`` for a sync handler (from its thread): same replay model, same arguments."""
        question = self._question(prompt, schema, choices, timeout, on_timeout, default, key)
        if not isinstance(question, dict):
            return question.answer
        self._worker.call_from_thread(self._worker.park(self, question))
        raise AssertionError("park() always raises")

    def _question(
        self,
        prompt: str,
        schema: dict[str, Any] | None,
        choices: Sequence[Any] | None,
        timeout: float | None,
        on_timeout: str,
        default: Any,
        key: str | None,
    ) -> dict[str, Any] | _Answered:
        self._asked += 1
        key = optional_text("key", key) or f"q{self._asked}"
        if key in self._answers:
            return _Answered(self._answers[key].get("answer"))
        return build_prompt(
            key=key,
            text=prompt,
            schema=schema,
            choices=choices,
            timeout=timeout,
            on_timeout=on_timeout,
            default=default,
        )

    async def checkpoint(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync or async) once for this job and keep its JSON result: on a re-run
        (after an answer, a retry or a recovered crash) the stored result is returned without
        calling ``fn``. A crash between ``fn`` and the write runs it again: at least once."""
        key = optional_text("key", key) or ""
        if key in self._checkpoints:
            return self._checkpoints[key]
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        await self._worker.keep_checkpoint(self, key, value)
        return value

    def checkpoint_sync(self, key: str, fn: Callable[[], Any]) -> Any:
        """``checkpoint`` for a sync handler (from its thread)."""
        key = optional_text("key", key) or ""
        if key in self._checkpoints:
            return self._checkpoints[key]
        value = fn()
        self._worker.call_from_thread(self._worker.keep_checkpoint(self, key, value))
        return value

    def _stop(self, reason: _StopReason) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason

    def _take_progress(self) -> Progress | None:
        with self._lock:
            report, self._pending = self._pending, None
            self._flush_scheduled = False
            return report


@dataclass(frozen=True, slots=True)
class _Answered:
    answer: Any


@dataclass(slots=True)
class _Running:
    ctx: JobContext
    task: asyncio.Task[None]
    is_async: bool


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
        self._backoff = (backoff_base, backoff_max)
        self._grace = shutdown_grace
        self._progress_interval = progress_interval
        self._running: dict[str, _Running] = {}  # by job id as text, as the change feed spells it
        self._wake = asyncio.Event()
        self._stopping = False
        self._stop_now = asyncio.Event()
        # successes waiting to be written (their handlers are done and their slots free, so the
        # next claim overlaps the write); _written is set while none is pending or being written
        self._completions: list[tuple[JobContext, str]] = []
        self._completing = asyncio.Event()
        self._written = asyncio.Event()
        self._written.set()
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="jobkeeper-job")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spawned: set[asyncio.Task[None]] = set()
        # every worker sweeps (one at a time): expired leases, deadlines and, with a retention
        # policy, retention with this registry's on_expire hooks; no janitor to schedule
        self._sweeper = Sweeper(
            jobs,
            interval=self._heartbeat_interval,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            retention=retention,
            hooks=tasks.expiry_hooks,
        )

    def _spawn(self, work: Awaitable[None]) -> None:
        """Run a short side task, keeping a reference until it ends."""
        task = asyncio.ensure_future(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Work until ``stop()``; then drain, release leftover leases and deregister."""
        self._loop = asyncio.get_running_loop()
        await self._jobs.workers.register(
            self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            kinds=self._kinds,
            concurrency=self._concurrency,
        )
        unsubscribe = self._jobs.subscribe_batches(self._on_changes)
        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="jobkeeper-heartbeat"),
            asyncio.create_task(self._sweeper.run(), name="jobkeeper-sweeper"),
            asyncio.create_task(self._completion_loop(), name="jobkeeper-completions"),
        ]
        log.info(
            "worker %s started: kinds %s, concurrency %d", self.id, self._kinds, self._concurrency
        )
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            unsubscribe()
            side = [*helpers, *self._spawned]
            for helper in side:
                helper.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            self._executor.shutdown(wait=False, cancel_futures=True)
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
                try:
                    leases = await self._jobs.claim(
                        self.id, kinds=self._kinds, limit=free, lease_seconds=self._lease_seconds
                    )
                except DatabaseUnavailable as exc:
                    failures += 1
                    log.warning("claim failed (%s); retrying", exc)
                    await self._sleep(min(self._poll_interval, 0.1 * 2**failures))
                    continue
                failures = 0
                if self._stopping:  # stopped while claiming: give these back untouched
                    with contextlib.suppress(DatabaseUnavailable):
                        await self._jobs.release(leases)
                    break
                claimed = len(leases)
                for lease in leases:
                    self._start(lease)
            if claimed and claimed == free:
                await asyncio.sleep(0)  # maybe more work: claim again once handlers got a turn
                continue
            await self._sleep(self._poll_interval)

    async def _sleep(self, seconds: float) -> None:
        """Wait for a wake-up (new work, a free slot, stop) or ``seconds``."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
        # event is set (stop() does both), and the task would then wait forever
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    def _on_changes(self, changes: Sequence[Change]) -> None:
        """Every change any process commits: wake up for claimable work, and look at changes to
        this worker's own jobs. Most are neither, so both tests run in C (set operations)."""
        statuses = set(map(_STATUS, changes))
        if "queued" in statuses or None in statuses:
            self._wake.set()  # maybe claimable work (None: found by a catch-up, status unknown)
        if self._running and not self._running.keys().isdisjoint(map(_ID, changes)):
            for job_id, version, status in changes:
                running = self._running.get(job_id)
                if running is not None:
                    self._on_change(running, version, status)

    def _on_change(self, running: _Running, version: int, status: str | None) -> None:
        if running.ctx.finishing or version <= running.ctx.known_version:
            return  # our own final write echoing back, or already seen
        if status not in ("running", None):
            running.ctx.known_version = version
            self._stop_job(running, "lease_lost")  # recovered, released or finished elsewhere
            return
        running.ctx.known_version = version
        # someone else changed our running job: a cancel request is the only such change
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

    def _stop_job(self, running: _Running, reason: _StopReason) -> None:
        running.ctx._stop(reason)
        if running.is_async:
            running.task.cancel()
        # a sync handler's thread cannot be interrupted: it sees ctx.cancelled and stops itself

    # --- running a job -----------------------------------------------------------------------

    def _start(self, lease: Lease) -> None:
        ctx = JobContext(self, lease)
        spec = self._tasks.get(lease.job.kind)
        text = ctx._job_text
        task = asyncio.create_task(self._execute(ctx, spec), name=f"jobkeeper-job-{text}")
        self._running[text] = _Running(ctx, task, spec is not None and spec.is_async)
        task.add_done_callback(functools.partial(self._finished, text))

    def _finished(self, job_text: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(job_text, None)
        self._wake.set()  # a slot is free

    async def _execute(self, ctx: JobContext, spec: Task | None) -> None:
        job = ctx.job
        job_id_var.set(ctx._job_text)  # this task's context: every log line names the job
        if spec is None:
            error = {"code": "unknown_kind", "message": f"no handler for kind {job.kind!r}"}
            await self._record_failure(ctx, error, retryable=False, delay=None)
            return
        try:
            if spec.is_async:
                result = await spec.handler(ctx, job.payload)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._executor, spec.handler, ctx, job.payload)
        except _Suspended:
            return  # the job waits for input (or its lease is gone): nothing more to write
        except asyncio.CancelledError:
            if ctx._stop_reason is None:
                raise  # not ours: the worker itself is being torn down
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if ctx._stop_reason == "cancel":
                await self._record_cancelled(ctx)
        except JobCancelled:
            # only a real cancel request ends the job cancelled; a lost lease or a shutdown stop
            # leaves it to its new owner or to the release that follows
            if ctx._stop_reason not in ("lease_lost", "shutdown"):
                await self._record_cancelled(ctx)
        except Retry as exc:
            await self._record_failure(ctx, _describe(exc), retryable=True, delay=exc.delay)
        except PermanentFailure as exc:
            await self._record_failure(ctx, _describe(exc), retryable=False, delay=None)
        except Exception as exc:
            await self._record_failure(ctx, _describe(exc), retryable=True, delay=None)
        else:
            await self._record_success(ctx, result)

    async def _record_success(self, ctx: JobContext, result: Any) -> None:
        ctx.finishing = True
        try:
            result_json = encode_json("result", result)
        except InvalidRequest as exc:
            error = {"code": "invalid_result", "message": exc.message}
            await self._record_failure(ctx, error, retryable=False, delay=None)
            return
        self._completions.append((ctx, result_json))
        self._written.clear()
        self._completing.set()

    async def _completion_loop(self) -> None:
        """Write every completion that piled up meanwhile in one statement."""
        while True:
            await self._completing.wait()
            self._completing.clear()
            batch, self._completions = self._completions, []
            if batch:
                await self._write_completions(batch)
            if not self._completions:
                self._written.set()

    async def _write_completions(self, batch: Sequence[tuple[JobContext, str]]) -> None:
        try:
            written = set(
                await self._jobs.mark_succeeded([(c.lease, r, c.latest) for c, r in batch])
            )
        except Exception as exc:  # the leases expire and recovery runs the jobs again
            log.error("recording %d completions failed: %s", len(batch), exc)
            return
        for ctx, _ in batch:
            if ctx.job.id not in written:
                log.warning("job %s finished but its lease was lost; result lost", ctx.job.id)

    async def _record_failure(
        self, ctx: JobContext, error: dict[str, Any], *, retryable: bool, delay: float | None
    ) -> None:
        ctx.finishing = True
        try:
            job = await self._jobs.mark_failed(
                ctx.lease,
                error,
                retryable=retryable,
                delay=delay,
                backoff_base=self._backoff[0],
                backoff_max=self._backoff[1],
            )
        except DatabaseUnavailable as exc:
            log.error("recording the failure of %s failed: %s", ctx.job.id, exc)
            return
        if job is None:
            log.warning("job %s failed but its lease was lost", ctx.job.id)

    async def _record_cancelled(self, ctx: JobContext) -> None:
        ctx.finishing = True
        try:
            if await self._jobs.mark_cancelled(ctx.lease) is None:
                log.info("job %s stopped; its lease was already gone", ctx.job.id)
        except DatabaseUnavailable as exc:
            log.error("recording the cancel of %s failed: %s", ctx.job.id, exc)

    # --- questions and checkpoints -------------------------------------------------------------

    def call_from_thread(self, work: Awaitable[Any]) -> Any:
        """Run ``work`` on the worker's loop from a handler thread and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(_awaited(work), self._loop).result()

    async def park(self, ctx: JobContext, question: dict[str, Any]) -> None:
        """Store the question and unwind the handler (``_Suspended``), or ``JobCancelled``."""
        ctx.finishing = True
        job = await self._jobs.ask(ctx.lease, question)
        if job is None:
            current = await self._jobs.get(ctx.job.id, tenant=ctx.job.tenant, consistency="strong")
            if current.status == "running" and current.cancel_requested:
                ctx.finishing = False
                raise JobCancelled(f"job {ctx.job.id} was cancelled")
        raise _Suspended

    async def keep_checkpoint(self, ctx: JobContext, key: str, value: Any) -> None:
        job = await self._jobs.checkpoint(ctx.lease, key, encode_json("checkpoint", value))
        if job is None:
            raise _Suspended  # the lease is gone: stop quietly, another worker owns the job
        ctx.known_version = max(ctx.known_version, job.version)
        ctx._checkpoints[key] = value

    # --- progress ----------------------------------------------------------------------------

    def schedule_progress(self, ctx: JobContext) -> None:
        """Called by ``JobContext.progress`` from any thread: flush it within the interval."""
        loop = self._loop
        if loop is None:
            return
        delay = max(0.0, ctx._last_flush + self._progress_interval - time.monotonic())
        loop.call_soon_threadsafe(self._flush_later, ctx, delay)

    def _flush_later(self, ctx: JobContext, delay: float) -> None:
        asyncio.get_running_loop().call_later(delay, lambda: self._spawn(self._flush_progress(ctx)))

    async def _flush_progress(self, ctx: JobContext) -> None:
        report = ctx._take_progress()
        if report is None or ctx._job_text not in self._running:
            return
        ctx._last_flush = time.monotonic()
        try:
            job = await self._jobs.report_progress(ctx.lease, report)
        except DatabaseUnavailable as exc:
            log.warning("progress of %s not recorded: %s", ctx.job.id, exc)
            return
        if job is None:
            running = self._running.get(ctx._job_text)
            if running is not None:
                self._stop_job(running, "lease_lost")
        else:
            ctx.known_version = max(ctx.known_version, job.version)

    # --- leases ------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat_interval)
            running = list(self._running.values())
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
        await self._written.wait()  # successes already recorded by handlers go out first
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


async def _awaited(work: Awaitable[Any]) -> Any:
    return await work


def _describe(exc: BaseException) -> dict[str, Any]:
    """A failure as stored in ``jobs.error``: code, type, message and a bounded traceback."""
    trace = "".join(traceback.format_exception(exc))
    if len(trace) > _TRACEBACK_LIMIT:
        trace = "...\n" + trace[-_TRACEBACK_LIMIT:]
    code = "permanent_failure" if isinstance(exc, PermanentFailure) else "handler_error"
    if isinstance(exc, Retry):
        code = "retry_requested"
    return {"code": code, "type": type(exc).__qualname__, "message": str(exc), "traceback": trace}
