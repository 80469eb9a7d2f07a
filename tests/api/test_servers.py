"""The API as it is deployed: ``jobkeeper serve`` (uvicorn) processes on 127.0.0.1, reached over
TCP. One replica for a smoke test of the main rows with real streaming; two replicas on one
database with a ``jobkeeper worker`` process, where what one replica accepts the other serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from jobkeeper.api.auth import ApiKeys
from jobkeeper.manager import JobManager
from support import eventually

from .support import (
    DEADLINE,
    IDLE_KIND,
    Processes,
    Sse,
    SseReader,
    assert_event_stream,
    assert_job,
    assert_problem,
    bearer,
    running_worker,
)

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def client(base: str, key: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(key) if key else None
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=DEADLINE) as http:
        yield http


async def read_stream(
    http: httpx.AsyncClient, job_id: str, *, last_event_id: str | None = None, stop_after: int = 0
) -> list[Sse]:
    """Events of the job over a real connection; with ``stop_after``, hang up after so many."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Sse] = []
    async with http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = SseReader(response)
        while (event := await asyncio.wait_for(reader.next(), DEADLINE)) is not None:
            events.append(event)
            if stop_after and len(events) == stop_after:
                break
    return events


async def status_on(
    http: httpx.AsyncClient, job_id: str, statuses: tuple[str, ...]
) -> dict[str, Any]:
    """Poll a replica's (cached) reads until the job is in one of ``statuses``."""

    async def probe() -> dict[str, Any] | None:
        response = await http.get(f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            assert body["status"] in statuses, body
        return body if body["status"] in statuses else None

    found: dict[str, Any] = await eventually(
        probe, timeout=DEADLINE, what=f"{job_id} to be {statuses} on {http.base_url}"
    )
    return found


async def test_one_server_process_smoke(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    base = await processes.serve("api")
    (served,) = processes.started
    async with client(base, key) as http:
        submitted = await http.post("/jobs", json={"kind": IDLE_KIND, "payload": {"n": 1}})
        assert submitted.status_code == 201, submitted.text
        job = assert_job(submitted.json())
        assert submitted.headers["location"] == f"/jobs/{job['id']}"

        read = await http.get(f"/jobs/{job['id']}", headers={"X-Request-ID": "polled-read-1"})
        assert read.status_code == 200 and read.json() == job
        assert read.headers["x-request-id"] == "polled-read-1"
        # uvicorn's access log line of the polled read carries its request id
        await eventually(
            lambda: any(
                f'GET /jobs/{job["id"]} HTTP/1.1" 200' in line and "request=polled-read-1" in line
                for line in served.output().splitlines()
            ),
            timeout=DEADLINE,
            what="the access log line of the polled read",
        )
        etag = read.headers["etag"]
        assert (
            await http.get(f"/jobs/{job['id']}", headers={"If-None-Match": etag})
        ).status_code == 304

        cancelled = await http.post(f"/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert_problem(await http.post(f"/jobs/{job['id']}/cancel"), 409, "job_finished")
        assert [e.event for e in await read_stream(http, job["id"])] == ["submitted", "cancelled"]

        assert_problem(await http.get("/no/such/route"), 404, "not_found")
        assert_problem(await http.get(f"/jobs/{job['id']}x"), 400, "invalid_job_id")
        async with client(base) as anonymous:
            unauthorised = await anonymous.get(f"/jobs/{job['id']}")
            assert_problem(unauthorised, 401, "unauthorized")
            assert unauthorised.headers["www-authenticate"] == "Bearer"
            assert (await anonymous.get("/healthz")).status_code == 200


async def test_events_stream_live_over_tcp_and_resume_after_a_hang_up(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    base = await processes.serve("api")
    async with client(base, key) as http:
        job = (
            await http.post(
                "/jobs", json={"kind": "demo.sleep", "payload": {"seconds": 1.0, "steps": 5}}
            )
        ).json()
        async with http.stream("GET", f"/jobs/{job['id']}/events") as response:
            assert response.status_code == 200
            reader = SseReader(response)
            first = await asyncio.wait_for(reader.next(), DEADLINE)
            assert first is not None and first.event == "submitted"  # delivered before any work
            async with running_worker(job_manager, ["demo.sleep"]):
                rest: list[Sse] = []
                while (event := await asyncio.wait_for(reader.next(), DEADLINE)) is not None:
                    rest.append(event)
        live = [first, *rest]
        assert live[-1].event == "succeeded"
        assert_event_stream(live)

        # hang up after a few events, resume with the last id seen: the same history, once
        head = await read_stream(http, job["id"], stop_after=3)
        tail = await read_stream(http, job["id"], last_event_id=head[-1].id)
        assert head + tail == live


async def test_two_replicas_and_a_worker_process_share_one_database(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    processes.start(
        "worker", "worker", "jobkeeper.demo:tasks", "--kind", "demo.sleep", "--kind", "demo.ask"
    )
    base_a, base_b = await asyncio.gather(
        processes.serve("replica-a"), processes.serve("replica-b")
    )
    async with client(base_a, key) as a, client(base_b, key) as b:
        # accepted by A, read and cancelled on B, and A learns of it
        queued = (await a.post("/jobs", json={"kind": IDLE_KIND})).json()
        on_b = await b.get(f"/jobs/{queued['id']}")
        assert on_b.status_code == 200 and on_b.json() == queued
        assert (await a.get(f"/jobs/{queued['id']}")).status_code == 200  # now cached on A
        cancelled = await b.post(f"/jobs/{queued['id']}/cancel")
        assert cancelled.status_code == 202
        seen_on_a = await status_on(a, queued["id"], ("cancelled",))
        assert seen_on_a == cancelled.json()
        assert_problem(await a.post(f"/jobs/{queued['id']}/cancel"), 409, "job_finished")

        # run by the worker process; B streams it live
        sleep = (
            await a.post(
                "/jobs", json={"kind": "demo.sleep", "payload": {"seconds": 0.8, "steps": 4}}
            )
        ).json()
        events = await read_stream(b, sleep["id"])
        assert [e.event for e in events[:2]] == ["submitted", "claimed"]
        assert events[-1].event == "succeeded"
        assert_event_stream(events)
        done = await status_on(a, sleep["id"], ("succeeded",))
        assert done["result"] == {"slept": 0.8, "steps": 4}
        assert done["version"] == len(events)

        # a question asked by the worker process, answered on B, the result read on A
        ask = (await a.post("/jobs", json={"kind": "demo.ask", "payload": {}})).json()
        waiting = await status_on(b, ask["id"], ("waiting_input",))
        etag_a = (await a.get(f"/jobs/{ask['id']}")).headers["etag"]
        answer = {"approve": False, "comment": "needs a second look"}
        assert_problem(
            await b.post(f"/jobs/{ask['id']}/input", json={"answer": {"approve": "no"}}),
            422,
            "invalid_answer",
        )
        answered = await b.post(f"/jobs/{ask['id']}/input", json={"answer": answer})
        assert answered.status_code == 200, answered.text
        assert answered.json()["version"] > waiting["version"]
        finished = await status_on(a, ask["id"], ("succeeded",))
        assert finished["result"]["answer"] == answer
        changed = await a.get(f"/jobs/{ask['id']}", headers={"If-None-Match": etag_a})
        assert changed.status_code == 200 and changed.headers["etag"] != etag_a
        history = await read_stream(b, ask["id"])
        assert_event_stream(history)
        kinds = [e.event for e in history]
        assert kinds.index("asked") < kinds.index("answered") < kinds.index("succeeded")
        assert kinds[-1] == "succeeded"

    for process in processes.started:
        processes.alive(process)


def gauge(metrics: str, name: str) -> float:
    """One unlabelled sample of the Prometheus text ``metrics``."""
    for line in metrics.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_event_streams_leave_no_watcher_or_task_behind_when_clients_hang_up(
    processes: Processes, job_manager: JobManager, tenant: str
) -> None:
    key = (await ApiKeys(job_manager).create(tenant)).key
    base = await processes.serve("api")
    streams = 20
    async with client(base, key) as http, contextlib.AsyncExitStack() as hang_ups:

        async def sample(name: str) -> float:
            return gauge((await http.get("/metrics")).text, name)

        # a first stream starts sse-starlette's one shutdown watcher task of the process
        done = (await http.post("/jobs", json={"kind": IDLE_KIND})).json()
        await http.post(f"/jobs/{done['id']}/cancel")
        assert [e.event for e in await read_stream(http, done["id"])] == ["submitted", "cancelled"]
        job = (await http.post("/jobs", json={"kind": IDLE_KIND})).json()
        tasks_before = await sample("jobkeeper_asyncio_tasks")
        assert await sample("jobkeeper_watchers") == 0
        readers: list[SseReader] = []
        for _ in range(streams):  # each client on a connection of its own
            own = await hang_ups.enter_async_context(client(base, key))
            response = await hang_ups.enter_async_context(
                own.stream("GET", f"/jobs/{job['id']}/events")
            )
            reader = SseReader(response)  # kept: a collected reader closes its response
            readers.append(reader)
            first = await asyncio.wait_for(reader.next(), DEADLINE)
            assert first is not None and first.event == "submitted"

        async def all_watching() -> bool:
            return await sample("jobkeeper_watchers") == streams

        await eventually(all_watching, what="the server to count every stream")
        assert await sample("jobkeeper_watched_jobs") == 1
        assert await sample("jobkeeper_asyncio_tasks") > tasks_before
        await hang_ups.aclose()  # every client hangs up, mid-stream

        async def back_to_baseline() -> bool:
            return (
                await sample("jobkeeper_watchers") == 0
                and await sample("jobkeeper_watched_jobs") == 0
                and await sample("jobkeeper_asyncio_tasks") <= tasks_before
            )

        await eventually(back_to_baseline, what="the server to drop every watcher and task")
