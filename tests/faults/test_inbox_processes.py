"""Escalation with real processes: a worker process asks Alice, its sweeper escalates the question
to the managers at her deadline, a manager (this test, another process) takes it from the inbox
and answers it, and the worker process resumes the job.

Every wait polls the database against a deadline (failing at once if the worker exits), and the
worker process is killed and awaited when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobkeeper import Question, QuestionChanged
from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager
from support import eventually

from .support import DEADLINE, Workers


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(
        database_url,
        tmp_path,
        tasks="tests.faults.inbox_tasks:tasks",
        prefix_var="INBOX_KIND_PREFIX",
        settings={"lease_seconds": "3"},  # the worker's sweeper runs every second
    )
    try:
        yield started
    finally:
        await started.close()


async def test_a_question_escalates_in_a_worker_process_and_the_manager_answers_it(
    workers: Workers, database_url: str, tenant: str
) -> None:
    kind = workers.kind("review")
    worker = await workers.start("--kind", kind, grace=5.0)
    async with await JobManager.connect(database_url) as api:
        job = await api.submit(tenant, kind, {"loan": "L-1", "timeout": 1.0})

        async def for_managers() -> Question | None:
            page = await api.inbox(tenant, principal="user:carol", roles={"manager"})
            found = [q for q in page.items if q.job_id == job.id]
            return found[0] if found and found[0].assignee == "role:manager" else None

        escalated = await eventually(
            for_managers, timeout=DEADLINE, what="the escalation", watch=[worker]
        )
        alices = await api.inbox(tenant, principal="user:alice")
        assert job.id not in {q.job_id for q in alices.items}
        [asked] = [e for e in await api.events(job.id, tenant=tenant) if e.type == "asked"]
        assert asked.data["assignee"] == "user:alice"
        assert escalated.version > asked.seq and escalated.text == "Approve L-1?"

        with pytest.raises(QuestionChanged):  # alice's reading is out of date
            await api.answer(
                job.id, tenant=tenant, answer={"approve": False}, expected_version=asked.seq
            )
        await api.claim_question(job.id, tenant, "user:carol")
        await api.answer(
            job.id,
            tenant=tenant,
            answer={"approve": True},
            answered_by="user:carol",
            expected_version=escalated.version,
        )

        async def done() -> bool:
            current = await api.get(job.id, tenant=tenant, consistency="strong")
            return current.status is JobStatus.SUCCEEDED

        await eventually(done, timeout=DEADLINE, what="the job to finish", watch=[worker])
        final = await api.get(job.id, tenant=tenant, consistency="strong")
        history = await api.events(job.id, tenant=tenant)

    assert final.result == {"answer": {"approve": True}, "finished_by": worker.pid}
    assert final.answers["q1"]["answered_by"] == "user:carol"
    trail = [e for e in history if e.type in ("escalated", "question_claimed", "answered")]
    assert [e.type for e in trail] == ["escalated", "question_claimed", "answered"]
    step, claim, answer = (e.data for e in trail)
    assert (step["from"], step["to"]) == ("user:alice", "role:manager")
    assert step["replica"].endswith(f":{worker.pid}")  # the worker process's sweeper
    assert claim["by"] == "user:carol" and claim["replica"] == api.replica
    assert answer["answered_by"] == "user:carol" and answer["replica"] == api.replica
