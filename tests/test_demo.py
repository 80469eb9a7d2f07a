"""The README's first command tells its whole story: `python -m jobkeeper.demo` (here on the test
database through JOBKEEPER_DATABASE_URL; `make demo` uses an embedded Postgres instead)."""

from __future__ import annotations

import asyncio
import os
import re
import sys

import pytest

from jobkeeper.demo import DEMO_TENANT
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn


@pytest.mark.timeout(180)
async def test_demo_story_runs_to_the_end(database_url: str) -> None:
    env = {**os.environ, "JOBKEEPER_DATABASE_URL": asyncpg_dsn(database_url), "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "jobkeeper.demo",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 150)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text[-3000:]
    for milestone in (
        "Three jobs with live progress",
        "cancelled at",
        "error handler_error",
        "curl -X POST",
        "resumed on a worker and succeeded",
        "Done.",
        "/ui (sign in with the key jk_",
        "a question waits in its inbox",
    ):
        assert milestone in text, f"{milestone!r} missing from:\n{text[-3000:]}"
    # the question it leaves is in the inbox of whoever signs in with a key of the tenant
    (waiting,) = re.findall(r"/ui/inbox\): job ([0-9a-f-]{36})", text)
    async with await JobManager.connect(database_url) as jobs:
        inbox = await jobs.inbox(DEMO_TENANT, principal="api-key:someone")
    assert waiting in [str(q.job_id) for q in inbox.items]
