"""``jobkeeper.client.AsyncJobClient`` against the real app in-process (lifespan running, a real
Postgres): every operation, the typed errors the API's problems become, ETags, a mount prefix,
and what the client owns. Over real servers: ``test_client_servers.py``.

httpx's ASGI transport hands over a response once the app has sent all of it, so event streams
here are read after the job has finished (a worker runs it meanwhile); live streams and dropped
connections are tested against ``jobkeeper serve`` processes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import jobkeeper.errors
from jobkeeper import (
    IdempotencyConflict,
    InvalidJobId,
    InvalidRequest,
    InvalidTransition,
    JobFinished,
    JobkeeperError,
    JobNotFound,
    QueueFull,
)
from jobkeeper.api import jobs_router, lifespan
from jobkeeper.api.app import create_app
from jobkeeper.api.problems import install
from jobkeeper.client import ApiConnectionError, ApiError, AsyncJobClient, JobOut
from jobkeeper.client.errors import _BUILDERS
from jobkeeper.domain.status import JobStatus
from jobkeeper.errors import InvalidAnswer, JobExpired, NotWaitingForInput
from jobkeeper.manager import JobManager
from support import eventually

from .support import (
    DEADLINE,
    IDLE_KIND,
    Served,
    free_port,
    make_settings,
    running_worker,
    serve,
)


@dataclass
class Recorded:
    """A client of the module's app as this test's tenant, and every response it received."""

    client: AsyncJobClient
    responses: list[httpx.Response] = field(default_factory=list)

    def statuses(self) -> list[tuple[str, str, int]]:
        return [(r.request.method, r.request.url.path, r.status_code) for r in self.responses]


@pytest.fixture
async def jobs(served: Served) -> AsyncIterator[Recorded]:
    recorded = Recorded(client=AsyncJobClient(http=served.client))

    async def keep(response: httpx.Response) -> None:
        recorded.responses.append(response)

    served.client.event_hooks["response"].append(keep)
    yield recorded


def _kind() -> str:
    return f"client.{uuid4().hex[:12]}"


async def test_submit_is_idempotent_by_key_and_takes_every_option(jobs: Recorded) -> None:
    run_after = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    options = {"priority": 5, "max_attempts": 2, "concurrency_key": "c-1", "pinned": True}
    job = await jobs.client.submit(
        IDLE_KIND, {"n": 1}, idempotency_key="k-1", run_after=run_after, **options
    )
    assert isinstance(job, JobOut) and job.status is JobStatus.QUEUED and job.version == 1
    assert (job.kind, job.payload) == (IDLE_KIND, {"n": 1})
    assert (job.priority, job.max_attempts, job.concurrency_key, job.pinned) == (5, 2, "c-1", True)
    assert datetime.fromisoformat(job.run_after) == run_after

    replay = await jobs.client.submit(
        IDLE_KIND, {"n": 1}, idempotency_key="k-1", run_after=run_after, **options
    )
    assert replay == job
    assert jobs.statuses() == [("POST", "/jobs", 201), ("POST", "/jobs", 200)]

    with pytest.raises(IdempotencyConflict) as conflict:
        await jobs.client.submit(IDLE_KIND, {"n": 2}, idempotency_key="k-1")
    assert conflict.value.job_id == UUID(job.id) and conflict.value.idempotency_key == "k-1"
    assert "k-1" in str(conflict.value)
    assert any(
        "HTTP 422 idempotency_key_reused (request id " in n for n in conflict.value.__notes__
    )

    defaults = await jobs.client.submit(IDLE_KIND)  # options left out: the server's defaults
    assert (defaults.payload, defaults.priority, defaults.max_attempts) == (None, 0, 3)
    assert defaults.pinned is False and defaults.id != job.id


async def test_get_sends_the_etag_of_the_job_it_is_given(jobs: Recorded) -> None:
    job = await jobs.client.submit(IDLE_KIND)
    assert await jobs.client.get(job.id) == job
    assert await jobs.client.get(UUID(job.id), consistency="strong") == job
    assert jobs.responses[-1].request.headers["cache-control"] == "no-cache"
    unchanged = await jobs.client.get(job)
    assert unchanged is job, "a 304 gives back the job the caller holds"
    sent = jobs.responses[-1].request.headers
    assert (jobs.responses[-1].status_code, sent["if-none-match"]) == (304, '"1"')

    cancelled = await jobs.client.cancel(job)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.version == 2
    assert jobs.statuses()[-1] == ("POST", f"/jobs/{job.id}/cancel", 202)
    changed = await jobs.client.get(job)
    assert changed == cancelled and jobs.responses[-1].status_code == 200


async def test_list_pages_with_cursors_and_list_all_reads_every_page(jobs: Recorded) -> None:
    kind = _kind()
    ids = [(await jobs.client.submit(kind, {"i": i})).id for i in range(3)]
    newest_first = ids[::-1]

    first = await jobs.client.list(kind=kind, limit=2)
    assert [j.id for j in first.items] == newest_first[:2] and first.next_cursor is not None
    second = await jobs.client.list(kind=kind, limit=2, cursor=first.next_cursor)
    assert [j.id for j in second.items] == newest_first[2:] and second.next_cursor is None

    before = len(jobs.responses)
    assert [j.id async for j in jobs.client.list_all(kind=kind, limit=2)] == newest_first
    assert len(jobs.responses) - before == 2, "one request per page"

    await jobs.client.cancel(ids[1])
    cancelled = await jobs.client.list(kind=kind, status=JobStatus.CANCELLED)
    assert [j.id for j in cancelled.items] == [ids[1]]
    queued = [j.id async for j in jobs.client.list_all(kind=kind, status="queued")]
    assert queued == [ids[2], ids[0]]


async def test_pin_and_unpin(jobs: Recorded) -> None:
    job = await jobs.client.submit(IDLE_KIND)
    pinned = await jobs.client.pin(job)
    assert pinned.pinned is True and pinned.version == 2
    unpinned = await jobs.client.unpin(job.id)
    assert unpinned.pinned is False and unpinned.version == 3


async def test_answer_and_events_of_a_job_that_asks(
    jobs: Recorded, job_manager: JobManager
) -> None:
    job = await jobs.client.submit("demo.ask", {"question": "Ship it?"})
    async with running_worker(job_manager, ["demo.ask"]):

        async def waiting() -> JobOut | None:
            read = await jobs.client.get(job.id, consistency="strong")
            return read if read.status is JobStatus.WAITING_INPUT else None

        asked = await eventually(waiting, timeout=DEADLINE, what="the job to ask")
        assert asked.prompt is not None and asked.prompt.text == "Ship it?"

        with pytest.raises(InvalidAnswer) as invalid:
            await jobs.client.answer(job, {"approve": "yes"})
        assert invalid.value.job_id == UUID(job.id)
        assert invalid.value.problems == ["approve: 'yes' is not of type 'boolean'"]
        with pytest.raises(NotWaitingForInput) as other:
            await jobs.client.answer(job, {"approve": True}, question_key="another")
        assert other.value.job_id == UUID(job.id) and other.value.status == "waiting_input"

        answered = await jobs.client.answer(job, {"approve": True}, question_key=asked.prompt.key)
        assert answered.status is not JobStatus.WAITING_INPUT and answered.prompt is None

        events = [event async for event in jobs.client.events(job)]  # once it has finished
    types = [event.type for event in events]
    assert types[0] == "submitted" and types[-1] == "succeeded"
    assert types.index("asked") < types.index("answered") < types.index("succeeded")
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert all(event.at.tzinfo is not None for event in events)
    assert events[types.index("answered")].data["key"] == asked.prompt.key

    resumed = [event async for event in jobs.client.events(job.id, after=len(events) - 2)]
    assert resumed == events[-2:]
    assert jobs.responses[-1].request.headers["last-event-id"] == str(len(events) - 2)
    assert [event async for event in jobs.client.events(job, after=len(events))] == []
    assert jobs.responses[-1].status_code == 204, "resumed after the terminal event"


async def test_problems_become_jobkeeper_errors_with_their_fields(jobs: Recorded) -> None:
    missing = uuid4()
    with pytest.raises(JobNotFound) as not_found:
        await jobs.client.get(missing)
    assert type(not_found.value) is JobNotFound and not_found.value.job_id == missing
    assert str(not_found.value) == f"job {missing} not found"

    with pytest.raises(InvalidJobId) as bad_id:
        await jobs.client.cancel("not-a-uuid")
    assert (bad_id.value.value, bad_id.value.field) == ("not-a-uuid", "job_id")

    with pytest.raises(InvalidRequest) as bad_kind:  # refused by the manager: it names the field
        await jobs.client.submit("has space")
    assert bad_kind.value.field == "kind"
    with pytest.raises(InvalidRequest) as bad_priority:  # refused by the parser
        await jobs.client.submit(IDLE_KIND, priority=-1)
    assert bad_priority.value.field == "priority"
    assert "priority: Input should be greater than or equal to 0" in str(bad_priority.value)

    job = await jobs.client.submit(IDLE_KIND)
    await jobs.client.cancel(job)
    with pytest.raises(JobFinished) as finished:
        await jobs.client.cancel(job)
    assert isinstance(finished.value, InvalidTransition) and finished.value.job_id == UUID(job.id)
    assert "cancelled" in str(finished.value)

    with pytest.raises(ApiError) as too_large:
        await jobs.client.submit(IDLE_KIND, "x" * (1 << 20))
    assert (too_large.value.status, too_large.value.problem_code) == (413, "payload_too_large")
    assert too_large.value.code == "api_error" and too_large.value.request_id


async def test_an_expired_job_is_job_expired_with_its_time(
    jobs: Recorded, job_manager: JobManager, tenant: str
) -> None:
    job = await jobs.client.submit(IDLE_KIND)
    await jobs.client.cancel(job)
    finished = await job_manager.get(UUID(job.id), tenant=tenant, consistency="strong")
    assert await job_manager.expire([finished]) == [finished.id]
    with pytest.raises(JobExpired) as expired:
        await jobs.client.get(job.id, consistency="strong")
    assert expired.value.job_id == UUID(job.id)
    assert expired.value.expired_at.tzinfo is not None
    assert abs(datetime.now(UTC) - expired.value.expired_at) < timedelta(minutes=5)


async def test_a_full_queue_is_queue_full_with_retry_after(database_url: str, api_key: str) -> None:
    app = create_app(make_settings(database_url, max_queued=1, queue_full_retry_after=7))
    async with serve(app) as served, AsyncJobClient(http=served.client, api_key=api_key) as client:
        await client.submit(IDLE_KIND)
        with pytest.raises(QueueFull) as full:
            await client.submit(IDLE_KIND)
    assert full.value.retry_after == 7 and "retry in 7 s" in str(full.value)


async def test_unauthorised_calls_are_api_errors(shared_app: Served) -> None:
    for client in (
        AsyncJobClient(http=shared_app.client),
        AsyncJobClient(http=shared_app.client, api_key="jk_not-a-key"),
    ):
        with pytest.raises(ApiError) as refused:
            await client.list()
        assert (refused.value.status, refused.value.problem_code) == (401, "unauthorized")
        assert refused.value.body["instance"] == "/jobs"
        assert refused.value.request_id == refused.value.body["request_id"]


async def test_no_server_is_an_api_connection_error() -> None:
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with AsyncJobClient(base, api_key="jk_x", timeout=DEADLINE) as client:
        with pytest.raises(ApiConnectionError) as unreachable:
            await client.get(uuid4())
    assert isinstance(unreachable.value.__cause__, httpx.ConnectError)
    assert unreachable.value.url.startswith(f"{base}/jobs/")
    assert unreachable.value.method == "GET"

    async with AsyncJobClient(
        base, api_key="jk_x", reconnect_attempts=2, reconnect_backoff=0.01
    ) as client:
        with pytest.raises(ApiConnectionError) as gave_up:
            [event async for event in client.events(uuid4())]
    assert isinstance(gave_up.value.__cause__, httpx.ConnectError)


class _HostAuth(httpx.Auth):
    """The host application's own scheme (here: it happens to send the same Bearer key)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        request.headers["Authorization"] = f"Bearer {self.key}"
        yield request


async def test_a_router_mounted_under_a_prefix_with_a_key_or_the_hosts_auth(
    database_url: str, api_key: str
) -> None:
    host = FastAPI(lifespan=lifespan(make_settings(database_url)))
    install(host)
    host.include_router(jobs_router, prefix="/api")
    async with serve(host) as served:
        async with AsyncJobClient("http://test/api", http=served.client, api_key=api_key) as keyed:
            job = await keyed.submit(IDLE_KIND)
        async with AsyncJobClient(
            "http://test/api/", http=served.client, auth=_HostAuth(api_key)
        ) as authed:
            assert await authed.get(job.id) == job
            assert [j.id async for j in authed.list_all()] == [job.id]
        assert not served.client.is_closed, "a client it was given stays open"

    owned = AsyncJobClient("http://test", api_key=api_key)
    async with owned:
        pass
    assert owned._http.is_closed, "the client it made is closed"
    with pytest.raises(ValueError, match="base_url"):
        AsyncJobClient(api_key=api_key)


class _CuttingProxy:
    """In front of the app: ends the next ``cuts`` event streams cleanly (a complete response)
    after ``keep`` body chunks (events), as a proxy that closes long responses does."""

    def __init__(self, app: ASGIApp, *, cuts: int, keep: int) -> None:
        self.app, self.cuts, self.keep = app, cuts, keep

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/events") or self.cuts == 0:
            await self.app(scope, receive, send)
            return
        self.cuts -= 1
        chunks = 0

        async def cut(message: Message) -> None:
            nonlocal chunks
            if message["type"] != "http.response.body" or chunks < self.keep:
                chunks += message["type"] == "http.response.body"
                await send(message)
            elif chunks == self.keep:  # the end of the response, then nothing more
                chunks += 1
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, cut)


@asynccontextmanager
async def _behind_cutting_proxy(
    database_url: str, api_key: str, *, cuts: int, keep: int, **options: Any
) -> AsyncIterator[tuple[AsyncJobClient, list[httpx.Request]]]:
    """A client of the app behind a ``_CuttingProxy``, and the requests it sent."""
    app = create_app(make_settings(database_url))
    app.add_middleware(_CuttingProxy, cuts=cuts, keep=keep)
    sent: list[httpx.Request] = []

    async def append(request: httpx.Request) -> None:
        sent.append(request)

    async with serve(app) as served:
        served.client.event_hooks["request"].append(append)
        yield AsyncJobClient(http=served.client, api_key=api_key, **options), sent


async def test_a_stream_that_ends_before_the_terminal_event_is_resumed(
    database_url: str, api_key: str
) -> None:
    async with _behind_cutting_proxy(
        database_url, api_key, cuts=1, keep=1, reconnect_backoff=0.01
    ) as (client, sent):
        job = await client.submit(IDLE_KIND)
        await client.cancel(job)
        events = [event async for event in client.events(job)]
    assert [(e.seq, e.type) for e in events] == [(1, "submitted"), (2, "cancelled")]
    streams = [r for r in sent if r.url.path.endswith("/events")]
    assert [r.headers.get("last-event-id") for r in streams] == [None, "1"]


async def test_a_stream_that_keeps_ending_early_gives_up_after_its_attempts(
    database_url: str, api_key: str
) -> None:
    async with _behind_cutting_proxy(
        database_url, api_key, cuts=100, keep=0, reconnect_attempts=2, reconnect_backoff=0.01
    ) as (client, _):
        job = await client.submit(IDLE_KIND)
        with pytest.raises(ApiConnectionError, match="ended 3 times before a terminal event"):
            [event async for event in client.events(job)]


def _error_classes(cls: type[JobkeeperError]) -> Iterator[type[JobkeeperError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _error_classes(sub)


def test_every_error_of_jobkeeper_has_its_problem_mapped() -> None:
    ours = {c for c in _error_classes(JobkeeperError) if c.__module__ == jobkeeper.errors.__name__}
    assert {c.code for c in ours} == set(_BUILDERS)


def test_importing_the_client_starts_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    check = "import threading, jobkeeper.client; assert threading.active_count() == 1"
    subprocess.run([sys.executable, "-c", check], env=env, check=True, timeout=60)
