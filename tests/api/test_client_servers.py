"""``jobkeeper.client`` against ``jobkeeper serve`` processes on 127.0.0.1: event streams that
resume after the server is killed mid-stream and started again (async and sync clients at once),
and the sync client's operations over TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import UUID

import httpx
import pytest

from jobkeeper.api.auth import ApiKeys
from jobkeeper.client import ApiError, AsyncJobClient, JobClient, JobEvent
from jobkeeper.domain.status import JobStatus
from jobkeeper.errors import IdempotencyConflict, JobFinished, NotWaitingForInput
from jobkeeper.manager import JobManager
from support import eventually

from .support import DEADLINE, IDLE_KIND, Processes, free_port

pytestmark = pytest.mark.timeout(120)
# reconnect quickly, and often enough to outlast a server restart
ATTEMPTS, BACKOFF = 40, 0.05


async def _rest(stream: AsyncIterator[JobEvent]) -> list[JobEvent]:
    return [event async for event in stream]


async def test_events_resume_after_the_server_dies_mid_stream(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    port = free_port()
    base = await processes.serve("api", port=port)
    server = processes.started[-1]
    sent: list[httpx.Request] = []

    async def note(request: httpx.Request) -> None:
        if request.url.path.endswith("/events"):
            sent.append(request)

    followed: list[JobEvent] = []

    def follow(job_id: str) -> None:
        with JobClient(
            base, api_key=key, reconnect_attempts=ATTEMPTS, reconnect_backoff=BACKOFF
        ) as sync:
            followed.extend(sync.events(job_id))

    async with (
        httpx.AsyncClient(event_hooks={"request": [note]}) as http,
        AsyncJobClient(
            base, http=http, api_key=key, reconnect_attempts=ATTEMPTS, reconnect_backoff=BACKOFF
        ) as client,
    ):
        job = await client.submit(IDLE_KIND)  # no worker takes it: it stays queued
        stream = client.events(job)
        first = await asyncio.wait_for(anext(stream), DEADLINE)
        assert first.type == "submitted"
        follower = asyncio.create_task(asyncio.to_thread(follow, job.id))
        await eventually(lambda: followed, timeout=DEADLINE, what="the sync client's first event")

        server.popen.kill()  # both connections are cut off in the middle of their streams
        server.popen.wait(timeout=DEADLINE)
        rest = asyncio.create_task(_rest(stream))
        await eventually(
            lambda: len(sent) >= 3, timeout=DEADLINE, what="reconnects to the dead server"
        )
        assert not rest.done()
        await job_manager.cancel(UUID(job.id), tenant=tenant)  # while no server is up
        await processes.serve("api-again", port=port)
        tail = await asyncio.wait_for(rest, DEADLINE)
        await asyncio.wait_for(follower, DEADLINE)

    for events in ([first, *tail], followed):
        assert [(e.seq, e.type) for e in events] == [(1, "submitted"), (2, "cancelled")]
    assert "last-event-id" not in sent[0].headers
    assert {r.headers["last-event-id"] for r in sent[1:]} == {"1"}, "resumed after the first"


def _sync_round_trip(base: str, key: str) -> None:
    """Every operation of the sync client, blocking, over TCP."""
    responses: list[httpx.Response] = []
    with (
        httpx.Client(event_hooks={"response": [responses.append]}) as http,
        JobClient(base, http=http, api_key=key) as client,
    ):
        job = client.submit(IDLE_KIND, {"n": 1}, idempotency_key="sync-1", priority=3)
        assert client.submit(IDLE_KIND, {"n": 1}, idempotency_key="sync-1", priority=3) == job
        with pytest.raises(IdempotencyConflict):
            client.submit(IDLE_KIND, {"n": 2}, idempotency_key="sync-1")
        assert client.get(job.id) == job
        assert client.get(job) is job and responses[-1].status_code == 304
        other = client.submit(IDLE_KIND)
        assert [j.id for j in client.list(limit=1).items] == [other.id]
        assert [j.id for j in client.list_all(limit=1)] == [other.id, job.id]
        assert client.pin(job).pinned and not client.unpin(job).pinned
        cancelled = client.cancel(job)
        assert cancelled.status is JobStatus.CANCELLED
        with pytest.raises(JobFinished):
            client.cancel(job)
        with pytest.raises(NotWaitingForInput):
            client.answer(job, {"approve": True})
        assert [e.type for e in client.events(job)] == [
            "submitted",
            "pinned",
            "unpinned",
            "cancelled",
        ]
        assert list(client.events(job, after=cancelled.version)) == []
        assert responses[-1].status_code == 204
    with JobClient(base) as anonymous, pytest.raises(ApiError) as refused:
        anonymous.get(job.id)
    assert refused.value.status == 401


async def test_the_sync_client_over_a_real_server(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    base = await processes.serve("api")
    await asyncio.to_thread(_sync_round_trip, base, key)
