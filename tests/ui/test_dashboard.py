"""The dashboard without a browser: the live fan-out, the manager reads it uses, the form
generator's choices, sessions, mounting it in an application, and switching it off."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Annotated
from uuid import UUID, uuid4

import pytest
from fastapi import FastAPI, Header

from jobkeeper.api import Caller, create_app, lifespan, ui_router
from jobkeeper.api.ui.forms import form_of
from jobkeeper.api.ui.live import LiveJobs
from jobkeeper.api.ui.session import SessionSigner
from jobkeeper.api.ui.timeline import describe
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.testing import lifespan_client
from support import make_worker
from test_hitl import WORKER_SETTINGS, new_kind, running
from test_inbox import ask, asker


async def test_live_rows_reach_only_their_tenant_with_one_read_per_batch(
    job_manager: JobManager, tenant: str
) -> None:
    other = tenant + "-other"
    reads: list[int] = []
    real = job_manager.get_many

    async def counted(ids: Iterable[UUID]) -> tuple[Job, ...]:
        found = await real(ids)
        reads.append(len(found))
        return found

    job_manager.get_many = counted  # type: ignore[method-assign]  # a spy: the real read runs
    live = LiveJobs(job_manager)
    async with (
        live.watch(tenant) as first,
        live.watch(tenant) as second,
        live.watch(other) as third,
    ):
        mine = [await job_manager.submit(tenant, "live.row", i) for i in range(5)]
        theirs = await job_manager.submit(other, "live.row", None)

        async def drained(queue: asyncio.Queue[Job], count: int) -> list[Job]:
            return [await queue.get() for _ in range(count)]

        for queue in (first, second):
            got = await asyncio.wait_for(drained(queue, 5), 10)
            assert {job.id for job in got} == {job.id for job in mine}
        (their_row,) = await asyncio.wait_for(drained(third, 1), 10)
        assert their_row.id == theirs.id
        assert first.empty() and third.empty()
        # three watchers, six changes: the feed was read per batch, never per watcher
        assert sum(reads) == 6 and len(reads) <= 6
        assert live.watching() == 3
    assert live.watching() == 0


async def test_counts_leases_and_get_many(job_manager: JobManager, tenant: str) -> None:
    a = await job_manager.submit(tenant, "count.a", None)
    await job_manager.submit(tenant, "count.a", None)
    b = await job_manager.submit(tenant, "count.b", None)
    await job_manager.cancel(b.id, tenant=tenant)
    stranger = await job_manager.submit(tenant + "-x", "count.a", None)

    counts = await job_manager.counts(tenant=tenant, cap=2)
    assert counts.live == {("count.a", JobStatus.QUEUED): 2}
    assert counts.finished == {
        JobStatus.SUCCEEDED: 0,
        JobStatus.FAILED: 0,
        JobStatus.CANCELLED: 1,
    }
    for extra in range(2):  # finished jobs are counted up to the cap
        cancelled = await job_manager.submit(tenant, "count.b", extra)
        await job_manager.cancel(cancelled.id, tenant=tenant)
    assert (await job_manager.counts(tenant=tenant, cap=2)).finished[JobStatus.CANCELLED] == 2
    (lease,) = await job_manager.claim(uuid4(), kinds=["count.a"], limit=1, lease_seconds=30)
    held = await job_manager.leases([a.id, stranger.id, lease.job.id], tenant=tenant)
    assert stranger.id not in held  # another tenant's job is not told
    assert held[lease.job.id].lease_expires_at is not None
    everyone = await job_manager.get_many([a.id, stranger.id])
    assert {job.id for job in everyone} == {a.id, stranger.id}


def test_the_form_follows_the_schema_and_falls_back_to_json() -> None:
    fields = form_of(
        {
            "schema": {
                "type": "object",
                "properties": {
                    "note": {"type": "string"},
                    "deep": {
                        "type": "object",
                        "properties": {"inner": {"type": "object", "properties": {}}},
                    },
                    "either": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                    "when": {"type": "string", "format": "date-time"},
                    "go": {"type": "boolean"},
                },
                "required": ["go"],
            }
        }
    )
    widgets = {field.name: field.widget for field in fields}
    assert fields[0].name == "answer.go"  # required fields first
    assert widgets == {
        "answer.go": "checkbox",
        "answer.note": "textarea",
        "answer.deep": "group",
        "answer.either": "json",  # no control for anyOf: JSON text, checked by the server
        "answer.when": "datetime",
    }
    (deep,) = [f for f in fields if f.name == "answer.deep"]
    assert [c.widget for c in deep.children] == ["json"]  # deeper than one level: JSON
    (choice,) = form_of({"choices": ["yes", "no", 3], "schema": None})
    assert choice.widget == "choice" and choice.options == (
        ("yes", '"yes"'),
        ("no", '"no"'),
        ("3", "3"),
    )
    (anything,) = form_of({"schema": None, "choices": None})
    assert anything.widget == "json" and anything.path == ()


def test_a_session_cookie_is_refused_when_tampered_with_or_expired() -> None:
    signer = SessionSigner("secret", ttl=60)
    cookie = signer.sign("d" * 64)
    assert signer.verify(cookie) == "d" * 64
    body, _, mac = cookie.partition(".")
    assert signer.verify(body[:-2] + "xx." + mac) is None
    assert SessionSigner("another secret", ttl=60).verify(cookie) is None
    assert SessionSigner("secret", ttl=-1).verify(SessionSigner("secret", -1).sign("d")) is None
    assert signer.verify("garbage") is None


async def test_mounted_in_an_app_its_own_caller_decides(database_url: str, tenant: str) -> None:
    async def app_caller(x_user: Annotated[str, Header()]) -> Caller:
        return Caller(tenant, f"user:{x_user}")

    settings = Settings(database_url=database_url)
    app = FastAPI(lifespan=lifespan(settings))
    app.include_router(ui_router(caller=app_caller, prefix="/console"))
    async with lifespan_client(app, headers={"X-User": "alice"}) as http:
        page = await http.get("/console")
        assert page.status_code == 200
        assert "user:alice" in page.text and tenant in page.text
        assert "Sign out" not in page.text
        assert (await http.get("/console/login")).status_code == 404
        assert (await http.get("/ui")).status_code == 404
        missing = await http.get(f"/console/jobs/{uuid4()}")  # a page, whatever the app handles
        assert missing.status_code == 404 and "Job not found" in missing.text
        async with await JobManager.connect(database_url) as jobs:
            job = (await jobs.submit(tenant, "mounted.job", None)).id
        refused = await http.post(f"/console/jobs/{job}/pin")
        assert refused.status_code == 400
        pinned = await http.post(f"/console/jobs/{job}/pin", headers={"X-Jobkeeper-UI": "1"})
        assert pinned.json()["pinned"] is True


@pytest.mark.parametrize("enabled", [True, False])
async def test_the_ui_setting_switches_the_dashboard(database_url: str, enabled: bool) -> None:
    app = create_app(Settings(database_url=database_url, ui=enabled))
    async with lifespan_client(app) as http:
        response = await http.get("/ui/login")
        assert response.status_code == (200 if enabled else 404)
        docs = await http.get("/docs")
        assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
        assert (await http.get("/docs/assets/swagger-ui-bundle.js")).status_code == 200
        assert (await http.get("/redoc")).status_code == 404  # it would load from a CDN


async def test_filters_pages_and_search(database_url: str, tenant: str) -> None:
    async def app_caller() -> Caller:
        return Caller(tenant, "user:bob")

    app = FastAPI(lifespan=lifespan(Settings(database_url=database_url)))
    app.include_router(ui_router(caller=app_caller))
    async with await JobManager.connect(database_url) as jobs:
        many = [await jobs.submit(tenant, "page.many", i) for i in range(55)]
        other = await jobs.submit(tenant, "page.other", None)
        await jobs.cancel(other.id, tenant=tenant)
    async with lifespan_client(app) as http:
        first = await http.get("/ui", params={"kind": "page.many", "status": ""})
        rows = re.findall(r'<tr data-job-id="([^"]+)"', first.text)
        assert rows == [str(job.id) for job in reversed(many)][:50]  # newest first
        (cursor,) = re.findall(r"cursor=([A-Za-z0-9_-]{22})", first.text)
        second = await http.get("/ui", params={"kind": "page.many", "cursor": cursor})
        rows = re.findall(r'<tr data-job-id="([^"]+)"', second.text)
        assert rows == [str(job.id) for job in reversed(many)][50:]
        cancelled = await http.get("/ui", params={"status": "cancelled"})
        assert re.findall(r'<tr data-job-id="([^"]+)"', cancelled.text) == [str(other.id)]
        assert 'data-count="queued">55<' in cancelled.text  # counts ignore the filter
        found = await http.get("/ui", params={"q": f" {other.id} "})
        assert found.status_code == 303 and found.headers["location"] == f"/ui/jobs/{other.id}"
        missing = await http.get("/ui", params={"q": str(uuid4())})
        assert "No job of yours has the id" in missing.text
        bad = await http.get("/ui", params={"status": "sleeping"})
        assert bad.status_code == 422 and "Validation error" in bad.text  # a page, not a 500


async def test_the_inbox_lists_what_the_caller_may_answer_and_its_buttons_call_the_manager(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    async def app_caller(
        x_user: Annotated[str, Header()], x_roles: Annotated[str, Header()] = ""
    ) -> Caller:
        return Caller(tenant, f"user:{x_user}", frozenset(filter(None, x_roles.split(","))))

    app = FastAPI(lifespan=lifespan(Settings(database_url=database_url)))
    app.include_router(ui_router(caller=app_caller))
    kind = new_kind("ui-inbox")
    async with running(make_worker(job_manager, asker(kind), **WORKER_SETTINGS)):
        anyone = await ask(job_manager, tenant, kind, text="For anyone?")
        underwriters = await ask(
            job_manager, tenant, kind, text="For underwriters?", assignee="role:underwriter"
        )
        bobs = await ask(job_manager, tenant, kind, text="For Bob?", assignee="user:bob")
    alice = {"X-User": "alice", "X-Roles": "underwriter", "X-Jobkeeper-UI": "1"}
    bob = {"X-User": "bob", "X-Jobkeeper-UI": "1"}
    async with lifespan_client(app) as http:

        def cards(page: str) -> list[str]:
            return re.findall(r'<article class="card question" data-job-id="([^"]+)"', page)

        mine = await http.get("/ui/inbox", headers=alice)
        assert set(cards(mine.text)) == {str(anyone), str(underwriters)}  # not Bob's
        assert 'For <strong data-field="assignee">role:underwriter</strong>' in mine.text
        only = await http.get("/ui/inbox", params={"assignee": "role:underwriter"}, headers=alice)
        assert cards(only.text) == [str(underwriters)]
        other_kind = await http.get("/ui/inbox", params={"kind": kind + "x"}, headers=alice)
        assert cards(other_kind.text) == []
        bad = await http.get("/ui/inbox", params={"assignee": "team:x"}, headers=alice)
        assert bad.status_code == 422 and "is required" in bad.text  # a page, not a 500
        assert str(bobs) in (await http.get("/ui/inbox", headers=bob)).text

        claim = f"/ui/jobs/{underwriters}/question/claim"
        held = await http.post(claim, headers=alice)
        assert held.status_code == 200 and held.json()["claimed_by"] == "user:alice"
        version = held.json()["version"]
        refused = await http.post(claim, headers=bob)
        assert refused.status_code == 409 and refused.json()["code"] == "question_claimed"
        taken = await http.post(claim, json={"takeover": True}, headers=bob)
        assert taken.json()["claimed_by"] == "user:bob"
        answer = f"/ui/jobs/{underwriters}/answer"
        approve = {"answer": {"approve": True}}
        blocked = await http.post(
            answer, json=approve, headers={**alice, "If-Match": f'"{version}"'}
        )
        assert blocked.status_code == 409  # Bob holds it now
        released = await http.post(f"/ui/jobs/{underwriters}/question/release", headers=bob)
        assert released.json()["claimed_by"] is None
        garbled = await http.post(answer, json=approve, headers={**alice, "If-Match": "v1"})
        assert garbled.status_code == 400 and garbled.json()["code"] == "invalid_request"
        stale = await http.post(answer, json=approve, headers={**alice, "If-Match": '"999"'})
        assert stale.status_code == 412 and stale.json()["code"] == "precondition_failed"
        done = await http.post(answer, json=approve, headers={**alice, "If-Match": f'"{version}"'})
        assert done.status_code == 200 and done.json()["status"] == "queued"
        assert done.json()["question"] is None  # a live row: it waits for nothing now
    events = [e.type for e in await job_manager.events(underwriters, tenant=tenant)]
    assert events[-4:] == [
        "question_claimed",
        "question_taken_over",
        "question_released",
        "answered",
    ]


def test_the_timeline_says_who_did_what_from_where() -> None:
    at = "2026-12-06T04:30:48.123456Z"
    assert (
        describe("question_claimed", {"by": "user:alice", "until": at, "replica": "vm:12"})
        == "claimed by user:alice until 04:30:48 (from vm:12)"
    )
    assert describe(
        "question_taken_over", {"by": "user:bob", "from": "user:alice", "until": at}
    ) == ("taken over by user:bob from user:alice until 04:30:48")
    assert describe("escalated", {"from": None, "to": "role:manager", "deadline": at}) == (
        "escalated from anyone to role:manager, new deadline 04:30:48"
    )
    assert describe("answered", {"answered_by": "user:bob", "replica": "vm:1"}) == (
        "answered by user:bob (from vm:1)"
    )
    assert describe("answered", {"timed_out": True}) == "answered with its default at the deadline"
    assert describe("failed", {"timed_out": True, "error": {}}).startswith("failed: no answer")
    assert describe("progress", {"fraction": 0.5}) == '{"fraction": 0.5}'  # others: their data
