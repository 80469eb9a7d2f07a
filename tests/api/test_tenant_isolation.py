"""Tenant isolation, as a property: whatever tenant B's job looks like (queued, running, waiting
for input, finished; warm in the replica's cache or not) and however tenant A asks, A's key reads,
lists, cancels, answers and streams nothing of it. Every endpoint says 404 ``job_not_found``
(never 403, which would confirm the job exists), and B's job is unchanged afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobkeeper.api.auth import ApiKeys
from jobkeeper.domain.questions import build_prompt
from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager

from .support import Served, assert_problem, bearer

STATES = ["queued", "running", "waiting_input", "cancelled", "succeeded"]
# tenant B's name, made from A's: near misses must not match
NEAR_MISSES: list[Callable[[str], str]] = [
    str.upper,
    lambda a: a + " ",
    lambda a: " " + a,
    lambda a: a + "x",
    lambda a: a[:-1],
]

answers = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
requests = st.fixed_dictionaries(
    {
        "no_cache": st.booleans(),
        "if_none_match": st.sampled_from([None, "*", '"1"', '"2"', '"3"']),
        "list_status": st.sampled_from([None, *[s.value for s in JobStatus]]),
        "list_by_kind": st.booleans(),
        "answer": st.one_of(st.just({"approve": True}), answers),
        "question_key": st.sampled_from([None, "q1"]),
        "last_event_id": st.sampled_from([None, "0", "1", "2"]),
    }
)


async def make_job(manager: JobManager, tenant: str, state: str) -> str:
    """A job of ``tenant`` in ``state`` (a kind of its own, so no worker takes it)."""
    kind = f"iso.{uuid.uuid4().hex[:12]}"
    job = await manager.submit(tenant, kind, {"secret": "of " + tenant})
    if state == "cancelled":
        await manager.cancel(job.id, tenant=tenant)
    elif state != "queued":
        (lease,) = await manager.claim(uuid.uuid4(), kinds=[kind], limit=1, lease_seconds=300)
        if state == "waiting_input":
            prompt = build_prompt(
                key="q1",
                text="Approve?",
                schema={"type": "object"},
                choices=None,
                timeout=None,
                on_timeout="fail",
                default=None,
            )
            assert await manager.ask(lease, prompt) is not None
        elif state == "succeeded":
            assert await manager.mark_succeeded([(lease, '{"ok": true}', None)])
    return str(job.id)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    state=st.sampled_from(STATES),
    near_miss=st.sampled_from(range(len(NEAR_MISSES))),
    warm=st.booleans(),
    ask=requests,
)
async def test_a_tenant_sees_nothing_of_another_tenants_job(
    shared_app: Served,
    job_manager: JobManager,
    state: str,
    near_miss: int,
    warm: bool,
    ask: dict[str, Any],
) -> None:
    tenant_a = f"iso-{uuid.uuid4().hex[:10]}"
    tenant_b = NEAR_MISSES[near_miss](tenant_a)
    keys = ApiKeys(job_manager)
    key_a, key_b = await keys.create(tenant_a), await keys.create(tenant_b)
    job_id = await make_job(job_manager, tenant_b, state)
    before = await job_manager.get(job_id, tenant=tenant_b, consistency="strong")
    assert before.status.value == state

    async with shared_app.as_caller(bearer(key_b.key)) as b:
        if warm:  # B's own read puts the job in this replica's cache
            assert (await b.client.get(f"/jobs/{job_id}")).status_code == 200

    async with shared_app.as_caller(bearer(key_a.key)) as a:
        api: httpx.AsyncClient = a.client
        path = f"/jobs/{job_id}"
        headers = {"Cache-Control": "no-cache"} if ask["no_cache"] else {}
        if ask["if_none_match"]:
            headers["If-None-Match"] = ask["if_none_match"]
        attempts = [
            await api.get(path, headers=headers),
            await api.post(f"{path}/cancel"),
            await api.post(
                f"{path}/input",
                json={"answer": ask["answer"], "question_key": ask["question_key"]},
            ),
            await api.get(
                f"{path}/events",
                headers={"Last-Event-ID": ask["last_event_id"]} if ask["last_event_id"] else {},
            ),
        ]
        for response in attempts:
            assert_problem(response, 404, "job_not_found")
            assert job_id in response.json()["detail"]
            assert "secret" not in response.text

        params: dict[str, Any] = {"limit": 500}
        if ask["list_status"]:
            params["status"] = ask["list_status"]
        if ask["list_by_kind"]:
            params["kind"] = before.kind
        listing = await api.get("/jobs", params=params)
        assert listing.status_code == 200
        assert listing.json() == {"items": [], "next_cursor": None}

    after = await job_manager.get(job_id, tenant=tenant_b, consistency="strong")
    assert after == before
    async with shared_app.as_caller(bearer(key_b.key)) as b:
        mine = await b.client.get(f"/jobs/{job_id}", headers={"Cache-Control": "no-cache"})
        assert mine.status_code == 200
        assert mine.json()["version"] == before.version
