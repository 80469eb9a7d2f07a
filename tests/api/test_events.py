"""``GET /jobs/{id}/events``: Server-Sent Events that replay history, follow a worker live, end
after the terminal event, and resume from ``Last-Event-ID`` without gaps or duplicates.

httpx's ASGI transport hands over a response once the app has sent all of it, so a stream that
returns at all has been closed by the server; live delivery is shown by starting the stream before
the worker exists.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from jobkeeper.api import deps
from jobkeeper.api.auth import ApiKeys
from jobkeeper.api.deps import Services
from jobkeeper.domain.validate import MAX_SEQUENCE
from jobkeeper.domain.values import JobEvent
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics

from .support import (
    DEADLINE,
    IDLE_KIND,
    Served,
    Sse,
    assert_event_stream,
    assert_problem,
    job_status,
    make_settings,
    parse_sse,
    running_worker,
)

STREAM_END = 3.0  # a stream with nothing left to send ends at once; this is generous


async def stream(client: httpx.AsyncClient, job_id: str, **headers: str) -> list[Sse]:
    response = await asyncio.wait_for(
        client.get(f"/jobs/{job_id}/events", headers=headers), DEADLINE
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers.get("x-request-id")
    return parse_sse(response.text)


async def test_events_replay_the_history_of_a_finished_job(api: httpx.AsyncClient) -> None:
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    assert (await api.post(f"/jobs/{job['id']}/cancel")).status_code == 202

    events = await stream(api, job["id"])
    assert [e.event for e in events] == ["submitted", "cancelled"]
    assert_event_stream(events)
    assert events[0].data["data"] == {"kind": IDLE_KIND}
    for event in events:
        assert event.data["at"]


async def test_events_follow_a_worker_live_and_end_after_the_terminal_event(
    served: Served, job_manager: JobManager
) -> None:
    api = served.client
    job = (
        await api.post(
            "/jobs", json={"kind": "demo.sleep", "payload": {"seconds": 0.6, "steps": 3}}
        )
    ).json()
    path = f"/jobs/{job['id']}/events"
    watching = asyncio.create_task(stream(api, job["id"]))
    try:
        await asyncio.wait_for(served.response_started(path).wait(), DEADLINE)
        assert not watching.done()  # the stream is open while the job is only queued
        async with running_worker(job_manager, ["demo.sleep"]):
            events = await watching
    finally:
        watching.cancel()

    types = [e.event for e in events]
    assert types[:2] == ["submitted", "claimed"]
    assert types[-1] == "succeeded"
    assert "progress" in types
    assert types.count("succeeded") == 1
    assert_event_stream(events)
    final = (await api.get(f"/jobs/{job['id']}", headers={"Cache-Control": "no-cache"})).json()
    assert final["version"] == len(events)  # every change of the job was streamed


async def test_last_event_id_resumes_without_gaps_or_duplicates(
    api: httpx.AsyncClient, job_manager: JobManager
) -> None:
    job = (
        await api.post(
            "/jobs", json={"kind": "demo.sleep", "payload": {"seconds": 0.3, "steps": 3}}
        )
    ).json()
    async with running_worker(job_manager, ["demo.sleep"]):
        await job_status(api, job["id"], ["succeeded"], **{"Cache-Control": "no-cache"})
    full = await stream(api, job["id"])
    assert full[-1].event == "succeeded"

    for seen in range(len(full)):
        resumed = await stream(api, job["id"], **{"Last-Event-ID": str(seen)})
        assert resumed == full[seen:], seen
        by_query = parse_sse(
            (await api.get(f"/jobs/{job['id']}/events", params={"after": seen})).text
        )
        assert by_query == full[seen:], seen


async def test_a_stream_resumed_before_the_end_delivers_the_rest_live(
    served: Served, job_manager: JobManager
) -> None:
    api = served.client
    job = (
        await api.post(
            "/jobs", json={"kind": "demo.sleep", "payload": {"seconds": 0.4, "steps": 2}}
        )
    ).json()
    watching = asyncio.create_task(stream(api, job["id"], **{"Last-Event-ID": "1"}))
    try:
        await asyncio.wait_for(
            served.response_started(f"/jobs/{job['id']}/events").wait(), DEADLINE
        )
        async with running_worker(job_manager, ["demo.sleep"]):
            rest = await watching
    finally:
        watching.cancel()
    full = await stream(api, job["id"])
    assert [e.event for e in full[:1]] == ["submitted"]
    assert rest == full[1:]


async def test_resuming_after_the_terminal_event_ends_at_once(api: httpx.AsyncClient) -> None:
    """What EventSource does when the server closes the stream: reconnect with the last id."""
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    assert (await api.post(f"/jobs/{job['id']}/cancel")).status_code == 202
    for resume in ({"headers": {"Last-Event-ID": "2"}}, {"params": {"after": MAX_SEQUENCE}}):
        response = await asyncio.wait_for(
            api.get(f"/jobs/{job['id']}/events", **resume), STREAM_END
        )
        assert response.status_code == 204, resume  # documented in the schema
        assert response.content == b""


# A live job's stream would only end with the job: each of these is answered before it starts.


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "1.5", "", " ", str(MAX_SEQUENCE + 1), "9" * 5000, b"\xb2"],
    ids=["text", "negative", "fraction", "empty", "blank", "past-int64", "5000-digits", "sup-2"],
)
async def test_a_malformed_last_event_id_is_400(api: httpx.AsyncClient, value: str | bytes) -> None:
    """Past int64 it was a 200 and then a dropped connection (``value out of int64 range``);
    ``\\xb2`` (latin-1 superscript two) passed ``str.isdigit``, and it and 5,000 digits made
    ``int()`` raise (a 500)."""
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    response = await asyncio.wait_for(
        api.get(f"/jobs/{job['id']}/events", headers={"Last-Event-ID": value}), STREAM_END
    )
    assert_problem(response, 400, "invalid_request")


@pytest.mark.parametrize(
    "after",
    [-1, MAX_SEQUENCE + 1, 10**30, "9" * 5000],
    ids=["-1", "2**63", "10**30", "5000-digits"],
)
async def test_an_after_outside_int64_is_422(api: httpx.AsyncClient, after: int | str) -> None:
    job = (await api.post("/jobs", json={"kind": IDLE_KIND})).json()
    response = await asyncio.wait_for(
        api.get(f"/jobs/{job['id']}/events", params={"after": after}), STREAM_END
    )
    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["query", "after"]]


async def test_a_jobs_frames_are_encoded_once_for_every_stream_and_kept_bounded(
    job_manager: JobManager, database_url: str, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deps, "EVENT_FRAMES", 3)
    svc = Services(
        settings=make_settings(database_url),
        jobs=job_manager,
        keys=ApiKeys(job_manager),
        metrics=Metrics(job_manager),
    )
    first = await job_manager.submit(tenant, IDLE_KIND, {"n": 1})
    await job_manager.cancel(first.id, tenant=tenant)
    second = await job_manager.submit(tenant, IDLE_KIND, {"n": 2})
    history = await job_manager.events(first.id, tenant=tenant)

    frames = [svc.event_frame(first.id, event) for event in history]
    # a second stream of the same job sends the very frames the first one encoded
    assert all(
        svc.event_frame(first.id, event) is frame
        for event, frame in zip(history, frames, strict=True)
    )
    sent = parse_sse(b"".join(frames).decode())
    assert [(e.id, e.event) for e in sent] == [(str(e.seq), e.type) for e in history]
    assert sent[0].data["data"] == {"kind": IDLE_KIND}

    for event in await job_manager.events(second.id, tenant=tenant):
        svc.event_frame(second.id, event)
    for seq in range(10, 20):  # more events than kept: the first stored go first
        svc.event_frame(second.id, JobEvent(seq, "progress", {}, history[0].at))
    assert len(svc.frames) == 3
    assert (first.id, history[0].seq) not in svc.frames
    # a frame too large to keep is still sent whole
    large = JobEvent(30, "progress", {"text": "x" * deps.FRAME_KEPT_BYTES}, history[0].at)
    assert parse_sse(svc.event_frame(second.id, large).decode())[0].data["data"] == large.data
    assert (second.id, 30) not in svc.frames
