"""Human in the loop, in-process against a real Postgres: questions, answers, deadlines, watch.

The replay model under test: ``ctx.ask`` parks the job in ``waiting_input`` (no lease, no worker
slot); an answer queues it again and the handler is re-invoked from the start, where ``ctx.ask``
returns the stored answers (by key: ``q1``, ``q2``... or an explicit one) and ``ctx.checkpoint``
returns stored side effects.

Every test has its own tenant and its own job kinds (the module shares one database and workers
claim by kind), runs its workers (and sweeper) as asyncio tasks stopped in a ``finally``, and
polls the database against a generous deadline instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any, Literal
from uuid import UUID, uuid4

import asyncpg
import pytest

from jobkeeper.domain.status import TERMINAL_EVENTS, JobStatus
from jobkeeper.domain.values import Job, JobEvent
from jobkeeper.errors import InvalidAnswer, JobFinished, JobNotFound, NotWaitingForInput
from jobkeeper.maintenance import Sweeper
from jobkeeper.manager import JobManager
from jobkeeper.worker import JobContext, TaskRegistry, Worker
from support import eventually, make_worker, terminate_feeds

OnTimeout = Literal["fail", "cancel", "default"]

DEADLINE = 15.0  # the bound of every wait; the expected times are well under a second
STOP_TIMEOUT = 15.0
# how this module's in-process workers differ from make_worker's: two slots, a long lease
WORKER_SETTINGS: dict[str, Any] = {
    "concurrency": 2,
    "lease_seconds": 10.0,
    "progress_interval": 0.05,
}

APPROVAL: dict[str, Any] = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approve"],
    "additionalProperties": False,
}


# --- helpers -------------------------------------------------------------------------------------


def new_kind(name: str) -> str:
    return f"hitl-{uuid4().hex[:10]}.{name}"


@contextlib.asynccontextmanager
async def running(*workers: Worker, sweeper: Sweeper | None = None) -> AsyncIterator[None]:
    """Run ``workers`` (and a ``sweeper``) as tasks; stop them and check they stopped cleanly."""
    tasks = [asyncio.create_task(w.run(), name=f"worker-{w.id}") for w in workers]
    sweeping = None if sweeper is None else asyncio.create_task(sweeper.run(), name="sweeper")
    problems: list[str] = []
    try:
        yield
    finally:
        if sweeping is not None:
            sweeping.cancel()
            await asyncio.gather(sweeping, return_exceptions=True)
        for worker in workers:
            worker.stop()
            worker.stop()  # the second stop releases at once: no grace period in tests
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
            for task in pending:
                task.cancel()
                problems.append(f"{task.get_name()} did not stop within {STOP_TIMEOUT} s")
            await asyncio.gather(*pending, return_exceptions=True)
            for task in tasks:
                if task not in pending and not task.cancelled() and task.exception():
                    problems.append(f"{task.get_name()} crashed: {task.exception()!r}")
    if problems:
        pytest.fail("; ".join(problems))


async def fresh(manager: JobManager, job_id: UUID, tenant: str) -> Job:
    return await manager.get(job_id, tenant=tenant, consistency="strong")


async def reach(manager: JobManager, job_id: UUID, tenant: str, *statuses: JobStatus) -> Job:
    async def check() -> Job | None:
        job = await fresh(manager, job_id, tenant)
        return job if job.status in statuses else None

    return await eventually(
        check, timeout=DEADLINE, what=f"job {job_id} to become one of {[s.value for s in statuses]}"
    )


async def asking(manager: JobManager, job_id: UUID, tenant: str, key: str) -> Job:
    """The job once it waits for input on question ``key``."""

    async def check() -> Job | None:
        job = await fresh(manager, job_id, tenant)
        if job.terminal:
            pytest.fail(f"job {job_id} ended {job.status} ({job.error}) instead of asking {key}")
        waiting = job.status is JobStatus.WAITING_INPUT and job.prompt["key"] == key
        return job if waiting else None

    return await eventually(check, timeout=DEADLINE, what=f"job {job_id} to ask {key!r}")


async def finished(manager: JobManager, job_id: UUID, tenant: str) -> Job:
    async def check() -> Job | None:
        job = await fresh(manager, job_id, tenant)
        return job if job.terminal else None

    return await eventually(check, timeout=DEADLINE, what=f"job {job_id} to finish")


async def types(manager: JobManager, job_id: UUID, tenant: str) -> list[str]:
    return [e.type for e in await manager.events(job_id, tenant=tenant)]


def assert_contiguous(events: list[JobEvent] | tuple[JobEvent, ...], first: int = 1) -> None:
    assert [e.seq for e in events] == list(range(first, first + len(events))), [
        (e.seq, e.type) for e in events
    ]


def question_registry(kind: str) -> TaskRegistry:
    """One question whose shape the payload's ``mode`` picks (see ``QUESTIONS``)."""
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> dict[str, Any]:
        text, options = QUESTIONS[payload["mode"]]
        return {"answer": await ctx.ask(text, **options)}

    return tasks


QUESTIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "schema": ("Approve the loan?", {"schema": APPROVAL}),
    "choices": ("Which colour?", {"choices": ["red", "green"]}),
    "binary": ("Zero or one?", {"choices": [0, 1]}),
    "pair": ("Which pair?", {"choices": [["a", "b"], ["c", "d"]]}),
    "number": ("How much?", {"schema": {"type": "number"}}),
}


# --- 1. ask, park, answer, resume ----------------------------------------------------------------


async def test_ask_parks_without_a_slot_and_an_answer_resumes_it(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    ask_kind, other_kind = new_kind("ask"), new_kind("other")
    tasks = TaskRegistry()
    schema = {"type": "string", "minLength": 1}

    @tasks.task(ask_kind)
    async def review(ctx: JobContext, payload: Any) -> dict[str, Any]:
        answer = await ctx.ask("Approve the loan?", schema=schema, choices=["approve", "reject"])
        return {"answer": answer}

    @tasks.task(other_kind)
    async def other(ctx: JobContext, payload: Any) -> str:
        return "ran while the first job waited"

    worker = make_worker(job_manager, tasks, **(WORKER_SETTINGS | {"concurrency": 1}))
    async with running(worker):
        job = await job_manager.submit(tenant, ask_kind, {"loan": 1})
        waiting = await asking(job_manager, job.id, tenant, "q1")
        assert {k: v for k, v in waiting.prompt.items() if k != "asked_at"} == {
            "key": "q1",
            "text": "Approve the loan?",
            "schema": schema,
            "choices": ("approve", "reject"),  # stored JSON is deep-frozen: arrays are tuples
            "timeout": None,
            "on_timeout": "fail",
            "default": None,
            "assignee": None,
            "escalate": (),
        }
        assert datetime.fromisoformat(waiting.prompt["asked_at"]) <= waiting.updated_at
        assert waiting.attempts == 0  # asking does not count as an attempt
        lease = await db.fetchrow(
            "SELECT lease_token, lease_expires_at, worker_id, input_deadline FROM jobs"
            " WHERE id = $1",
            job.id,
        )
        assert lease is not None and dict(lease) == {
            "lease_token": None,
            "lease_expires_at": None,
            "worker_id": None,
            "input_deadline": None,  # no timeout, no deadline
        }

        async def slot_free() -> bool:
            return not worker.running_jobs

        await eventually(slot_free, timeout=DEADLINE, what="the worker's only slot to be free")
        second = await job_manager.submit(tenant, other_kind, {})
        done = await finished(job_manager, second.id, tenant)
        assert done.status is JobStatus.SUCCEEDED
        assert (await fresh(job_manager, job.id, tenant)).status is JobStatus.WAITING_INPUT

        answered = await job_manager.answer(
            job.id, tenant=tenant, answer="approve", answered_by="alice"
        )
        assert answered.status is JobStatus.QUEUED and answered.prompt is None
        final = await finished(job_manager, job.id, tenant)

    assert final.status is JobStatus.SUCCEEDED
    assert final.result == {"answer": "approve"}
    assert final.attempts == 1
    entry = final.answers["q1"]
    assert entry["answer"] == "approve" and entry["answered_by"] == "alice"
    assert datetime.fromisoformat(entry["answered_at"]) == answered.updated_at
    history = await job_manager.events(job.id, tenant=tenant)
    assert [e.type for e in history] == [
        "submitted",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]
    assert_contiguous(history)
    assert history[-1].seq == final.version
    assert history[2].data == waiting.prompt
    assert history[3].data == {"key": "q1", "answered_by": "alice", "replica": job_manager.replica}
    assert [e.data["attempt"] for e in history if e.type == "claimed"] == [1, 1]


# --- 2. several questions, explicit keys, checkpoints --------------------------------------------


async def test_questions_in_sequence_replay_answers_and_checkpoints_run_once(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("sequence")
    calls: Counter[str] = Counter()
    tasks = TaskRegistry()

    async def create_order() -> dict[str, Any]:
        calls["create_order"] += 1
        return {"order": 42}

    @tasks.task(kind)
    async def flow(ctx: JobContext, payload: Any) -> dict[str, Any]:
        calls["before_first_ask"] += 1  # no checkpoint: runs again on every re-run
        order = await ctx.checkpoint("create_order", create_order)
        amount = await ctx.ask("How much?", schema={"type": "integer", "minimum": 1})
        currency = await ctx.ask("Which currency?", choices=["EUR", "USD"])
        note = await ctx.ask("Any note?", schema={"type": "string"}, key="note")
        return {"order": order, "amount": amount, "currency": currency, "note": note}

    async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {})
        await asking(job_manager, job.id, tenant, "q1")
        await job_manager.answer(job.id, tenant=tenant, answer=100)
        second = await asking(job_manager, job.id, tenant, "q2")
        assert second.prompt["choices"] == ("EUR", "USD")
        assert dict(second.answers["q1"]) | {"answered_at": None, "asked_at": None} == {
            "answer": 100,
            "answered_by": None,
            "answered_at": None,
            "asked_at": None,
        }
        await job_manager.answer(job.id, tenant=tenant, answer="EUR", question_key="q2")
        third = await asking(job_manager, job.id, tenant, "note")
        with pytest.raises(NotWaitingForInput):  # the open question is "note", not "q3"
            await job_manager.answer(job.id, tenant=tenant, answer="x", question_key="q3")
        assert (await fresh(job_manager, job.id, tenant)).version == third.version
        await job_manager.answer(job.id, tenant=tenant, answer="rush it", question_key="note")
        final = await finished(job_manager, job.id, tenant)

    assert final.status is JobStatus.SUCCEEDED, final.error
    assert final.result == {
        "order": {"order": 42},
        "amount": 100,
        "currency": "EUR",
        "note": "rush it",
    }
    assert set(final.answers) == {"q1", "q2", "note"}
    assert final.checkpoints == {"create_order": {"order": 42}}
    assert final.attempts == 1
    runs = (await types(job_manager, job.id, tenant)).count("claimed")
    assert runs == 4  # the first run and one re-run per answer
    assert calls == {"create_order": 1, "before_first_ask": runs}
    assert await types(job_manager, job.id, tenant) == [
        "submitted",
        "claimed",
        "checkpoint",
        "asked",
        "answered",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]


# --- 3. sync handlers ---------------------------------------------------------------------------


async def test_sync_handler_asks_and_checkpoints_the_same_way(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("sync")
    lock = threading.Lock()
    calls: Counter[str] = Counter()
    threads: set[str] = set()
    tasks = TaskRegistry()

    def reserve() -> dict[str, Any]:
        with lock:
            calls["reserve"] += 1
        return {"reservation": "r-1"}

    @tasks.task(kind)
    def flow(ctx: JobContext, payload: Any) -> dict[str, Any]:
        with lock:
            calls["runs"] += 1
            threads.add(threading.current_thread().name)
        reservation = ctx.checkpoint_sync("reserve", reserve)
        colour = ctx.ask_sync("Which colour?", choices=["red", "green"])
        approval = ctx.ask_sync("Approve?", schema=APPROVAL, key="approval")
        return {"reservation": reservation, "colour": colour, "approval": approval}

    async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {})
        await asking(job_manager, job.id, tenant, "q1")
        await job_manager.answer(job.id, tenant=tenant, answer="green")
        await asking(job_manager, job.id, tenant, "approval")
        await job_manager.answer(
            job.id, tenant=tenant, answer={"approve": True}, question_key="approval"
        )
        final = await finished(job_manager, job.id, tenant)

    assert final.status is JobStatus.SUCCEEDED, final.error
    assert final.result == {
        "reservation": {"reservation": "r-1"},
        "colour": "green",
        "approval": {"approve": True},
    }
    assert calls == {"reserve": 1, "runs": 3}
    assert threading.main_thread().name not in threads
    assert final.attempts == 1
    assert await types(job_manager, job.id, tenant) == [
        "submitted",
        "claimed",
        "checkpoint",
        "asked",
        "answered",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]


# --- 4. answer validation ------------------------------------------------------------------------


async def test_answers_are_validated_and_refusals_change_nothing(
    job_manager: JobManager, tenant: str
) -> None:
    kind, idle_kind = new_kind("validate"), new_kind("idle")
    async with running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)):
        by_schema = await job_manager.submit(tenant, kind, {"mode": "schema"})
        by_choice = await job_manager.submit(tenant, kind, {"mode": "choices"})
        waiting = await asking(job_manager, by_schema.id, tenant, "q1")
        await asking(job_manager, by_choice.id, tenant, "q1")
        history = await job_manager.events(by_schema.id, tenant=tenant)

        for bad, expected in [
            ({"approve": "yes"}, "approve: 'yes' is not of type 'boolean'"),
            ({}, "'approve' is a required property"),
            ({"approve": True, "extra": 1}, "Additional properties are not allowed"),
            ("approve", "is not of type 'object'"),
        ]:
            with pytest.raises(InvalidAnswer) as refused:
                await job_manager.answer(by_schema.id, tenant=tenant, answer=bad)
            assert refused.value.code == "invalid_answer"
            assert refused.value.problems and any(expected in p for p in refused.value.problems)
        with pytest.raises(InvalidAnswer) as not_json:
            await job_manager.answer(by_schema.id, tenant=tenant, answer=object())
        assert not_json.value.code == "invalid_answer" and not_json.value.problems
        with pytest.raises(InvalidAnswer):
            await job_manager.answer(by_schema.id, tenant=tenant, answer=float("nan"))
        with pytest.raises(NotWaitingForInput) as wrong_key:
            await job_manager.answer(
                by_schema.id, tenant=tenant, answer={"approve": True}, question_key="q2"
            )
        assert wrong_key.value.code == "not_waiting_for_input"
        with pytest.raises(JobNotFound):
            await job_manager.answer(
                by_schema.id, tenant=f"other-{tenant}", answer={"approve": True}
            )
        unchanged = await fresh(job_manager, by_schema.id, tenant)
        assert unchanged.version == waiting.version
        assert unchanged.status is JobStatus.WAITING_INPUT and unchanged.answers == {}
        assert await job_manager.events(by_schema.id, tenant=tenant) == history

        with pytest.raises(InvalidAnswer) as off_list:
            await job_manager.answer(by_choice.id, tenant=tenant, answer="blue")
        assert "not one of the choices" in off_list.value.problems[0]
        await job_manager.answer(by_choice.id, tenant=tenant, answer="red")
        await job_manager.answer(by_schema.id, tenant=tenant, answer={"approve": False})
        assert (await finished(job_manager, by_choice.id, tenant)).result == {"answer": "red"}
        done = await finished(job_manager, by_schema.id, tenant)
        assert done.result == {"answer": {"approve": False}}

    with pytest.raises(NotWaitingForInput) as after_the_end:
        await job_manager.answer(by_schema.id, tenant=tenant, answer={"approve": True})
    assert after_the_end.value.code == "not_waiting_for_input"
    assert after_the_end.value.status == "succeeded"
    queued = await job_manager.submit(tenant, idle_kind, {})  # no worker runs this kind
    with pytest.raises(NotWaitingForInput) as never_asked:
        await job_manager.answer(queued.id, tenant=tenant, answer="anything")
    assert never_asked.value.status == "queued"
    with pytest.raises(JobNotFound):
        await job_manager.answer(uuid4(), tenant=tenant, answer="anything")
    # another tenant's job is not found, whatever the answer (even one that cannot be stored)
    with pytest.raises(JobNotFound):
        await job_manager.answer(queued.id, tenant=f"{tenant}-other", answer="nul \x00")
    with pytest.raises(InvalidAnswer):
        await job_manager.answer(queued.id, tenant=tenant, answer="nul \x00")


async def test_a_choice_that_is_an_array_can_be_chosen(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("pair")
    async with running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {"mode": "pair"})
        await asking(job_manager, job.id, tenant, "q1")
        try:
            await job_manager.answer(job.id, tenant=tenant, answer=["a", "b"])
        except InvalidAnswer:
            await job_manager.cancel(job.id, tenant=tenant)  # leave nothing waiting
            raise
        assert (await finished(job_manager, job.id, tenant)).result == {"answer": ("a", "b")}


async def test_a_boolean_is_not_one_of_integer_choices(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("binary")
    async with running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {"mode": "binary"})
        await asking(job_manager, job.id, tenant, "q1")
        try:
            with pytest.raises(InvalidAnswer):
                await job_manager.answer(job.id, tenant=tenant, answer=True)
        finally:
            with contextlib.suppress(JobFinished):
                await job_manager.cancel(job.id, tenant=tenant)


async def test_retrying_an_accepted_number_answer_is_safe(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("number")
    async with running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {"mode": "number"})
        await asking(job_manager, job.id, tenant, "q1")
        accepted = await job_manager.answer(job.id, tenant=tenant, answer=1e16)
        again = await job_manager.answer(job.id, tenant=tenant, answer=1e16)
        assert again.id == accepted.id
        await finished(job_manager, job.id, tenant)


async def test_a_schema_from_the_payload_can_be_asked(job_manager: JobManager, tenant: str) -> None:
    kind = new_kind("payload-schema")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> Any:
        return await ctx.ask(payload["question"], schema=payload["schema"])

    async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
        job = await job_manager.submit(
            tenant, kind, {"question": "Approve the loan?", "schema": APPROVAL}
        )

        async def settled() -> Job | None:
            current = await fresh(job_manager, job.id, tenant)
            return current if current.status is JobStatus.WAITING_INPUT or current.error else None

        current = await eventually(settled, timeout=DEADLINE, what="the job to ask (or fail)")
    assert current.status is JobStatus.WAITING_INPUT, current.error["message"]


# --- 5. exactly one answer wins ------------------------------------------------------------------


async def test_of_concurrent_answers_on_two_replicas_exactly_one_wins(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    kind = new_kind("race")
    async with (
        await JobManager.connect(database_url) as replica,
        running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)),
    ):
        job = await job_manager.submit(tenant, kind, {"mode": "schema"})
        await asking(job_manager, job.id, tenant, "q1")
        managers = [job_manager, replica]
        outcomes = await asyncio.gather(
            *(
                managers[i % 2].answer(
                    job.id,
                    tenant=tenant,
                    answer={"approve": i % 2 == 0, "comment": f"answer {i}"},
                    answered_by=f"person-{i}",
                )
                for i in range(10)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, Job)]
        losers = [o for o in outcomes if isinstance(o, NotWaitingForInput)]
        assert len(winners) == 1 and len(losers) == 9, outcomes
        accepted = winners[0].answers["q1"]
        index = int(accepted["answered_by"].removeprefix("person-"))
        assert accepted["answer"] == {"approve": index % 2 == 0, "comment": f"answer {index}"}

        final = await finished(job_manager, job.id, tenant)
        assert final.status is JobStatus.SUCCEEDED
        assert final.result == {"answer": accepted["answer"]}
        history = await job_manager.events(job.id, tenant=tenant)
        assert [e.type for e in history].count("answered") == 1

        for manager in managers:  # a retry of the accepted answer, on either replica
            again = await manager.answer(
                job.id, tenant=tenant, answer=dict(accepted["answer"]), answered_by="retry"
            )
            assert again.id == job.id and again.version == final.version
            assert again.answers["q1"]["answered_by"] == f"person-{index}"
        same_key = await replica.answer(
            job.id, tenant=tenant, answer=dict(accepted["answer"]), question_key="q1"
        )
        assert same_key.version == final.version
        with pytest.raises(NotWaitingForInput):
            await replica.answer(job.id, tenant=tenant, answer={"approve": index % 2 != 0})
        assert await job_manager.events(job.id, tenant=tenant) == history


# --- 6. deadlines --------------------------------------------------------------------------------


async def test_input_deadlines_fail_cancel_or_answer_with_the_default(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("deadline")
    tasks = TaskRegistry()
    policies: dict[str, OnTimeout] = {"fail": "fail", "cancel": "cancel", "default": "default"}

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> dict[str, Any]:
        answer = await ctx.ask(
            "Which colour?",
            choices=["red", "green"],
            timeout=0.3,
            on_timeout=policies[payload["on_timeout"]],
            default="green",
        )
        return {"answer": answer}

    async with running(
        make_worker(job_manager, tasks, **WORKER_SETTINGS),
        sweeper=Sweeper(job_manager, interval=0.1),
    ):
        jobs = {
            policy: await job_manager.submit(tenant, kind, {"on_timeout": policy})
            for policy in policies
        }
        final = {
            policy: await finished(job_manager, job.id, tenant) for policy, job in jobs.items()
        }

    failed, cancelled, defaulted = final["fail"], final["cancel"], final["default"]
    assert failed.status is JobStatus.FAILED
    assert failed.error["code"] == "input_timeout" and "q1" in failed.error["message"]
    assert failed.prompt is None and failed.answers == {}
    assert cancelled.status is JobStatus.CANCELLED and cancelled.error is None
    assert cancelled.prompt is None
    assert defaulted.status is JobStatus.SUCCEEDED
    assert defaulted.result == {"answer": "green"}
    assert defaulted.attempts == 1
    entry = defaulted.answers["q1"]
    assert entry["timed_out"] is True and entry["answered_by"] is None
    assert entry["answer"] == "green"

    expected = {
        "fail": ["submitted", "claimed", "asked", "failed"],
        "cancel": ["submitted", "claimed", "asked", "cancelled"],
        "default": ["submitted", "claimed", "asked", "answered", "claimed", "succeeded"],
    }
    for policy, job in jobs.items():
        history = await job_manager.events(job.id, tenant=tenant)
        assert [e.type for e in history] == expected[policy]
        assert_contiguous(history)
        asked, timed_out = history[2], history[3]
        assert timed_out.data["timed_out"] is True
        waited = (timed_out.at - asked.at).total_seconds()
        assert waited >= 0.3, f"{policy}: timed out after {waited} s, before its deadline"


async def test_a_deadline_is_set_when_asking_and_not_enforced_early(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind = new_kind("long-deadline")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> Any:
        return await ctx.ask("Still there?", timeout=3600)

    async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {})
        waiting = await asking(job_manager, job.id, tenant, "q1")
    deadline = await db.fetchval("SELECT input_deadline FROM jobs WHERE id = $1", job.id)
    assert (deadline - waiting.updated_at).total_seconds() == 3600
    assert await job_manager.expire_input_deadlines() == []
    assert (await fresh(job_manager, job.id, tenant)).version == waiting.version
    await job_manager.cancel(job.id, tenant=tenant)


# --- 7. cancel -----------------------------------------------------------------------------------


async def test_cancel_while_waiting_is_immediate_and_later_answers_are_refused(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    kind = new_kind("cancel")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def ask(ctx: JobContext, payload: Any) -> Any:
        return await ctx.ask("Approve?", schema=APPROVAL, timeout=3600)

    async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {})
        await asking(job_manager, job.id, tenant, "q1")
        cancelled = await job_manager.cancel(job.id, tenant=tenant)
        assert cancelled.status is JobStatus.CANCELLED
        assert cancelled.prompt is None and cancelled.finished_at is not None
        stored = await fresh(job_manager, job.id, tenant)
        assert stored.status is JobStatus.CANCELLED and stored.version == cancelled.version
        deadline = await db.fetchval("SELECT input_deadline FROM jobs WHERE id = $1", job.id)
        assert deadline is None
        with pytest.raises(NotWaitingForInput) as refused:
            await job_manager.answer(job.id, tenant=tenant, answer={"approve": True})
        assert refused.value.status == "cancelled"
        assert (await fresh(job_manager, job.id, tenant)).version == cancelled.version
    assert await types(job_manager, job.id, tenant) == [
        "submitted",
        "claimed",
        "asked",
        "cancelled",
    ]


async def test_a_running_job_asked_to_cancel_does_not_start_waiting(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("cancel-then-ask")
    started, go_on = threading.Event(), threading.Event()
    tasks = TaskRegistry()

    @tasks.task(kind)
    def ask(ctx: JobContext, payload: Any) -> Any:  # a sync handler cannot be interrupted
        started.set()
        go_on.wait(DEADLINE)
        return ctx.ask_sync("Approve?", schema=APPROVAL)

    try:
        async with running(make_worker(job_manager, tasks, **WORKER_SETTINGS)):
            job = await job_manager.submit(tenant, kind, {})

            async def handler_started() -> bool:
                return started.is_set()

            await eventually(handler_started, timeout=DEADLINE, what="the handler to start")
            flagged = await job_manager.cancel(job.id, tenant=tenant)
            assert flagged.status is JobStatus.RUNNING and flagged.cancel_requested
            go_on.set()
            final = await finished(job_manager, job.id, tenant)
    finally:
        go_on.set()
    assert final.status is JobStatus.CANCELLED and final.prompt is None
    assert await types(job_manager, job.id, tenant) == [
        "submitted",
        "claimed",
        "cancel_requested",
        "cancelled",
    ]


# --- 8. watch ------------------------------------------------------------------------------------


async def collect(
    manager: JobManager, job_id: UUID, tenant: str, into: list[JobEvent], after: int = 0
) -> None:
    async for event in manager.watch(job_id, tenant=tenant, after=after):
        into.append(event)


async def test_watch_delivers_every_event_once_in_order_and_resumes_after_k(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("watch")
    seen: list[JobEvent] = []
    async with running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)):
        job = await job_manager.submit(tenant, kind, {"mode": "choices"})
        watching = asyncio.create_task(collect(job_manager, job.id, tenant, seen))
        try:

            async def saw_the_question() -> bool:
                return any(e.type == "asked" for e in seen)

            await eventually(
                saw_the_question, timeout=DEADLINE, what="watch to deliver the question"
            )
            await job_manager.answer(job.id, tenant=tenant, answer="green")
            await asyncio.wait_for(watching, DEADLINE)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)

    assert [e.type for e in seen] == [
        "submitted",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]
    assert_contiguous(seen)
    assert tuple(seen) == await job_manager.events(job.id, tenant=tenant)
    for k in (1, 3, 5):
        resumed: list[JobEvent] = []
        await asyncio.wait_for(collect(job_manager, job.id, tenant, resumed, after=k), DEADLINE)
        assert resumed[0].seq == k + 1 and resumed == seen[k:]
    with pytest.raises(JobNotFound):
        await asyncio.wait_for(collect(job_manager, job.id, f"other-{tenant}", []), DEADLINE)


async def test_watch_loses_nothing_across_a_listener_reconnect(
    job_manager: JobManager, database_url: str, tenant: str
) -> None:
    kind = new_kind("watch-reconnect")
    seen: list[JobEvent] = []
    # no periodic re-read on the watching replica: only notifications and the catch-up that
    # follows a reconnect can tell its watch that something happened
    async with (
        await JobManager.connect(database_url, feed_interval=3600) as replica,
        running(make_worker(job_manager, question_registry(kind), **WORKER_SETTINGS)),
    ):
        job = await job_manager.submit(tenant, kind, {"mode": "schema"})
        watching = asyncio.create_task(collect(replica, job.id, tenant, seen))
        try:

            async def saw_the_question() -> bool:
                return any(e.type == "asked" for e in seen)

            await eventually(
                saw_the_question, timeout=DEADLINE, what="watch to deliver the question"
            )
            reconnects = replica.feed_status().reconnects
            assert await terminate_feeds(database_url) >= 2  # the replica's and the worker's
            # answered while the replica's listener is (most likely) still gone
            await job_manager.answer(job.id, tenant=tenant, answer={"approve": True})
            await asyncio.wait_for(watching, DEADLINE)
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        assert replica.feed_status().reconnects > reconnects

    assert [e.type for e in seen] == [
        "submitted",
        "claimed",
        "asked",
        "answered",
        "claimed",
        "succeeded",
    ]
    assert_contiguous(seen)
    assert seen[-1].type in TERMINAL_EVENTS
    assert tuple(seen) == await job_manager.events(job.id, tenant=tenant)


async def test_watch_after_the_terminal_event_ends(job_manager: JobManager, tenant: str) -> None:
    job = await job_manager.submit(tenant, new_kind("watch-ended"), {})
    cancelled = await job_manager.cancel(job.id, tenant=tenant)
    rest: list[JobEvent] = []
    await asyncio.wait_for(collect(job_manager, job.id, tenant, rest, after=cancelled.version), 3)
    assert rest == []
