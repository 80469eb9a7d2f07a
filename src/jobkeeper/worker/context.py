"""The handler's side of a running job: ``JobContext``, its progress and its replay model.

A context and the worker that runs its job know each other through two narrow surfaces, so
neither reaches into the other: the context calls back only through the ``JobHost`` it is given
(the worker's executor), and the worker reads and sets only the members ``JobContext`` lists
under "for the worker".
"""

from __future__ import annotations

import inspect
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NoReturn, Protocol, TypeAlias, TypeVar
from uuid import UUID

from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.questions import OnTimeout, build_prompt
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import optional_text, parse_job_id, validate_progress
from jobkeeper.domain.values import Job, Lease, Progress
from jobkeeper.errors import ChildFailed, InvalidRequest, JobCancelled

StopReason: TypeAlias = Literal["cancel", "lease_lost", "shutdown"]
OnChildFailure: TypeAlias = Literal["fail", "return"]
_T = TypeVar("_T")


class JobHost(Protocol):
    """What a ``JobContext`` needs from the worker running its job, and all it may ask of it.

    Questions and checkpoints are writes under the job's lease, progress is written by the
    worker's flush, and a sync handler's thread reaches the event loop only through
    ``call_from_thread``.
    """

    def call_from_thread(self, work: Coroutine[Any, Any, _T]) -> _T:
        """Run ``work`` on the worker's loop from a handler thread and wait for its result."""

    async def park(self, ctx: JobContext, question: dict[str, Any]) -> NoReturn:
        """Store ``question`` and unwind the handler; ``JobCancelled`` if it was cancelled."""

    async def keep_checkpoint(self, ctx: JobContext, key: str, value: Any) -> None:
        """Store a checkpoint's result under the lease (unwind the handler if it is gone)."""

    def schedule_progress(self, ctx: JobContext) -> None:
        """From any thread: ``ctx`` has a report for ``take_progress``; write it in time."""

    async def fence(self, ctx: JobContext, connection: Any) -> None:
        """Hold ``ctx``'s lease in the caller's transaction on ``connection``, or ``LeaseLost``."""

    async def park_until(
        self, ctx: JobContext, key: str, until: datetime | None, seconds: float
    ) -> NoReturn:
        """Queue the job again for its wake-up time (kept under ``key``) and unwind."""

    async def park_for_children(self, ctx: JobContext, children: list[UUID]) -> NoReturn:
        """Park the job until ``children`` have finished and unwind."""

    async def woke(self, ctx: JobContext, key: str) -> None:
        """Record that the sleep under ``key`` the job was parked in is over."""

    async def spawn(self, ctx: JobContext, key: str, spec: JobSpec) -> Job:
        """Submit a child job, idempotently under ``key``, and record it in the job."""

    async def children(self, ctx: JobContext, job_ids: list[UUID]) -> list[Job]:
        """The jobs ``job_ids`` of the job's tenant, as they are now."""


@dataclass(frozen=True, slots=True)
class _Answered:
    answer: Any


class JobContext:
    """What a handler gets besides its payload. Safe to use from a sync handler's thread.

    ``resources`` is what the registry's ``lifespan`` yielded in this worker (``None`` without
    one): the application's engine or clients, opened once per worker process.

    For the worker (not for handlers): ``lease``; ``job_text``, the id as logs and the change feed
    spell it; ``finishing``, set once its outcome is being written (nothing stops it then);
    ``latest``, the last progress report, recorded with the completion; ``lease_valid_until``,
    until when the lease surely holds (final writes are retried until then); ``traced``, whether
    tracing was on when the job was claimed (its run and settle spans are recorded); ``stop()`` and
    ``stop_reason``; ``take_progress()`` and ``last_flush`` for the progress flush.
    """

    def __init__(self, host: JobHost, lease: Lease, resources: Any = None) -> None:
        self._host = host
        self.lease = lease
        self.resources = resources
        self.job_text = str(lease.job.id)
        # set once by the loop, read by handler threads: a plain attribute is enough (the GIL)
        self._stop_reason: StopReason | None = None
        self._lock = threading.Lock()
        self._pending: Progress | None = None
        self.latest: Progress | None = None
        self._flush_scheduled = False
        self._last_flush = 0.0
        self.finishing = False
        # until when (time.monotonic) the lease surely holds: set at the claim, moved by each
        # renewal, measured from before the statement that granted it
        self.lease_valid_until = 0.0
        self.traced = False
        self._answers: Mapping[str, Any] = lease.job.answers or {}
        self._checkpoints: dict[str, Any] = (
            dict(lease.job.checkpoints) if lease.job.checkpoints else {}
        )
        self._asked = 0
        self._slept = 0
        self._spawned = 0
        self._woken = False

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
        self._host.schedule_progress(self)

    # --- fencing the handler's own writes ------------------------------------------------------

    @property
    def lease_token(self) -> UUID:
        """This run's lease token: new at every claim, the same for the whole run. A stable
        public read: tag your own effects with the run that made them, or compare it with a
        token you stored."""
        return self.lease.token

    async def fenced(self, connection: Any) -> None:
        """Make your open transaction on ``connection`` (the application's SQLAlchemy
        ``AsyncSession`` or ``AsyncConnection``, or an asyncpg connection, in a transaction)
        count only while this worker still holds the job: it locks the job's row until that
        transaction ends if the lease holds by Postgres's clock, else raises ``LeaseLost``
        (roll back and stop; nothing was written, and another worker may run the job).

        Call it in the transaction of your business write, before committing. Until you commit,
        no recovery can give the job to another worker, so a worker that was paused past its
        lease (SIGSTOP, a long GC pause, a partition) is refused instead of writing after the
        job's new owner. The lock also holds up this worker's heartbeat and this job's own
        writes, so keep the transaction short (well under a third of the lease) and commit it
        before ``ctx.checkpoint``, ``ctx.ask`` or returning: each of those writes the job's row
        and would wait for your commit. Async handlers only: a sync handler's thread cannot drive
        an async connection (docs/workers.md, "Fencing your own writes")."""
        await self._host.fence(self, connection)

    # --- questions and checkpoints (the replay model) ------------------------------------------

    async def ask(
        self,
        prompt: str,
        *,
        schema: dict[str, Any] | None = None,
        choices: Sequence[Any] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the person's deadline, not the call's
        on_timeout: OnTimeout = "fail",
        default: Any = None,
        key: str | None = None,
        assignee: str | None = None,
    ) -> Any:
        """Ask a person and return the answer.

        The first time, the job moves to ``waiting_input`` with the question stored durably, the
        lease is released (no worker slot is held while a person thinks) and the handler unwinds.
        Once answered, any worker re-invokes the handler, and this call returns the stored answer
        at once. Questions are matched by ``key`` (default: their order, ``q1``, ``q2``...), so
        ask them in a stable order. ``timeout`` seconds without an answer: ``on_timeout`` fails
        the job (code ``input_timeout``), cancels it, resumes with ``default``, or
        ``Escalate(to=..., after=...)`` hands the question to another assignee with a new
        deadline. ``assignee`` (``"user:alice"``, ``"role:underwriter"``; ``None``: anyone in the
        tenant) is whose inbox the question is in.
        """
        question = self._question(
            prompt, schema, choices, timeout, on_timeout, default, key, assignee
        )
        if isinstance(question, _Answered):
            return question.answer
        await self._host.park(self, question)  # never returns: the handler unwinds

    def ask_sync(
        self,
        prompt: str,
        *,
        schema: dict[str, Any] | None = None,
        choices: Sequence[Any] | None = None,
        timeout: float | None = None,
        on_timeout: OnTimeout = "fail",
        default: Any = None,
        key: str | None = None,
        assignee: str | None = None,
    ) -> Any:
        """``ask`` for a sync handler (from its thread): same replay model, same arguments.
        It runs ``ask`` on the worker's loop and waits for it."""
        return self._host.call_from_thread(
            self.ask(
                prompt,
                schema=schema,
                choices=choices,
                timeout=timeout,
                on_timeout=on_timeout,
                default=default,
                key=key,
                assignee=assignee,
            )
        )

    def _question(
        self,
        prompt: str,
        schema: dict[str, Any] | None,
        choices: Sequence[Any] | None,
        timeout: float | None,
        on_timeout: OnTimeout,
        default: Any,
        key: str | None,
        assignee: str | None,
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
            assignee=assignee,
        )

    async def checkpoint(self, key: str, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (sync or async) once for this job and keep its JSON result: on a re-run
        (after an answer, a retry or a recovered crash) the stored result is returned without
        calling ``fn``. A crash between ``fn`` and the write runs it again: at least once."""
        key, value, fresh = self._replay_or_run(key, fn)
        if not fresh:
            return value
        if inspect.isawaitable(value):
            value = await value
        return await self._keep(key, value)

    def checkpoint_sync(self, key: str, fn: Callable[[], Any]) -> Any:
        """``checkpoint`` for a sync handler (from its thread). ``fn`` runs in that thread; only
        the write goes to the worker's loop."""
        key, value, fresh = self._replay_or_run(key, fn)
        return self._host.call_from_thread(self._keep(key, value)) if fresh else value

    def _replay_or_run(self, key: str, fn: Callable[[], Any]) -> tuple[str, Any, bool]:
        """``(key, value, fresh)``: the stored result, or (fresh) what ``fn()`` returned."""
        key = optional_text("key", key) or ""
        if key in self._checkpoints:
            return key, self._checkpoints[key], False
        return key, fn(), True

    async def _keep(self, key: str, value: Any) -> Any:
        await self._host.keep_checkpoint(self, key, value)
        self._checkpoints[key] = value
        return value

    # --- workflows: durable sleeps and child jobs (the same replay model) -----------------------

    async def sleep(self, duration: timedelta | float, *, key: str | None = None) -> None:
        """Sleep durably for ``duration`` (a ``timedelta`` or seconds) without holding a worker
        slot: the job is queued again to run at its wake-up time (kept with the job, so it
        survives restarts), the handler unwinds, and when the job runs again this call returns
        at once. Sleeps are matched by ``key`` (default: their order, ``s1``, ``s2``...), like
        questions. A cancel request ends the job instead of letting it sleep."""
        seconds = _seconds(duration)
        self._slept += 1
        key = "sleep:" + (optional_text("key", key) or f"s{self._slept}")
        recorded = self._checkpoints.get(key)
        if recorded is None:
            await self._host.park_until(self, key, None, seconds)
        until = datetime.fromisoformat(recorded)
        if not self._woken and self.job.sleeping_until == until:  # the sleep it was parked in
            self._woken = True
            await self._host.woke(self, key)
        elif until > datetime.now(UTC):  # re-run early (a retry, say): sleep the rest
            await self._host.park_until(self, key, until, 0.0)

    def sleep_sync(self, duration: timedelta | float, *, key: str | None = None) -> None:
        """``sleep`` for a sync handler (from its thread)."""
        self._host.call_from_thread(self.sleep(duration, key=key))

    async def spawn(
        self,
        kind: str,
        payload: Any = None,
        *,
        key: str | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        run_after: datetime | None = None,
        concurrency_key: str | None = None,
        pinned: bool = False,
    ) -> Job:
        """Submit a child job of ``kind`` (the options of ``JobManager.submit``) and return it.
        Its ``parent_id`` is this job; cancelling this job cancels it while unfinished.

        Idempotent across re-runs: children are matched by ``key`` (default: their order,
        ``c1``, ``c2``...), and a re-run returns the child the first run submitted (as it is
        now) instead of submitting another; the child's idempotency key is
        ``<parent id>/spawn:<key>``. Pass children to ``wait_for`` to wait for them."""
        self._spawned += 1
        key = "spawn:" + (optional_text("key", key) or f"c{self._spawned}")
        recorded = self._checkpoints.get(key)
        if recorded is not None:
            [child] = await self._host.children(self, [UUID(recorded)])
            return child
        spec = JobSpec(
            kind,
            payload,
            concurrency_key=concurrency_key,
            priority=priority,
            max_attempts=max_attempts,
            run_after=run_after,
            pinned=pinned,
        )
        child = await self._host.spawn(self, key, spec)
        self._checkpoints[key] = str(child.id)
        return child

    def spawn_sync(self, kind: str, payload: Any = None, **options: Any) -> Job:
        """``spawn`` for a sync handler (from its thread), with the same options."""
        return self._host.call_from_thread(self.spawn(kind, payload, **options))

    async def wait_for(
        self, children: Iterable[Job | UUID | str], *, on_failure: OnChildFailure = "fail"
    ) -> list[Job]:
        """Wait until every job of ``children`` (jobs or ids of this tenant, usually from
        ``spawn``) has finished, without holding a worker slot, and return them as they ended
        (``status``, ``result``, ``error``), each once, in the order given.

        If some have not finished, the job moves to ``waiting_children``, the handler unwinds,
        and the last child to finish queues it again; the re-run reaches this call again and
        it returns at once. ``on_failure="fail"`` (default): a child that failed or was
        cancelled fails this job with ``ChildFailed`` (code ``child_failed``, no retry);
        ``"return"``: the outcomes are returned whatever they are."""
        if on_failure not in ("fail", "return"):
            raise InvalidRequest("on_failure", "'fail' or 'return'")
        ids = list(
            dict.fromkeys(
                child.id if isinstance(child, Job) else parse_job_id(child) for child in children
            )
        )
        if not ids:
            return []
        outcomes = await self._host.children(self, ids)
        if not all(job.terminal for job in outcomes):
            await self._host.park_for_children(self, ids)
        failed = {job.id: job.status.value for job in outcomes if job.status != JobStatus.SUCCEEDED}
        if failed and on_failure == "fail":
            raise ChildFailed(failed)
        return outcomes

    def wait_for_sync(
        self, children: Iterable[Job | UUID | str], *, on_failure: OnChildFailure = "fail"
    ) -> list[Job]:
        """``wait_for`` for a sync handler (from its thread)."""
        return self._host.call_from_thread(self.wait_for(children, on_failure=on_failure))

    # --- for the worker ------------------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        """Why the worker stopped this job, if it did: a cancel request, a lost lease, shutdown."""
        return self._stop_reason

    def stop(self, reason: StopReason) -> None:
        """Set by the worker when the job must stop; the first reason stays."""
        if self._stop_reason is None:
            self._stop_reason = reason

    @property
    def last_flush(self) -> float:
        """When (``time.monotonic()``) the progress flush last took a report."""
        return self._last_flush

    def take_progress(self) -> Progress | None:
        """The report to write now, if any; the next ``progress()`` schedules another flush."""
        with self._lock:
            report, self._pending = self._pending, None
            self._flush_scheduled = False
        if report is not None:
            self._last_flush = time.monotonic()
        return report


def _seconds(duration: timedelta | float) -> float:
    """A sleep's length in seconds: a ``timedelta`` or a number, finite and not negative."""
    if isinstance(duration, timedelta):
        seconds = duration.total_seconds()
    elif isinstance(duration, int | float) and not isinstance(duration, bool):
        seconds = float(duration)
    else:
        raise InvalidRequest("duration", "a timedelta or seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidRequest("duration", "finite and not negative")
    return seconds
