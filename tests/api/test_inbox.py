"""The work queue over HTTP: ``GET /inbox``, a question's claim and release, ``If-Match`` on an
answer, the problems of each refusal, and the audit trail on the job's event stream.

Two API keys of one tenant are two people (principals ``api-key:<key id>``); questions are asked
by an in-process worker running ``test_inbox.asker``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from jobkeeper.api.auth import ApiKeys, NewKey
from jobkeeper.manager import JobManager
from test_inbox import ask as ask_for
from test_inbox import asking_worker  # noqa: F401 - a fixture

from .support import Served, assert_problem, assert_utc, bearer, job_status, parse_sse

YES = {"approve": True}
NO_CACHE = {"Cache-Control": "no-cache"}


@pytest.fixture
async def people(
    shared_app: Served, job_manager: JobManager, tenant: str
) -> AsyncIterator[tuple[tuple[NewKey, httpx.AsyncClient], tuple[NewKey, httpx.AsyncClient]]]:
    """Alice and Bob: two keys of this test's tenant, each with a client of the module's app."""
    keys = ApiKeys(job_manager)
    alice, bob = await keys.create(tenant, "alice"), await keys.create(tenant, "bob")
    async with contextlib.AsyncExitStack() as stack:
        as_alice = await stack.enter_async_context(shared_app.as_caller(bearer(alice.key)))
        as_bob = await stack.enter_async_context(shared_app.as_caller(bearer(bob.key)))
        yield (alice, as_alice.client), (bob, as_bob.client)


async def ask(jobs: JobManager, tenant: str, kind: str, **payload: Any) -> str:
    return str(await ask_for(jobs, tenant, kind, **payload))


async def test_claims_takeovers_and_if_match_over_http(
    people: Any,
    job_manager: JobManager,
    tenant: str,
    asking_worker: str,  # noqa: F811
) -> None:
    kind = asking_worker
    (alice, as_alice), (bob, as_bob) = people
    alice_id, bob_id = f"api-key:{alice.id}", f"api-key:{bob.id}"
    job_id = await ask(job_manager, tenant, kind, timeout=600)
    path = f"/jobs/{job_id}/input"

    inbox = await as_alice.get("/inbox")
    assert inbox.status_code == 200, inbox.text
    [item] = [i for i in inbox.json()["items"] if i["job_id"] == job_id]
    assert (item["kind"], item["key"], item["text"], item["assignee"]) == (
        kind,
        "q1",
        "Approve?",
        None,
    )
    assert item["schema"]["required"] == ["approve"] and item["claimed_by"] is None
    assert_utc(item["deadline"])
    version = item["version"]
    question = await as_bob.get(path)
    assert question.status_code == 200 and question.headers["etag"] == f'"{version}"'

    claimed = await as_alice.post(f"{path}/claim")
    assert claimed.status_code == 200, claimed.text
    assert claimed.json()["claimed_by"] == alice_id and claimed.headers["etag"] == f'"{version}"'
    assert_utc(claimed.json()["claim_expires_at"])
    seen = (await as_bob.get("/inbox")).json()["items"]
    assert [i["claimed_by"] for i in seen if i["job_id"] == job_id] == [alice_id]

    refused = assert_problem(await as_bob.post(path, json={"answer": YES}), 409, "question_claimed")
    assert refused["claimed_by"] == alice_id
    assert_problem(await as_bob.post(f"{path}/claim", json={}), 409, "question_claimed")
    taken = await as_bob.post(f"{path}/claim", json={"takeover": True})
    assert taken.status_code == 200 and taken.json()["claimed_by"] == bob_id
    assert_problem(await as_alice.post(f"{path}/release"), 409, "question_claimed")
    assert_problem(await as_alice.post(path, json={"answer": YES}), 409, "question_claimed")

    stale = await as_bob.post(path, json={"answer": YES}, headers={"If-Match": f'"{version - 1}"'})
    changed = assert_problem(stale, 412, "precondition_failed")
    assert changed["current_version"] == version
    malformed = await as_bob.post(path, json={"answer": YES}, headers={"If-Match": "v1"})
    assert_problem(malformed, 400, "invalid_request")
    answered = await as_bob.post(path, json={"answer": YES}, headers={"If-Match": f'"{version}"'})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "queued"
    assert_problem(await as_bob.post(f"{path}/claim"), 409, "not_waiting_for_input")
    assert_problem(await as_bob.get(path), 409, "not_waiting_for_input")

    # the audit trail, on the job's event stream
    await job_status(as_bob, job_id, ["succeeded"], **NO_CACHE)
    stream = await as_alice.get(f"/jobs/{job_id}/events")
    events = [(e.event, e.data["data"]) for e in parse_sse(stream.text)]
    trail = [(t, d) for t, d in events if t.startswith("question_") or t == "answered"]
    assert [t for t, _ in trail] == ["question_claimed", "question_taken_over", "answered"]
    assert trail[0][1]["by"] == alice_id
    assert trail[1][1]["by"] == bob_id and trail[1][1]["from"] == alice_id
    assert trail[2][1]["answered_by"] == bob_id
    assert all(d["replica"] == job_manager.replica for _, d in trail[:2])


async def test_the_inbox_pages_filters_and_releases(
    people: Any,
    job_manager: JobManager,
    tenant: str,
    asking_worker: str,  # noqa: F811
) -> None:
    kind = asking_worker
    (_, as_alice), _ = people
    first = await ask(job_manager, tenant, kind, timeout=100)
    second = await ask(job_manager, tenant, kind, timeout=200)
    for_managers = await ask(job_manager, tenant, kind, timeout=50, assignee="role:manager")

    page = await as_alice.get("/inbox", params={"kind": kind, "limit": 1})
    assert page.status_code == 200, page.text
    assert [i["job_id"] for i in page.json()["items"]] == [first]
    cursor = page.json()["next_cursor"]
    rest = await as_alice.get("/inbox", params={"kind": kind, "cursor": cursor})
    assert [i["job_id"] for i in rest.json()["items"]] == [second]
    assert rest.json()["next_cursor"] is None
    assert for_managers not in {i["job_id"] for i in rest.json()["items"]}  # alice has no roles
    filtered = await as_alice.get("/inbox", params={"assignee": "role:manager"})
    assert filtered.json()["items"] == []
    assert_problem(
        await as_alice.get("/inbox", params={"assignee": "team:x"}), 422, "validation_error"
    )
    assert_problem(await as_alice.get("/inbox", params={"cursor": "x"}), 422, "validation_error")

    await as_alice.post(f"/jobs/{first}/input/claim")
    released = await as_alice.post(f"/jobs/{first}/input/release")
    assert released.status_code == 200 and released.json()["claimed_by"] is None
    events = [e.type for e in await job_manager.events(first, tenant=tenant)]
    assert events[-2:] == ["question_claimed", "question_released"]
