"""The work queue on the command line: ``jobkeeper inbox``, ``jobs claim``/``release``, answers
with claim and version checks, and the audit trail in ``jobs show``."""

from __future__ import annotations

import asyncio
import json

from jobkeeper.manager import JobManager
from test_cli import env, invoke  # noqa: F401 - env is a fixture
from test_hitl import asking
from test_inbox import asking_worker  # noqa: F401 - a fixture


async def cli(*args: str) -> tuple[int, str]:  # the CLI runs its own event loop
    return await asyncio.to_thread(invoke, *args)


async def test_inbox_claim_answer_and_the_trail_in_jobs_show(
    env: dict[str, str],  # noqa: F811
    job_manager: JobManager,
    tenant: str,
    asking_worker: str,  # noqa: F811
) -> None:
    job = await job_manager.submit(
        tenant, asking_worker, {"assignee": "role:underwriter", "timeout": 600}
    )
    waiting = await asking(job_manager, job.id, tenant, "q1")
    job_id = str(job.id)

    code, out = await cli("inbox", "--tenant", tenant, "--principal", "alice")
    assert code == 0 and job_id not in out  # not an underwriter
    args = ("--tenant", tenant, "--principal", "alice", "--role", "underwriter")
    code, out = await cli("inbox", *args)
    assert code == 0 and job_id in out and "role:underwriter" in out and "Approve?" in out

    code, out = await cli("jobs", "claim", job_id, "--tenant", tenant, "--principal", "alice")
    assert code == 0 and json.loads(out)["claimed_by"] == "alice"
    answer = ("jobs", "answer", job_id, '{"approve": true}', "--tenant", tenant)
    code, out = await cli(*answer, "--principal", "bob")
    assert code == 1 and "held by alice" in out and "Traceback" not in out
    code, out = await cli("jobs", "show", job_id, "--tenant", tenant)
    shown = json.loads(out)
    assert shown["question"]["claimed_by"] == "alice"
    assert shown["question"]["version"] == waiting.question_version
    code, out = await cli(*answer, "--principal", "alice", "--if-version", "1")
    assert code == 1 and "changed" in out
    code, out = await cli(*answer, "--principal", "alice", "--if-version", str(waiting.version))
    assert code == 0 and json.loads(out)["status"] == "queued"

    code, out = await cli("jobs", "show", job_id, "--tenant", tenant)
    shown = json.loads(out)
    assert shown["question"] is None
    trail = [e for e in shown["history"] if e["type"] in ("question_claimed", "answered")]
    assert [(e["type"], e["data"].get("by") or e["data"]["answered_by"]) for e in trail] == [
        ("question_claimed", "alice"),
        ("answered", "alice"),
    ]
    assert all(e["data"]["replica"] and e["at"].endswith("Z") for e in trail)
