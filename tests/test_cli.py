"""The jobkeeper command line: every command through typer's runner, and each once as a real
process. User mistakes end with one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import asyncio
import getpass
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
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


@pytest.fixture
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    url = asyncpg_dsn(database_url)
    monkeypatch.setenv("JOBKEEPER_DATABASE_URL", url)
    return {**os.environ, "JOBKEEPER_DATABASE_URL": url}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOBKEEPER, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_help_everywhere() -> None:
    for command in ([], ["jobs"], ["keys"], ["worker"], ["serve"], ["sweep"], ["migrate"]):
        code, out = invoke(*command, "--help")
        assert code == 0, out
        assert "Usage" in out


def test_migrate_is_idempotent_and_prints_sql(env: dict[str, str]) -> None:
    assert invoke("migrate") == (0, "schema jobkeeper is up to date\n")
    code, out = invoke("migrate", "--sql", "--schema", "app_jobs")
    assert code == 0
    assert "CREATE TABLE jobs" in out and 'CREATE SCHEMA IF NOT EXISTS "app_jobs"' in out
    assert invoke("migrate", "--schema", "Bad-Name")[0] == 1
    process = run(env, "migrate")
    assert process.returncode == 0, process.stderr


async def test_jobs_commands(env: dict[str, str], job_manager: JobManager, tenant: str) -> None:
    job = await job_manager.submit(tenant, "cli.test", {"n": 1})

    async def cli(*args: str) -> tuple[int, str]:  # the CLI runs its own event loop
        return await asyncio.to_thread(invoke, *args)

    code, out = await cli("jobs", "list", "--tenant", tenant)
    assert code == 0 and str(job.id) in out
    code, out = await cli("jobs", "show", str(job.id), "--tenant", tenant)
    assert code == 0 and json.loads(out)["status"] == "queued"
    code, out = await cli("jobs", "cancel", str(job.id), "--tenant", tenant)
    assert code == 0 and json.loads(out)["status"] == "cancelled"
    history = await job_manager.events(job.id, tenant=tenant)
    assert history[-1].data == {"cancelled_by": f"cli:{getpass.getuser()}"}
    code, out = await cli("jobs", "answer", str(job.id), '{"approve": true}', "--tenant", tenant)
    assert code == 1 and "not waiting" in out and "Traceback" not in out
    process = run(env, "jobs", "show", str(job.id), "--tenant", tenant)
    assert process.returncode == 0 and json.loads(process.stdout)["status"] == "cancelled"


def test_jobs_mistakes_are_one_line(env: dict[str, str], tenant: str) -> None:
    for args, code in (
        (("jobs", "show", "not-a-uuid", "--tenant", tenant), 1),
        (("jobs", "show", "01a210e4-de12-7186-b6de-d9018f844e17", "--tenant", tenant), 1),
        (
            ("jobs", "answer", "01a210e4-de12-7186-b6de-d9018f844e17", "{oops", "--tenant", tenant),
            2,
        ),
    ):
        process = run(env, *args)
        assert process.returncode == code, process.stderr
        assert process.stderr.startswith("error: ") and "Traceback" not in process.stderr
        assert len(process.stderr.strip().splitlines()) == 1


def test_database_down_is_one_line(env: dict[str, str]) -> None:
    for args in (("jobs", "list", "--tenant", "t"), ("sweep",), ("migrate",)):
        process = run({**env, "JOBKEEPER_DATABASE_URL": UNREACHABLE}, *args)
        assert process.returncode == 1, process.stderr
        assert process.stderr.startswith("error: ") and "Traceback" not in process.stderr


def test_no_database_configured(env: dict[str, str]) -> None:
    clean = {k: v for k, v in env.items() if k != "JOBKEEPER_DATABASE_URL"}
    result = subprocess.run(
        [JOBKEEPER, "sweep"], env=clean, capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert result.returncode == 1
    assert "JOBKEEPER_DATABASE_URL" in result.stderr


def test_keys_create_list_revoke(env: dict[str, str], tenant: str) -> None:
    code, out = invoke("keys", "create", "--tenant", tenant, "--label", "ci")
    assert code == 0
    key = out.splitlines()[0]
    assert key.startswith("jk_") and len(key) > 40
    code, out = invoke("keys", "list", "--tenant", tenant)
    assert code == 0 and key[:10] in out and key not in out  # the key itself is never shown
    process = run(env, "keys", "revoke", key[:10])
    assert process.returncode == 0, process.stderr
    assert run(env, "keys", "revoke", key[:10]).returncode == 1  # already revoked
    code, out = invoke("keys", "list", "--tenant", tenant)
    assert "revoked" in out


def test_sweep_prints_what_it_did(env: dict[str, str]) -> None:
    code, out = invoke("sweep")
    assert code == 0 and "leases recovered:" in out
    process = run(env, "sweep")
    assert process.returncode == 0 and "jobs expired:" in process.stdout


def test_bench_outside_a_checkout_says_so(tmp_path: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [JOBKEEPER, "bench"], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "benchmarks/" in result.stderr
