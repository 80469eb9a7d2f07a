"""``JobClient``: the jobkeeper HTTP API from blocking code, on an ``httpx.Client``. The same
operations as ``AsyncJobClient`` (see its docstrings), each one blocking until it is done."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from typing import Any, Self, TypeVar, Unpack

import httpx

from jobkeeper.api.inbox import InboxPageOut, QuestionOut
from jobkeeper.api.schedules import ScheduleOut
from jobkeeper.api.schemas import JobOut, JobPageOut, SubmittedOut
from jobkeeper.client import calls
from jobkeeper.client.calls import (
    Call,
    InboxFilters,
    InboxQuery,
    JobRef,
    ListFilters,
    ListQuery,
    Pages,
    ScheduleOptions,
    ScheduleRef,
    SubmitOptions,
)
from jobkeeper.client.errors import connection_error
from jobkeeper.client.events import RETRIED, Resume
from jobkeeper.client.target import Connection
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.values import JobEvent
from jobkeeper.manager import Consistency

__all__ = ["JobClient"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the item of a listing


class JobClient(Connection[httpx.Client]):
    """The blocking twin of ``AsyncJobClient``; ``http`` is an ``httpx.Client`` to reuse."""

    def _new_http(self) -> httpx.Client:
        return httpx.Client()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the ``httpx.Client`` if this client made it."""
        if self._owns_http:
            self._http.close()

    def _run(self, call: Call[T]) -> T:
        request = self._request(call)
        try:
            response = self._http.send(request, auth=self._auth)
        except httpx.TransportError as exc:
            raise connection_error(request, exc) from exc
        return call.outcome(response)

    def submit(self, kind: str, payload: Any = None, **options: Unpack[SubmitOptions]) -> JobOut:
        """Submit a job; with ``idempotency_key``, a retry returns the same job."""
        return self._run(calls.submit(kind, payload, options))

    def submit_many(self, items: Iterable[JobSpec | Mapping[str, Any]]) -> list[SubmittedOut]:
        """Submit many jobs at once, all or nothing; one ``SubmittedOut`` per item."""
        return self._run(calls.submit_many(items))

    def get(self, job: JobRef, *, consistency: Consistency = "cached") -> JobOut:
        """The job; given a ``JobOut``, conditional on its ETag (304: that same object)."""
        return self._run(calls.get(job, consistency))

    def list(self, **query: Unpack[ListQuery]) -> JobPageOut:
        """One page of the tenant's jobs, newest first."""
        return self._run(calls.list_jobs(query))

    def list_all(self, **filters: Unpack[ListFilters]) -> Iterator[JobOut]:
        """Every job of the listing, one page per request."""
        return self._every(partial(calls.list_jobs, filters))

    def _every(self, pages: Pages[I]) -> Iterator[I]:
        cursor: str | None = None
        while True:
            page = self._run(pages(cursor))
            yield from page.items
            if (cursor := page.next_cursor) is None:
                return

    def cancel(self, job: JobRef) -> JobOut:
        """Cancel the job (a running one gets ``cancel_requested``)."""
        return self._run(calls.cancel(job))

    def pin(self, job: JobRef) -> JobOut:
        """Exempt the job from retention."""
        return self._run(calls.pin(job))

    def unpin(self, job: JobRef) -> JobOut:
        """Subject the job to retention again."""
        return self._run(calls.unpin(job))

    def answer(
        self,
        job: JobRef,
        answer: Any,
        *,
        question_key: str | None = None,
        version: int | None = None,
    ) -> JobOut:
        """Answer the job's open question; ``version`` (or a ``QuestionOut``'s) as ``If-Match``."""
        return self._run(calls.answer(job, answer, question_key, version))

    def question(self, job: JobRef) -> QuestionOut:
        """The job's open question and who holds it."""
        return self._run(calls.question(job))

    def claim_question(self, job: JobRef, *, takeover: bool = False) -> QuestionOut:
        """Hold (or renew) the question; ``takeover`` takes it from whoever holds it."""
        return self._run(calls.claim_question(job, takeover))

    def release_question(self, job: JobRef) -> QuestionOut:
        """Give the question back."""
        return self._run(calls.release_question(job))

    def inbox(self, **query: Unpack[InboxQuery]) -> InboxPageOut:
        """One page of the open questions this caller may answer, oldest deadline first."""
        return self._run(calls.inbox(query))

    def inbox_all(self, **filters: Unpack[InboxFilters]) -> Iterator[QuestionOut]:
        """Every question of the inbox, one page per request."""
        return self._every(partial(calls.inbox, filters))

    def create_schedule(
        self, name: str, kind: str, payload: Any = None, **options: Unpack[ScheduleOptions]
    ) -> ScheduleOut:
        """Create a schedule (``cron`` or ``every_seconds``)."""
        return self._run(calls.create_schedule(name, kind, payload, options))

    def list_schedules(self) -> builtins.list[ScheduleOut]:
        """Every schedule of the tenant, by name."""
        return self._run(calls.list_schedules())

    def get_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """The schedule."""
        return self._run(calls.get_schedule(schedule))

    def pause_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """Stop submitting jobs until resumed."""
        return self._run(calls.pause_schedule(schedule))

    def resume_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """Submit jobs again from the next tick."""
        return self._run(calls.resume_schedule(schedule))

    def delete_schedule(self, schedule: ScheduleRef) -> None:
        """Delete the schedule; the jobs it submitted stay."""
        self._run(calls.delete_schedule(schedule))

    def events(self, job: JobRef, *, after: int = 0) -> Iterator[JobEvent]:
        """The job's events after ``after`` until its terminal event, resumed across dropped
        connections; blocks between events."""
        resume = Resume(job, after, self._target.reconnect)
        while True:
            call = resume.call()
            request = self._request(call, stream=True)
            try:
                response = self._http.send(request, stream=True, auth=self._auth)
                try:
                    if response.status_code not in call.ok:
                        response.read()
                    if not call.outcome(response):
                        return
                    for line in response.iter_lines():
                        if (event := resume.line(line)) is not None:
                            yield event
                            if resume.finished:
                                return
                finally:
                    response.close()
            except RETRIED as exc:
                pause = resume.dropped(request, exc)
            else:
                pause = resume.dropped(request, None)  # it ended before the terminal event
            time.sleep(pause)
