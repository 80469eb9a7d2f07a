"""``AsyncJobClient``: the jobkeeper HTTP API from asyncio code, on an ``httpx.AsyncClient``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Self, TypeVar, Unpack

import httpx

from jobkeeper.api.schemas import JobOut, JobPageOut, SubmittedOut
from jobkeeper.client import calls
from jobkeeper.client.calls import Call, JobRef, ListFilters, ListQuery, SubmitOptions
from jobkeeper.client.errors import connection_error
from jobkeeper.client.events import RETRIED, Resume
from jobkeeper.client.target import Connection
from jobkeeper.domain.batch import JobSpec
from jobkeeper.domain.values import JobEvent
from jobkeeper.manager import Consistency

__all__ = ["AsyncJobClient"]

T = TypeVar("T")


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

    async def list_all(self, **filters: Unpack[ListFilters]) -> AsyncIterator[JobOut]:
        """Every job of the listing, newest first, one page (``limit`` jobs) per request."""
        call: Call[JobPageOut] | None = calls.list_jobs(filters)
        while call is not None:
            page = await self._run(call)
            for job in page.items:
                yield job
            call = calls.next_page(filters, page)

    async def cancel(self, job: JobRef) -> JobOut:
        """Cancel: at once if queued or waiting; a running job gets ``cancel_requested``."""
        return await self._run(calls.cancel(job))

    async def pin(self, job: JobRef) -> JobOut:
        """Exempt the job from retention."""
        return await self._run(calls.pin(job))

    async def unpin(self, job: JobRef) -> JobOut:
        """Subject the job to retention again."""
        return await self._run(calls.unpin(job))

    async def answer(self, job: JobRef, answer: Any, *, question_key: str | None = None) -> JobOut:
        """Answer the job's open question (only ``question_key``'s, if given)."""
        return await self._run(calls.answer(job, answer, question_key))

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
