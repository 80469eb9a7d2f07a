"""``jobkeeper.client``'s schedules and inbox against a ``jobkeeper serve`` process and a real
Postgres, each test once with ``AsyncJobClient`` and once with ``JobClient``: a schedule created,
listed, paused (a due tick submits nothing), resumed (it does), deleted; the inbox paged, a
question claimed, taken over, released and answered with its version (a stale one is
``QuestionChanged``); every refusal the typed error the server raised.

Questions are asked by an in-process worker running ``test_inbox.asker``; ticks are fired by an
in-process ``Scheduler`` after the test moves a schedule's next tick into the past.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from jobkeeper.api.auth import ApiKeys
from jobkeeper.client import (
    AsyncJobClient,
    InboxPageOut,
    JobClient,
    JobOut,
    QuestionOut,
    ScheduleOut,
)
from jobkeeper.domain.status import JobStatus
from jobkeeper.errors import (
    InvalidRequest,
    NotWaitingForInput,
    QuestionChanged,
    QuestionClaimed,
    ScheduleExists,
    ScheduleNotFound,
)
from jobkeeper.manager import JobManager
from jobkeeper.testing import data_layer
from jobkeeper.worker.scheduler import Scheduler
from test_inbox import (
    ask,
    asking_worker,  # noqa: F401 - a fixture
)

from .support import Processes

pytestmark = pytest.mark.timeout(120)
YES = {"approve": True}


class Client:
    """One client under test, as coroutines whichever form it is: the async client's methods as
    they are, the blocking client's run in a thread. ``responses``: every response it got."""

    def __init__(self, client: AsyncJobClient | JobClient, responses: list[httpx.Response]):
        self.client = client
        self.responses = responses

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.client, name)
        if isinstance(self.client, AsyncJobClient):
            return method
        return partial(asyncio.to_thread, method)

    async def every(self, name: str, **filters: Any) -> list[Any]:
        """All the items of a ``*_all`` listing."""
        items = getattr(self.client, name)(**filters)
        if isinstance(self.client, AsyncJobClient):
            return [item async for item in items]
        return await asyncio.to_thread(list, items)


Connect = Callable[[str], Awaitable[Client]]


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> AsyncIterator[str]:
    """One ``jobkeeper serve`` of the module's database; its base URL."""
    processes = Processes(Path(tmp_path_factory.mktemp("serve")), database_url)
    try:
        yield await processes.serve("api")
    finally:
        processes.stop_all()


@pytest.fixture(params=["async", "sync"])
async def connect(request: pytest.FixtureRequest, server: str) -> AsyncIterator[Connect]:
    """Makes a client of the server with an API key, in this test's form."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(key: str) -> Client:
            responses: list[httpx.Response] = []
            if request.param == "async":

                async def keep(response: httpx.Response) -> None:
                    responses.append(response)

                http = await stack.enter_async_context(
                    httpx.AsyncClient(event_hooks={"response": [keep]})
                )
                async_client = AsyncJobClient(server, http=http, api_key=key)
                return Client(await stack.enter_async_context(async_client), responses)
            sync_http = stack.enter_context(
                httpx.Client(event_hooks={"response": [responses.append]})
            )
            return Client(
                stack.enter_context(JobClient(server, http=sync_http, api_key=key)), responses
            )

        yield make


async def _backdate(job_manager: JobManager, schedule_id: str) -> None:
    """Make the schedule's next tick due: an hour of downtime."""
    async with data_layer(job_manager).database.connection() as conn:
        await conn.execute(
            "UPDATE schedules SET next_tick = next_tick - interval '1 hour' WHERE id = $1",
            UUID(schedule_id),
        )


async def test_schedules_created_listed_paused_resumed_and_deleted(
    connect: Connect, job_manager: JobManager, tenant: str
) -> None:
    client = await connect((await ApiKeys(job_manager).create(tenant)).key)
    kind = f"client.tick.{uuid4().hex[:10]}"
    hourly = await client.create_schedule(
        "hourly", kind, {"scope": "all"}, every_seconds=3600, priority=4, max_attempts=2
    )
    assert isinstance(hourly, ScheduleOut) and UUID(hourly.id)
    assert (hourly.name, hourly.kind, hourly.payload) == ("hourly", kind, {"scope": "all"})
    assert (hourly.every_seconds, hourly.cron, hourly.timezone) == (3600, None, "UTC")
    assert (hourly.priority, hourly.max_attempts, hourly.paused) == (4, 2, False)
    assert client.responses[-1].request.url.path == "/schedules"
    assert client.responses[-1].status_code == 201
    nightly = await client.create_schedule(
        "nightly", kind, cron="30 2 * * *", timezone="Europe/Stockholm", paused=True
    )
    assert (nightly.cron, nightly.timezone, nightly.paused, nightly.payload) == (
        "30 2 * * *",
        "Europe/Stockholm",
        True,
        None,
    )

    with pytest.raises(ScheduleExists) as taken:
        await client.create_schedule("hourly", kind, every_seconds=60)
    assert taken.value.name == "hourly"
    with pytest.raises(InvalidRequest) as bad_cron:
        await client.create_schedule("bad", kind, cron="61 * * * *")
    assert bad_cron.value.field == "cron"
    with pytest.raises(InvalidRequest) as too_often:  # refused by the parser
        await client.create_schedule("bad", kind, every_seconds=0)
    assert too_often.value.field == "every_seconds"

    assert [s.name for s in await client.list_schedules()] == ["hourly", "nightly"]
    assert await client.get_schedule(hourly.id) == hourly
    assert await client.get_schedule(UUID(nightly.id)) == nightly

    # paused, a due tick submits nothing
    paused = await client.pause_schedule(hourly)
    assert paused.paused and paused.id == hourly.id
    assert (await client.get_schedule(hourly)).paused
    await _backdate(job_manager, hourly.id)
    scheduler = Scheduler(job_manager, (), [kind])
    await scheduler.fire_due()
    assert (await client.list(kind=kind)).items == []

    # resumed, the next tick does
    resumed = await client.resume_schedule(hourly)
    assert not resumed.paused
    assert datetime.fromisoformat(resumed.next_tick) > datetime.now(UTC)
    await _backdate(job_manager, hourly.id)
    await scheduler.fire_due()
    [job] = (await client.list(kind=kind)).items
    assert (job.schedule_id, job.payload, job.priority) == (hourly.id, {"scope": "all"}, 4)
    assert (await client.get_schedule(hourly)).last_tick == job.scheduled_for

    # deleted: gone, its job stays
    assert await client.delete_schedule(hourly) is None
    assert client.responses[-1].status_code == 204
    with pytest.raises(ScheduleNotFound) as gone:
        await client.get_schedule(hourly.id)
    assert gone.value.schedule_id == UUID(hourly.id)
    with pytest.raises(ScheduleNotFound):
        await client.delete_schedule(hourly.id)
    with pytest.raises(ScheduleNotFound):
        await client.resume_schedule(hourly.id)
    assert [s.name for s in await client.list_schedules()] == ["nightly"]
    assert (await client.get(job.id)).schedule_id == hourly.id
    with pytest.raises(InvalidRequest) as bad_id:
        await client.pause_schedule("not-a-uuid")
    assert bad_id.value.field == "schedule_id"


async def test_the_inbox_claims_takeovers_and_answers_with_a_version(
    connect: Connect,
    job_manager: JobManager,
    tenant: str,
    asking_worker: str,  # noqa: F811
) -> None:
    kind = asking_worker
    keys = ApiKeys(job_manager)
    alice_key, bob_key = await keys.create(tenant, "alice"), await keys.create(tenant, "bob")
    alice, bob = await connect(alice_key.key), await connect(bob_key.key)
    alice_id, bob_id = f"api-key:{alice_key.id}", f"api-key:{bob_key.id}"
    first = str(await ask(job_manager, tenant, kind, timeout=100))
    second = str(await ask(job_manager, tenant, kind, timeout=200))

    page = await alice.inbox(kind=kind, limit=1)
    assert isinstance(page, InboxPageOut) and page.next_cursor is not None
    [item] = page.items
    assert isinstance(item, QuestionOut)
    assert (item.job_id, item.kind, item.key, item.text) == (first, kind, "q1", "Approve?")
    assert item.schema_["required"] == ["approve"] and item.claimed_by is None
    rest = await alice.inbox(kind=kind, cursor=page.next_cursor)
    assert [q.job_id for q in rest.items] == [second] and rest.next_cursor is None
    before = len(alice.responses)
    assert [q.job_id for q in await alice.every("inbox_all", kind=kind, limit=1)] == [
        first,
        second,
    ]
    assert len(alice.responses) - before == 2, "one request per page"
    assert (await alice.inbox(kind=kind, assignee="role:manager")).items == []
    with pytest.raises(InvalidRequest) as bad_assignee:
        await alice.inbox(assignee="team:x")
    assert bad_assignee.value.field == "assignee"

    asked = await bob.question(first)
    assert asked == item and bob.responses[-1].headers["etag"] == f'"{item.version}"'

    claimed = await alice.claim_question(item)  # a QuestionOut names its job
    assert claimed.claimed_by == alice_id and claimed.claim_expires_at is not None
    assert claimed.version == item.version
    with pytest.raises(QuestionClaimed) as held:
        await bob.claim_question(first)
    assert (held.value.job_id, held.value.claimed_by) == (UUID(first), alice_id)
    with pytest.raises(QuestionClaimed):
        await bob.answer(first, YES)
    taken = await bob.claim_question(first, takeover=True)
    assert taken.claimed_by == bob_id
    with pytest.raises(QuestionClaimed) as not_hers:
        await alice.release_question(first)
    assert not_hers.value.claimed_by == bob_id

    with pytest.raises(QuestionChanged) as stale:
        await bob.answer(first, YES, version=item.version - 1)
    assert stale.value.job_id == UUID(first)
    assert (stale.value.expected_version, stale.value.current_version) == (
        item.version - 1,
        item.version,
    )
    assert bob.responses[-1].status_code == 412
    assert bob.responses[-1].request.headers["if-match"] == f'"{item.version - 1}"'
    answered = await bob.answer(taken, YES)  # the version of the question it was given
    assert isinstance(answered, JobOut) and answered.status is not JobStatus.WAITING_INPUT
    assert bob.responses[-1].request.headers["if-match"] == f'"{item.version}"'
    with pytest.raises(NotWaitingForInput) as over:
        await alice.question(first)
    assert over.value.job_id == UUID(first)

    # a claim given back
    assert (await alice.claim_question(second)).claimed_by == alice_id
    released = await alice.release_question(second)
    assert released.claimed_by is None and released.claim_expires_at is None
    assert [q.job_id for q in await bob.every("inbox_all", kind=kind)] == [second]
    events = [e.type for e in await job_manager.events(UUID(second), tenant=tenant)]
    assert events[-2:] == ["question_claimed", "question_released"]
