"""``jobkeeper schedules``: create, list, pause, resume and delete from the command line; bad
input ends in one line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jobkeeper.cli import app
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn

JOBKEEPER = str(Path(sys.executable).parent / "jobkeeper")


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    url = asyncpg_dsn(database_url)
    monkeypatch.setenv("JOBKEEPER_DATABASE_URL", url)
    return {**os.environ, "JOBKEEPER_DATABASE_URL": url}


async def cli(*args: str) -> tuple[int, str]:
    """The CLI in-process (it runs its own event loop, so in a thread)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    return result.exit_code, result.output


async def test_schedules_commands(
    env: dict[str, str], job_manager: JobManager, tenant: str
) -> None:
    code, out = await cli(
        "schedules", "create", "nightly", "--tenant", tenant, "--kind", "report.nightly",
        "--cron", "30 2 * * *", "--timezone", "Europe/Stockholm", "--payload", '{"scope": "all"}',
    )  # fmt: skip
    assert code == 0, out
    created = json.loads(out)
    assert (created["cron"], created["timezone"]) == ("30 2 * * *", "Europe/Stockholm")
    assert created["payload"] == {"scope": "all"} and not created["paused"]
    code, out = await cli(
        "schedules", "create", "often", "--tenant", tenant, "--kind", "report.often",
        "--every", "15m", "--misfire", "all",
    )  # fmt: skip
    assert code == 0, out
    often = json.loads(out)
    assert often["every_seconds"] == 900 and often["misfire"] == "all"

    code, out = await cli("schedules", "list", "--tenant", tenant)
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[1] for line in lines] == ["nightly", "often"]
    assert "every 900s" in lines[1]

    code, out = await cli("schedules", "pause", created["id"], "--tenant", tenant)
    assert code == 0 and json.loads(out)["paused"]
    assert (await job_manager.get_schedule(created["id"], tenant=tenant)).paused
    code, out = await cli("schedules", "resume", created["id"], "--tenant", tenant)
    assert code == 0 and not json.loads(out)["paused"]
    code, out = await cli("schedules", "delete", often["id"], "--tenant", tenant)
    assert code == 0
    assert [s.name for s in await job_manager.list_schedules(tenant=tenant)] == ["nightly"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (("--cron", "61 * * * *"), 1, "cron"),
        (("--cron", "* * * * *", "--timezone", "Mars/Olympus"), 1, "timezone"),
        (("--every", "soon"), 2, "--every"),
        (("--cron", "* * * * *", "--payload", "{oops"), 2, "payload"),
        ((), 1, "exactly one of cron and every"),
    ],
)
def test_mistakes_are_one_line(
    env: dict[str, str], tenant: str, args: tuple[str, ...], code: int, says: str
) -> None:
    process = subprocess.run(
        [JOBKEEPER, "schedules", "create", "bad", "--tenant", tenant, "--kind", "k", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert process.returncode == code, process.stderr
    assert process.stderr.startswith("error: ") and "Traceback" not in process.stderr
    assert says in process.stderr and len(process.stderr.strip().splitlines()) == 1


def test_an_unknown_schedule_is_one_line(env: dict[str, str], tenant: str) -> None:
    for command in ("pause", "resume", "delete"):
        process = subprocess.run(
            [JOBKEEPER, "schedules", command, "01a210e4-de12-7186-b6de-d9018f844e17",
             "--tenant", tenant],
            env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert process.returncode == 1, process.stderr
        assert "not found" in process.stderr and "Traceback" not in process.stderr
