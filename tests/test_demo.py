"""The README's first command tells its whole story: `python -m jobkeeper.demo` (here on the test
database through JOBKEEPER_DATABASE_URL; `make demo` uses an embedded Postgres instead)."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

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
