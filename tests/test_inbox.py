"""The work queue of questions, in-process against a real Postgres: assignees and the inbox,
claims (held, renewed, taken over, released, expired), question versions, escalation at a
deadline, the audit trail in the events, and the metrics.

Every test has its own tenant and job kind; questions are asked by a real in-process worker
(``ctx.ask``), and every wait polls against a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from jobkeeper import Escalate, Question
from jobkeeper.domain.questions import addressees, build_prompt, same_json
from jobkeeper.domain.status import JobStatus
from jobkeeper.errors import (
    InvalidRequest,
    NotWaitingForInput,
    QuestionChanged,
    QuestionClaimed,
)
from jobkeeper.maintenance import Sweeper
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.worker import JobContext, TaskRegistry
from support import eventually, make_worker
from test_hitl import APPROVAL, WORKER_SETTINGS, asking, finished, new_kind, running

YES = {"approve": True}


def asker(kind: str) -> TaskRegistry:
    """One question, shaped by the payload: assignee, timeout, on_timeout (or an escalation)."""
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> dict[str, Any]:
        on_timeout: Any = payload.get("on_timeout", "fail")
        if "escalate_to" in payload:
            on_timeout = Escalate(
                to=payload["escalate_to"],
                after=timedelta(seconds=payload["after"]),
                then=payload.get("then", "fail"),
            )
        answer = await ctx.ask(
            payload.get("text", "Approve?"),
            schema=APPROVAL,
            timeout=payload.get("timeout"),
            on_timeout=on_timeout,
            default=payload.get("default"),
            assignee=payload.get("assignee"),
        )
        return {"answer": answer}

    return tasks


@pytest.fixture
async def asking_worker(job_manager: JobManager) -> AsyncIterator[str]:
    """A worker for a fresh kind of ``asker``; yields the kind."""
    kind = new_kind("inbox")
    async with running(make_worker(job_manager, asker(kind), **WORKER_SETTINGS)):
        yield kind


async def ask(jobs: JobManager, tenant: str, kind: str, **payload: Any) -> UUID:
    """Submit a job that asks; return its id once it waits for input."""
    job = await jobs.submit(tenant, kind, payload)
    await asking(jobs, job.id, tenant, "q1")
    return job.id


async def history(jobs: JobManager, job_id: UUID, tenant: str) -> list[tuple[str, Any]]:
    return [(e.type, e.data) for e in await jobs.events(job_id, tenant=tenant)]


# --- the inbox -----------------------------------------------------------------------------------


async def test_the_inbox_shows_what_the_caller_may_answer_oldest_deadline_first(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    kind = asking_worker
    ids = {
        "anyone, late": await ask(job_manager, tenant, kind, timeout=300),
        "alice, soon": await ask(job_manager, tenant, kind, timeout=100, assignee="user:alice"),
        "underwriters": await ask(
            job_manager, tenant, kind, timeout=200, assignee="role:underwriter"
        ),
        "alice, no deadline": await ask(job_manager, tenant, kind, assignee="user:alice"),
        "bob": await ask(job_manager, tenant, kind, timeout=50, assignee="user:bob"),
        "managers": await ask(job_manager, tenant, kind, timeout=50, assignee="role:manager"),
    }
    names = {job_id: name for name, job_id in ids.items()}

    page = await job_manager.inbox(tenant, principal="user:alice", roles={"underwriter"})
    assert [names[q.job_id] for q in page.items] == [
        "alice, soon",
        "underwriters",
        "anyone, late",
        "alice, no deadline",
    ]
    assert page.next_cursor is None
    # a bare principal is a user; another tenant sees none of it
    bare = await job_manager.inbox(tenant, principal="alice")
    assert [names[q.job_id] for q in bare.items] == [
        "alice, soon",
        "anyone, late",
        "alice, no deadline",
    ]
    assert (await job_manager.inbox(f"{tenant}-other", principal="alice")).items == ()

    first = page.items[0]
    job = await job_manager.get(first.job_id, tenant=tenant, consistency="strong")
    assert (first.kind, first.key, first.text, first.assignee) == (
        kind,
        "q1",
        "Approve?",
        "user:alice",
    )
    assert (
        same_json(first.schema, APPROVAL) and first.version == job.question_version == job.version
    )
    assert first.deadline == job.input_deadline and first.deadline is not None
    assert first.claimed_by is None and first.claim_expires_at is None
    assert first.asked_at is not None and first.asked_at <= first.deadline

    # keyset pages of one visit every question once, in the same order
    seen: list[UUID] = []
    cursor = None
    while True:
        part = await job_manager.inbox(
            tenant, principal="user:alice", roles=["underwriter", "manager"], limit=2, cursor=cursor
        )
        seen += [q.job_id for q in part.items]
        if part.next_cursor is None:
            break
        cursor = part.next_cursor
    assert [names[i] for i in seen] == [
        "managers",
        "alice, soon",
        "underwriters",
        "anyone, late",
        "alice, no deadline",
    ]
    # filters
    only = await job_manager.inbox(
        tenant, principal="user:alice", roles={"underwriter"}, assignee="role:underwriter"
    )
    assert [names[q.job_id] for q in only.items] == ["underwriters"]
    other_kind = await job_manager.inbox(tenant, principal="user:alice", kind="no.such-kind")
    assert other_kind.items == ()
    for bad in ({"limit": 0}, {"cursor": "!!"}, {"assignee": "group:x"}, {"kind": ""}):
        with pytest.raises(InvalidRequest):
            await job_manager.inbox(tenant, principal="user:alice", **bad)
    with pytest.raises(InvalidRequest):
        await job_manager.inbox(tenant, principal="")


def test_addressees_and_what_a_question_may_be() -> None:
    assert addressees("alice", {"b", "a"}) == ["alice", "user:alice", "role:a", "role:b"]
    assert addressees("api-key:123", ()) == ["api-key:123"]
    common: dict[str, Any] = {"key": "q1", "text": "Go?", "schema": None, "choices": None}
    prompt = build_prompt(
        **common,
        timeout=10,
        on_timeout=Escalate("role:a", 5, then=Escalate("user:b", timedelta(minutes=1))),
        default=None,
        assignee="user:c",
    )
    assert prompt["assignee"] == "user:c" and prompt["on_timeout"] == "fail"
    assert prompt["escalate"] == [{"to": "role:a", "after": 5.0}, {"to": "user:b", "after": 60.0}]
    for bad in (
        {"timeout": 10, "on_timeout": "fail", "assignee": "alice"},
        {"timeout": 10, "on_timeout": "fail", "assignee": "role:"},
        {"timeout": None, "on_timeout": Escalate("role:a", 5)},  # an escalation needs a deadline
        {"timeout": 10, "on_timeout": Escalate("role:a", 0)},
        {"timeout": 10, "on_timeout": Escalate("nobody", 5)},
        {"timeout": 10, "on_timeout": Escalate("role:a", 5, then="explode")},  # type: ignore[arg-type]
    ):
        with pytest.raises(InvalidRequest):
            build_prompt(**common, default=None, **{"assignee": None, **bad})


# --- claims --------------------------------------------------------------------------------------


async def test_a_claim_holds_the_question_until_answered_taken_over_or_released(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    job_id = await ask(job_manager, tenant, asking_worker, timeout=300)
    held = await job_manager.claim_question(job_id, tenant, "user:alice", ttl=120)
    assert held.claimed_by == "user:alice" and held.claim_expires_at is not None
    # everyone sees who holds it
    [seen] = (await job_manager.inbox(tenant, principal="user:bob")).items
    assert (seen.claimed_by, seen.claim_expires_at) == ("user:alice", held.claim_expires_at)

    before = await job_manager.get(job_id, tenant=tenant, consistency="strong")
    with pytest.raises(QuestionClaimed) as refused:
        await job_manager.answer(job_id, tenant=tenant, answer=YES, answered_by="user:bob")
    assert refused.value.code == "question_claimed" and refused.value.claimed_by == "user:alice"
    with pytest.raises(QuestionClaimed):
        await job_manager.answer(job_id, tenant=tenant, answer=YES)  # nobody: refused too
    with pytest.raises(QuestionClaimed):
        await job_manager.claim_question(job_id, tenant, "user:bob")
    with pytest.raises(QuestionClaimed):
        await job_manager.release_question(job_id, tenant, "user:bob")
    after = await job_manager.get(job_id, tenant=tenant, consistency="strong")
    assert after.version == before.version  # refusals change nothing

    renewed = await job_manager.claim_question(job_id, tenant, "user:alice", ttl=300)
    assert renewed.claim_expires_at is not None and renewed.claim_expires_at > held.claim_expires_at
    taken = await job_manager.claim_question(job_id, tenant, "user:bob", takeover=True)
    assert taken.claimed_by == "user:bob" and taken.version == held.version
    with pytest.raises(QuestionClaimed):
        await job_manager.answer(job_id, tenant=tenant, answer=YES, answered_by="user:alice")
    answered = await job_manager.answer(
        job_id, tenant=tenant, answer=YES, answered_by="user:bob", expected_version=held.version
    )
    assert answered.status is JobStatus.QUEUED and answered.claimed_by is None
    assert answered.question_version is None and answered.claim_expires_at is None
    with pytest.raises(NotWaitingForInput):
        await job_manager.claim_question(job_id, tenant, "user:alice")

    done = await finished(job_manager, job_id, tenant)
    assert done.result == {"answer": YES}
    replica = job_manager.replica
    trail = [(t, d) for t, d in await history(job_manager, job_id, tenant) if t != "claimed"]
    assert [t for t, _ in trail] == [
        "submitted",
        "asked",
        "question_claimed",
        "question_claimed",
        "question_taken_over",
        "answered",
        "succeeded",
    ]
    first, renewal, takeover, answer = (d for _, d in trail[2:6])
    assert first["by"] == "user:alice" and first["renewed"] is False and first["from"] is None
    assert renewal["renewed"] is True and renewal["version"] == held.version
    assert takeover["by"] == "user:bob" and takeover["from"] == "user:alice"
    assert answer == {"key": "q1", "answered_by": "user:bob", "replica": replica}
    assert all(d["replica"] == replica for d in (first, renewal, takeover))


async def test_a_release_or_an_expiry_frees_the_question(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    job_id = await ask(job_manager, tenant, asking_worker)
    await job_manager.claim_question(job_id, tenant, "user:alice")
    released = await job_manager.release_question(job_id, tenant, "user:alice")
    assert released.claimed_by is None
    again = await job_manager.release_question(job_id, tenant, "user:alice")  # holds nothing
    assert again.claimed_by is None and again.version == released.version
    events = [t for t, _ in await history(job_manager, job_id, tenant)]
    assert events[-2:] == ["question_claimed", "question_released"]

    await job_manager.claim_question(job_id, tenant, "user:alice", ttl=0.3)

    async def free() -> Question | None:
        [question] = (await job_manager.inbox(tenant, principal="user:bob")).items
        return question if question.claimed_by is None else None

    await eventually(free, what="the claim to expire")
    await job_manager.claim_question(job_id, tenant, "user:bob")  # no takeover needed
    for bad_ttl in (0, -1, 3601, True):
        with pytest.raises(InvalidRequest):
            await job_manager.claim_question(job_id, tenant, "user:bob", ttl=bad_ttl)


async def test_of_two_principals_claiming_at_once_exactly_one_wins(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    job_ids = [await ask(job_manager, tenant, asking_worker) for _ in range(6)]
    for job_id in job_ids:
        outcomes = await asyncio.gather(
            job_manager.claim_question(job_id, tenant, "user:alice"),
            job_manager.claim_question(job_id, tenant, "user:bob"),
            return_exceptions=True,
        )
        won = [o for o in outcomes if isinstance(o, Question)]
        lost = [o for o in outcomes if isinstance(o, QuestionClaimed)]
        assert len(won) == 1 and len(lost) == 1, outcomes
        assert lost[0].claimed_by == won[0].claimed_by
        claims = [
            t for t, _ in await history(job_manager, job_id, tenant) if t.startswith("question_")
        ]
        assert claims == ["question_claimed"]


async def test_an_answer_to_a_question_that_changed_is_refused(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    job_id = await ask(job_manager, tenant, asking_worker)
    [question] = (await job_manager.inbox(tenant, principal="user:alice")).items
    with pytest.raises(QuestionChanged) as changed:
        await job_manager.answer(
            job_id, tenant=tenant, answer=YES, expected_version=question.version - 1
        )
    assert changed.value.code == "precondition_failed"
    assert changed.value.current_version == question.version
    for bad in (0, True, "1"):
        with pytest.raises(InvalidRequest):
            await job_manager.answer(job_id, tenant=tenant, answer=YES, expected_version=bad)  # type: ignore[arg-type]
    unchanged = await job_manager.get(job_id, tenant=tenant, consistency="strong")
    assert unchanged.status is JobStatus.WAITING_INPUT and unchanged.version == question.version
    await job_manager.answer(job_id, tenant=tenant, answer=YES, expected_version=question.version)


# --- escalation ----------------------------------------------------------------------------------


async def test_a_question_escalates_at_its_deadline_then_defaults(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    metrics = Metrics(job_manager)
    job_id = await ask(
        job_manager,
        tenant,
        asking_worker,
        timeout=0.3,
        assignee="user:alice",
        escalate_to="role:manager",
        after=0.4,
        then="default",
        default={"approve": False},
    )
    [read] = (await job_manager.inbox(tenant, principal="user:alice")).items
    await job_manager.claim_question(job_id, tenant, "user:alice")
    async with running(sweeper=Sweeper(job_manager, interval=0.05)):
        escalated = await eventually(
            lambda: _escalated(job_manager, job_id, tenant), what="the question to escalate"
        )
        done = await finished(job_manager, job_id, tenant)
    # while escalated: the manager's, no longer alice's; her claim and version ended
    assert escalated.assignee == "role:manager" and escalated.claimed_by is None
    assert escalated.version > read.version
    assert done.status is JobStatus.SUCCEEDED and done.result == {"answer": {"approve": False}}
    assert done.answers["q1"]["timed_out"] is True

    trail = await history(job_manager, job_id, tenant)
    types = [t for t, _ in trail]
    assert types[types.index("asked") :] == [
        "asked",
        "question_claimed",
        "escalated",
        "answered",
        "claimed",
        "succeeded",
    ]
    step = dict(trail[types.index("escalated")][1])
    assert step["from"] == "user:alice" and step["to"] == "role:manager"
    assert step["replica"] == job_manager.replica and step["key"] == "q1"
    timed_out = trail[types.index("escalated") + 1][1]
    assert timed_out["timed_out"] is True and timed_out["replica"] == job_manager.replica

    assert metrics.escalated.labels(asking_worker)._value.get() == 1
    assert metrics.timed_out.labels(asking_worker, "defaulted")._value.get() == 1


async def _escalated(jobs: JobManager, job_id: UUID, tenant: str) -> Question | None:
    page = await jobs.inbox(tenant, principal="user:carol", roles={"manager"})
    found = [q for q in page.items if q.job_id == job_id and q.assignee == "role:manager"]
    if found:  # escalated: no longer in the inbox of a user who is not a manager
        assert not [
            q
            for q in (await jobs.inbox(tenant, principal="user:alice")).items
            if q.job_id == job_id
        ]
    return found[0] if found else None


async def test_an_answer_from_before_an_escalation_is_refused_and_metrics_count_answers(
    job_manager: JobManager, tenant: str, asking_worker: str
) -> None:
    metrics = Metrics(job_manager)
    job_id = await ask(
        job_manager, tenant, asking_worker, timeout=0.2, escalate_to="role:manager", after=300
    )
    [read] = (await job_manager.inbox(tenant, principal="user:alice")).items
    await metrics.refresh()
    waiting = metrics.registry.get_sample_value(
        "jobkeeper_questions_waiting", {"tenant": tenant, "kind": asking_worker}
    )
    assert waiting == 1
    async with running(sweeper=Sweeper(job_manager, interval=0.05)):
        escalated = await eventually(
            lambda: _escalated(job_manager, job_id, tenant), what="the question to escalate"
        )
    with pytest.raises(QuestionChanged):
        await job_manager.answer(job_id, tenant=tenant, answer=YES, expected_version=read.version)
    await job_manager.answer(
        job_id,
        tenant=tenant,
        answer=YES,
        answered_by="user:carol",
        expected_version=escalated.version,
    )
    count = metrics.registry.get_sample_value(
        "jobkeeper_question_answer_seconds_count", {"kind": asking_worker}
    )
    assert count == 1
    await metrics.refresh()
    assert (
        metrics.registry.get_sample_value(
            "jobkeeper_questions_waiting", {"tenant": tenant, "kind": asking_worker}
        )
        is None
    )
