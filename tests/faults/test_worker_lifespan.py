"""A worker process runs its registry's lifespan: what it yields reaches every handler as
``ctx.resources``; a lifespan that fails to enter stops the worker with one line."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from jobkeeper.manager import JobManager
from support import eventually

from .support import Workers, exit_code

TASKS = "tests.faults.lifespan_tasks:tasks"


@pytest.fixture
async def workers(database_url: str, tmp_path: Path) -> AsyncIterator[Workers]:
    started = Workers(database_url, tmp_path, tasks=TASKS, prefix_var="LIFESPAN_KIND_PREFIX")
    try:
        yield started
    finally:
        await started.close()


@pytest.mark.timeout(60)
async def test_the_cli_worker_hands_its_lifespans_resources_to_handlers(
    workers: Workers, job_manager: JobManager, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = uuid.uuid4().hex
    monkeypatch.setenv("LIFESPAN_TOKEN", token)
    worker = await workers.start()
    job = await job_manager.submit(tenant, workers.kind("read"), {})

    async def done() -> bool:
        return (await job_manager.get(job.id, tenant=tenant, consistency="strong")).terminal

    await eventually(done, what="the job to finish", watch=[worker])
    finished = await job_manager.get(job.id, tenant=tenant, consistency="strong")
    assert finished.result == {"token": token, "pid": worker.pid}


@pytest.mark.timeout(60)
async def test_a_lifespan_that_fails_to_start_ends_the_worker_in_one_line(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIFESPAN_FAIL", "1")
    worker = await workers.start()
    assert await exit_code(worker, 30) == 1
    output = worker.output()
    assert "lifespan failed to start" in output and "would not open" in output
    assert "Traceback" not in output
