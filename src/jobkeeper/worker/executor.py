"""Running one job: its handler on the event loop or in a thread, then the one write its outcome
calls for.

``Executor.execute`` is the body of a job's task. The executor is also the ``JobHost`` its jobs'
contexts call back into: questions and checkpoints are written here under the job's lease, and a
handler thread reaches the loop only through it. Successes go to the completer (a callback), which
writes them in batches; progress goes to the worker's flush (a callback).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import traceback
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, NoReturn, TypeVar
from uuid import UUID

from jobkeeper import tracing
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.validate import encode_json
from jobkeeper.domain.values import Job
from jobkeeper.errors import (
    ChildFailed,
    DatabaseUnavailable,
    InvalidRequest,
    JobCancelled,
    LeaseLost,
    PermanentFailure,
    Retry,
)
from jobkeeper.logs import job_id_var
from jobkeeper.manager import JobManager
from jobkeeper.supervise import while_leased
from jobkeeper.worker.context import JobContext
from jobkeeper.worker.registry import Task

log = logging.getLogger("jobkeeper.worker")

_TRACEBACK_LIMIT = 8_000  # characters of traceback kept with a failure
_T = TypeVar("_T")


class _Suspended(BaseException):
    """Unwinds a handler whose job now waits for input (or whose lease is gone). A
    ``BaseException``, so a handler's ``except Exception`` does not swallow it."""


class Executor:
    """Runs handlers and records their outcomes; the ``JobHost`` of the contexts it runs.

    ``complete(ctx, result_json)`` queues a success for the completer; ``progress_due(ctx)`` is
    called on the loop when a context has progress to write.
    """

    def __init__(
        self,
        jobs: JobManager,
        *,
        threads: int,
        backoff_base: float,
        backoff_max: float,
        complete: Callable[[JobContext, str], None],
        progress_due: Callable[[JobContext], None],
    ) -> None:
        self._jobs = jobs
        self._backoff = (backoff_base, backoff_max)
        self._complete = complete
        self._progress_due = progress_due
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="jobkeeper-job")
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Jobs run on ``loop`` from now on (handler threads and progress call back into it)."""
        self._loop = loop

    def close(self) -> None:
        """Shut the handler threads' pool down without waiting for running handlers."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def execute(self, ctx: JobContext, spec: Task | None) -> None:
        """Run the job's handler and record its outcome (``spec`` None: no handler for its kind),
        in a span that continues the trace the job was submitted in (``jobkeeper.tracing``) if
        tracing was on when it was claimed."""
        with tracing.running(ctx.job) if ctx.traced else tracing.OFF:
            await self._execute(ctx, spec)

    async def _execute(self, ctx: JobContext, spec: Task | None) -> None:
        job = ctx.job
        job_id_var.set(ctx.job_text)  # this task's context: every log line names the job
        if spec is None:
            error = {"code": "unknown_kind", "message": f"no handler for kind {job.kind!r}"}
            await self._record_failure(ctx, error, retryable=False, delay=None)
            return
        try:
            if spec.is_async:
                result = await spec.handler(ctx, job.payload)
            else:
                loop = asyncio.get_running_loop()
                # in a copy of this task's context: the job's log id and its span go along
                run = contextvars.copy_context().run
                result = await loop.run_in_executor(
                    self._threads, run, spec.handler, ctx, job.payload
                )
        except _Suspended:
            return  # the job waits for input (or its lease is gone): nothing more to write
        except LeaseLost:
            # a fenced write found the lease gone: the job is recovered and runs elsewhere
            log.warning("job %s stopped: a fenced write found its lease lost", job.id)
        except asyncio.CancelledError:
            if ctx.stop_reason is None:
                raise  # not ours: the worker itself is being torn down
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            if ctx.stop_reason == "cancel":
                await self._record_cancelled(ctx)
        except JobCancelled:
            # only a real cancel request ends the job cancelled; a lost lease or a shutdown stop
            # leaves it to its new owner or to the release that follows
            if ctx.stop_reason not in ("lease_lost", "shutdown"):
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
        self._complete(ctx, result_json)

    async def _record_failure(
        self, ctx: JobContext, error: dict[str, Any], *, retryable: bool, delay: float | None
    ) -> None:
        ctx.finishing = True
        error_type = error.get("type", error["code"])
        tracing.failed(error_type)
        try:
            with tracing.settling("fail", ctx.job.id, ctx.job.kind) as span:
                job = await while_leased(
                    f"recording the failure of {ctx.job.id}",
                    lambda: self._jobs.mark_failed(
                        ctx.lease,
                        error,
                        retryable=retryable,
                        delay=delay,
                        backoff_base=self._backoff[0],
                        backoff_max=self._backoff[1],
                    ),
                    valid_until=lambda: ctx.lease_valid_until,
                )
                span.outcome(None if job is None else job.status.value, error_type)
        except DatabaseUnavailable as exc:
            log.error("recording the failure of %s failed: %s", ctx.job.id, exc)
            return
        if job is None:
            log.warning("job %s failed but its lease was lost", ctx.job.id)

    async def _record_cancelled(self, ctx: JobContext) -> None:
        ctx.finishing = True
        try:
            with tracing.settling("cancel", ctx.job.id, ctx.job.kind) as span:
                cancelled = await while_leased(
                    f"recording the cancel of {ctx.job.id}",
                    lambda: self._jobs.mark_cancelled(ctx.lease),
                    valid_until=lambda: ctx.lease_valid_until,
                )
                span.outcome(None if cancelled is None else cancelled.status.value)
            if cancelled is None:
                log.info("job %s stopped; its lease was already gone", ctx.job.id)
        except DatabaseUnavailable as exc:
            log.error("recording the cancel of %s failed: %s", ctx.job.id, exc)

    # --- the JobHost its contexts call ---------------------------------------------------------

    def call_from_thread(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the worker's loop from a handler thread and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()

    async def park(self, ctx: JobContext, question: dict[str, Any]) -> NoReturn:
        """Store the question and unwind the handler (``_Suspended``), or ``JobCancelled``."""
        await self._park(
            ctx, "ask", "storing the question", lambda: self._jobs.ask(ctx.lease, question)
        )

    async def park_until(
        self, ctx: JobContext, key: str, until: datetime | None, seconds: float
    ) -> NoReturn:
        """Queue the job again for its wake-up time and unwind the handler, or ``JobCancelled``."""
        sleep = self._jobs.sleep
        await self._park(
            ctx, "sleep", "parking", lambda: sleep(ctx.lease, key, until=until, seconds=seconds)
        )

    async def park_for_children(self, ctx: JobContext, children: list[UUID]) -> NoReturn:
        """Park the job until ``children`` finish and unwind the handler, or ``JobCancelled``."""
        wait = self._jobs.wait_for_children
        await self._park(ctx, "wait_for", "parking", lambda: wait(ctx.lease, children))

    async def woke(self, ctx: JobContext, key: str) -> None:
        """Record that the sleep the job was parked in is over; ``_Suspended`` if the lease is
        gone."""
        if await self._jobs.woke(ctx.lease, key) is None:
            raise _Suspended

    async def spawn(self, ctx: JobContext, key: str, spec: JobSpec) -> Job:
        """Submit a child job under ``key``; ``_Suspended`` if the lease is gone."""
        child, parent = await self._jobs.spawn(ctx.lease, key, spec)
        if parent is None:
            raise _Suspended
        return child

    async def children(self, ctx: JobContext, job_ids: list[UUID]) -> list[Job]:
        """The jobs ``job_ids`` of the job's tenant as they are now."""
        return await self._jobs.children(ctx.job.tenant, job_ids)

    async def _park(
        self,
        ctx: JobContext,
        operation: str,
        doing: str,
        write: Callable[[], Coroutine[Any, Any, Job | None]],
    ) -> NoReturn:
        """Write ``write`` (the job leaves ``running``; a settle span named ``operation``) and
        unwind the handler (``_Suspended``); ``JobCancelled`` if it was refused because cancel
        was requested."""
        ctx.finishing = True
        with tracing.settling(operation, ctx.job.id, ctx.job.kind) as span:
            job = await while_leased(
                f"{doing} {ctx.job.id}", write, valid_until=lambda: ctx.lease_valid_until
            )
            span.outcome(None if job is None else job.status.value)
        if job is None:
            current = await self._jobs.get(ctx.job.id, tenant=ctx.job.tenant, consistency="strong")
            if current.status == "running" and current.cancel_requested:
                ctx.finishing = False
                raise JobCancelled(f"job {ctx.job.id} was cancelled")
        raise _Suspended

    async def keep_checkpoint(self, ctx: JobContext, key: str, value: Any) -> None:
        """Store a checkpoint's result; ``_Suspended`` if the lease is gone."""
        job = await self._jobs.checkpoint(ctx.lease, key, encode_json("checkpoint", value))
        if job is None:
            raise _Suspended  # the lease is gone: stop quietly, another worker owns the job

    async def fence(self, ctx: JobContext, connection: Any) -> None:
        """Hold the lease in the caller's transaction; a lost lease also stops the handler."""
        try:
            await self._jobs.fence(ctx.lease, connection)
        except LeaseLost:
            ctx.stop("lease_lost")
            raise

    def schedule_progress(self, ctx: JobContext) -> None:
        """Called by ``JobContext.progress`` from any thread: hand it to the flush on the loop."""
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(self._progress_due, ctx)


def _describe(exc: BaseException) -> dict[str, Any]:
    """A failure as stored in ``jobs.error``: code, type, message and a bounded traceback."""
    trace = "".join(traceback.format_exception(exc))
    if len(trace) > _TRACEBACK_LIMIT:
        trace = "...\n" + trace[-_TRACEBACK_LIMIT:]
    code = "permanent_failure" if isinstance(exc, PermanentFailure) else "handler_error"
    if isinstance(exc, ChildFailed):
        code = exc.code
    if isinstance(exc, Retry):
        code = "retry_requested"
    return {"code": code, "type": type(exc).__qualname__, "message": str(exc), "traceback": trace}
