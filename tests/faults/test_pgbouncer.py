"""jobkeeper through a real pooler: PgBouncer (Debian's package, started here on a free loopback
port) in session mode with LISTEN/NOTIFY, and in transaction mode with ``feed_mode=poll`` and no
kept prepared statements. Worker processes, an API-side manager and a caching replica all go
through it; every job runs once and ends succeeded, and the replica's cache follows.

The settings each mode needs are the ones docs/operations.md lists; ``.ci/run`` installs
pgbouncer. PgBouncer refuses to run as root, so it runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from jobkeeper.feed import FeedMode
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from support import eventually

from .support import DEADLINE, Workers

TASKS = "tests.faults.fault_tasks:tasks"
JOBS = 60
PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
INI = """[databases]
* = host={host} port={port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/userlist.txt
pool_mode = {mode}
max_client_conn = 200
default_pool_size = 20
; asyncpg sends these at startup; PgBouncer 1.18 only tracks a few parameters itself
ignore_startup_parameters = plan_cache_mode
logfile = {folder}/pgbouncer.log
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(database_url: str, mode: str) -> Iterator[str]:
    """PgBouncer in ``mode`` in front of the test server; yields the URL of the database
    through it. Always stopped and its folder removed on the way out."""
    if not os.path.exists(PGBOUNCER):
        pytest.fail("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
    server = urlsplit(asyncpg_dsn(database_url))
    listen = _free_port()
    # not under pytest's tmp_path: its parents are closed to the postgres user pgbouncer runs as
    folder = Path(tempfile.mkdtemp(prefix="jobkeeper-pgbouncer-"))
    folder.chmod(0o777)
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        INI.format(
            host=server.hostname, port=server.port or 5432, listen=listen, folder=folder, mode=mode
        )
    )
    for path in folder.iterdir():
        path.chmod(0o666)
    process = subprocess.Popen(
        [PGBOUNCER, "-u", "postgres", str(ini)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield urlunsplit(server._replace(netloc=f"postgres@127.0.0.1:{listen}"))
    finally:
        process.terminate()
        try:
            process.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(DEADLINE)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["session", "transaction"])
async def through(
    request: pytest.FixtureRequest, database_url: str, starts_table: None
) -> AsyncIterator[tuple[str, str]]:
    """(pool mode, the database's URL through PgBouncer in that mode)."""
    mode: str = request.param
    with pgbouncer(database_url, mode) as url:

        async def answers() -> bool:
            try:
                conn = await asyncpg.connect(asyncpg_dsn(url), statement_cache_size=0)
            except (OSError, asyncpg.PostgresError):
                return False
            await conn.close()
            return True

        await eventually(answers, timeout=DEADLINE, what="pgbouncer to accept connections")
        yield mode, url


@pytest.mark.timeout(120)
async def test_the_core_scenario_runs_through_pgbouncer(
    through: tuple[str, str], database_url: str, tmp_path: Path
) -> None:
    mode, url = through
    session = mode == "session"
    feed_mode: FeedMode = "notify" if session else "poll"
    settings = {
        "feed_mode": feed_mode,
        "prepared_statements": "true" if session else "false",
        "lease_seconds": "5",
        "poll_interval": "0.2",
    }
    workers = Workers(url, tmp_path, tasks=TASKS, prefix_var="FAULT_KIND_PREFIX", settings=settings)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    try:
        started = [await workers.start(), await workers.start()]
        async with (
            await JobManager.connect(
                url, feed_mode=feed_mode, prepared_statements=session, pool_size=4
            ) as api,
            await JobManager.connect(
                url, feed_mode=feed_mode, prepared_statements=session, pool_size=2
            ) as replica,
        ):
            submitted = [
                await api.submit(tenant, workers.kind("slow"), {"seconds": [0.01]})
                for _ in range(JOBS)
            ]
            watched = submitted[-1]
            assert (await replica.get(watched.id, tenant=tenant)).status == "queued"  # cached

            async def all_done() -> bool:
                page = await api.list(tenant=tenant, status="succeeded", limit=JOBS)
                return len(page.items) == JOBS

            await eventually(all_done, timeout=60.0, what="every job to succeed", watch=started)

            async def replica_follows() -> bool:
                return (await replica.get(watched.id, tenant=tenant)).status == "succeeded"

            await eventually(replica_follows, what="the replica's cache to follow")
        conn = await asyncpg.connect(asyncpg_dsn(database_url))
        try:
            counts = await conn.fetch(
                "SELECT job_id, count(*) AS runs FROM fault_starts WHERE job_id = ANY($1::uuid[])"
                " GROUP BY job_id",
                [job.id for job in submitted],
            )
        finally:
            await conn.close()
        assert len(counts) == JOBS and all(row["runs"] == 1 for row in counts)
        for worker in started:
            assert worker.proc.returncode is None, worker.tail()
            assert "Traceback" not in worker.output(), worker.tail()
    finally:
        await workers.close()
