"""``AsyncJobClient``: the jobkeeper HTTP API from asyncio code, on an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Iterable, Mapping
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

__all__ = ["AsyncJobClient"]

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741 - the item of a listing


class AsyncJobClient(Connection[httpx.AsyncClient]):
    """A client of one jobkeeper API (``base_url`` may include a mount prefix:
    ``http://svc/api``), as one tenant (its ``api_key``) or with the host's own ``auth``.

    Pass ``http`` to reuse an ``httpx.AsyncClient`` (its base URL, headers, auth, transport and
    timeout apply unless overridden here); it stays open when this client closes, one made
    here does not. Every method raises jobkeeper's errors (``jobkeeper.client.errors``).
    """

    def _new_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the ``httpx.AsyncClient`` if this client made it."""
        if self._owns_http:
            await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        request = self._request(call)
        try:
            response = await self._http.send(request, auth=self._auth)
        except httpx.TransportError as exc:
            raise connection_error(request, exc) from exc
        return call.outcome(response)

    async def submit(
        self, kind: str, payload: Any = None, **options: Unpack[SubmitOptions]
    ) -> JobOut:
        """Submit a job; with ``idempotency_key``, a retry returns the same job."""
        return await self._run(calls.submit(kind, payload, options))

    async def submit_many(self, items: Iterable[JobSpec | Mapping[str, Any]]) -> list[SubmittedOut]:
        """Submit many jobs at once, all or nothing (``POST /jobs:batch``): one
        ``SubmittedOut(created, job)`` per item, in order. Each item is a ``JobSpec`` or a
        mapping of its fields, its idempotency key included. An error about an item names it
        (``index``); then nothing was written."""
        return await self._run(calls.submit_many(items))

    async def get(self, job: JobRef, *, consistency: Consistency = "cached") -> JobOut:
        """The job. Given the ``JobOut`` you hold, its ETag is sent, and while the job has not
        changed (304) that same object comes back. ``consistency="strong"``: read Postgres."""
        return await self._run(calls.get(job, consistency))

    async def list(self, **query: Unpack[ListQuery]) -> JobPageOut:
        """One page of the tenant's jobs, newest first; ``next_cursor`` is the next page's."""
        return await self._run(calls.list_jobs(query))

    def list_all(self, **filters: Unpack[ListFilters]) -> AsyncIterator[JobOut]:
        """Every job of the listing, newest first, one page (``limit`` jobs) per request."""
        return self._every(partial(calls.list_jobs, filters))

    async def _every(self, pages: Pages[I]) -> AsyncIterator[I]:
        """Every item of a keyset listing, reading the next page when one runs out."""
        cursor: str | None = None
        while True:
            page = await self._run(pages(cursor))
            for item in page.items:
                yield item
            if (cursor := page.next_cursor) is None:
                return

    async def cancel(self, job: JobRef) -> JobOut:
        """Cancel: at once if queued or waiting; a running job gets ``cancel_requested``."""
        return await self._run(calls.cancel(job))

    async def pin(self, job: JobRef) -> JobOut:
        """Exempt the job from retention."""
        return await self._run(calls.pin(job))

    async def unpin(self, job: JobRef) -> JobOut:
        """Subject the job to retention again."""
        return await self._run(calls.unpin(job))

    async def answer(
        self,
        job: JobRef,
        answer: Any,
        *,
        question_key: str | None = None,
        version: int | None = None,
    ) -> JobOut:
        """Answer the job's open question (only ``question_key``'s, if given). ``version`` (or
        the version of the ``QuestionOut`` given as ``job``) is sent as ``If-Match``: if the
        question changed since, ``QuestionChanged`` (412) and nothing is written."""
        return await self._run(calls.answer(job, answer, question_key, version))

    async def question(self, job: JobRef) -> QuestionOut:
        """The job's open question and who holds it (``NotWaitingForInput`` if none)."""
        return await self._run(calls.question(job))

    async def claim_question(self, job: JobRef, *, takeover: bool = False) -> QuestionOut:
        """Hold the question for a few minutes (again: renew), so that only this caller may
        answer it; ``QuestionClaimed`` while someone else holds it, unless ``takeover``."""
        return await self._run(calls.claim_question(job, takeover))

    async def release_question(self, job: JobRef) -> QuestionOut:
        """Give the question back (nothing to do if this caller holds none)."""
        return await self._run(calls.release_question(job))

    async def inbox(self, **query: Unpack[InboxQuery]) -> InboxPageOut:
        """One page of the open questions this caller may answer, oldest deadline first (none
        last); ``next_cursor`` is the next page's."""
        return await self._run(calls.inbox(query))

    def inbox_all(self, **filters: Unpack[InboxFilters]) -> AsyncIterator[QuestionOut]:
        """Every question of the inbox, one page (``limit`` questions) per request."""
        return self._every(partial(calls.inbox, filters))

    async def create_schedule(
        self, name: str, kind: str, payload: Any = None, **options: Unpack[ScheduleOptions]
    ) -> ScheduleOut:
        """Create a schedule that submits a ``kind`` job with ``payload`` at each tick (``cron``
        or ``every_seconds``); ``ScheduleExists`` if the tenant has one of that name."""
        return await self._run(calls.create_schedule(name, kind, payload, options))

    async def list_schedules(self) -> builtins.list[ScheduleOut]:
        """Every schedule of the tenant, by name."""
        return await self._run(calls.list_schedules())

    async def get_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """The schedule (``ScheduleNotFound`` if the tenant has none of that id)."""
        return await self._run(calls.get_schedule(schedule))

    async def pause_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """Stop submitting jobs until resumed."""
        return await self._run(calls.pause_schedule(schedule))

    async def resume_schedule(self, schedule: ScheduleRef) -> ScheduleOut:
        """Submit jobs again from the next tick (ticks passed while paused do not run)."""
        return await self._run(calls.resume_schedule(schedule))

    async def delete_schedule(self, schedule: ScheduleRef) -> None:
        """Delete the schedule; the jobs it submitted stay."""
        await self._run(calls.delete_schedule(schedule))

    async def events(self, job: JobRef, *, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's events after sequence number ``after``, live, until its terminal event;
        a dropped connection is resumed where it broke (see ``jobkeeper.client.events``)."""
        resume = Resume(job, after, self._target.reconnect)
        while True:
            call = resume.call()
            request = self._request(call, stream=True)
            try:
                response = await self._http.send(request, stream=True, auth=self._auth)
                try:
                    if response.status_code not in call.ok:
                        await response.aread()
                    if not call.outcome(response):
                        return  # 204: the job finished at or before ``resume.last``
                    async for line in response.aiter_lines():
                        if (event := resume.line(line)) is not None:
                            yield event
                            if resume.finished:
                                return
                finally:
                    await response.aclose()
            except RETRIED as exc:
                pause = resume.dropped(request, exc)
            else:
                pause = resume.dropped(request, None)  # it ended before the terminal event
            await asyncio.sleep(pause)
