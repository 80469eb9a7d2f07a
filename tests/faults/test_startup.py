"""Processes started while Postgres is down wait for it, bounded and logged, instead of exiting.

A Postgres cluster of the module's own (``pg_createcluster`` on a free loopback port, migrated) is
down when ``jobkeeper worker`` and ``jobkeeper serve`` start; each says at WARNING that it cannot
connect yet, and once the cluster is started the worker claims and finishes a job and the API
answers ``/readyz`` 200. With a short ``JOBKEEPER_STARTUP_WAIT`` and nothing coming up, both exit 1
with one line. A database that answers without jobkeeper's schema is not waited for (here for
``JobManager.connect``; test_worker_processes.py checks the worker process).

The cluster is dropped at the end; every process started here is killed and awaited.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

from api.support import Process, Processes, free_port
from jobkeeper.errors import DatabaseUnavailable, InvalidRequest, SchemaMissing
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.testing import create_database, drop_database
from support import eventually

from .support import DEADLINE, ROOT, STARTS_TABLE

TASKS = "tests.faults.fault_tasks:tasks"
VERSION = "15"
WAITING = "connecting to Postgres failed"


class Cluster:
    """A Postgres cluster of this module's own, made with Debian's ``pg_createcluster``."""

    def __init__(self) -> None:
        self.name = f"jk_startup_{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def _ctl(self, *args: str, check: bool = True) -> int:
        done = await asyncio.to_thread(
            subprocess.run, args, check=check, capture_output=True, timeout=DEADLINE
        )
        return done.returncode

    async def create(self) -> None:
        await self._ctl(
            "pg_createcluster", VERSION, self.name, "-p", str(self.port), "--", "--auth=trust"
        )

    async def start(self) -> None:
        await self._ctl(*_CTL, VERSION, self.name, "start")

    async def stop(self) -> None:
        """Stop it if it runs (fast: open connections are ended), and make sure it is down."""
        await self._ctl(*_CTL, VERSION, self.name, "stop", "-m", "fast", check=False)
        assert await self._ctl(*_CTL, VERSION, self.name, "status", check=False) == 3

    async def drop(self) -> None:
        await self._ctl("pg_dropcluster", "--stop", VERSION, self.name)


_CTL = ("pg_ctlcluster", "--skip-systemctl-redirect")


@pytest.fixture(scope="module")
async def cluster() -> AsyncIterator[Cluster]:
    """The cluster, migrated (with the fault tasks' side table); dropped at the end."""
    made = Cluster()
    await made.create()
    try:
        await made.start()
        await asyncio.to_thread(upgrade, made.url)
        conn = await asyncpg.connect(made.url)
        try:
            await conn.execute(STARTS_TABLE)
        finally:
            await conn.close()
        yield made
    finally:
        await made.drop()


@pytest.fixture
async def down(cluster: Cluster) -> AsyncIterator[Cluster]:
    """The cluster, down when the test starts and when it ends."""
    await cluster.stop()
    try:
        yield cluster
    finally:
        await cluster.stop()


@dataclass
class Watched:
    """A process ``eventually`` watches: any exit while a test waits on it is a death."""

    process: Process

    def died(self) -> bool:
        return self.process.popen.poll() is not None

    def tail(self) -> str:
        return f"--- {self.process.name} (exit {self.process.popen.poll()}) ---\n{self.output()}"

    def output(self) -> str:
        return self.process.log.read_text(errors="replace")

    def waited(self) -> bool:
        """It said at least twice that it cannot connect yet (and keeps trying)."""
        return self.output().count(WAITING) >= 2


@pytest.fixture
def processes(down: Cluster, tmp_path: Path) -> Iterator[Processes]:
    """``jobkeeper`` processes on the down cluster, waiting up to 2 minutes for it."""
    started = Processes(tmp_path, down.url)
    started.env.update(
        JOBKEEPER_STARTUP_WAIT="120", FAULT_KIND_PREFIX="startup", PYTHONPATH=str(ROOT)
    )
    try:
        yield started
    finally:
        started.stop_all()


# --- waiting, then working -----------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_a_worker_started_while_postgres_is_down_waits_then_claims(
    down: Cluster, processes: Processes
) -> None:
    worker = Watched(processes.start("worker", "worker", TASKS))
    await eventually(worker.waited, what="the worker to wait", watch=[worker])
    await down.start()
    async with await JobManager.connect(down.url, wait=DEADLINE) as jobs:
        job = await jobs.submit("t", "startup.slow", {"seconds": [0.1]})

        async def done() -> bool:
            current = await jobs.get(job.id, tenant="t", consistency="strong")
            return current.status == "succeeded"

        await eventually(done, timeout=DEADLINE, what="the job to succeed", watch=[worker])
    assert "Traceback" not in worker.output()


@pytest.mark.timeout(120)
async def test_serve_started_while_postgres_is_down_waits_then_is_ready(
    down: Cluster, processes: Processes
) -> None:
    port = free_port()
    server = Watched(processes.start("serve", "serve", "--port", str(port)))
    await eventually(server.waited, what="serve to wait", watch=[server])
    await down.start()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2.0) as http:

        async def ready() -> bool:
            try:
                return (await http.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=DEADLINE, what="/readyz 200", watch=[server])


# --- the bound -----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("command", ["worker", "serve"])
async def test_nothing_coming_up_within_the_bound_ends_in_one_line(
    processes: Processes, command: str
) -> None:
    processes.env["JOBKEEPER_STARTUP_WAIT"] = "2"
    args = [TASKS] if command == "worker" else ["--port", str(free_port())]
    started = Watched(processes.start(command, command, *args))
    returned = await asyncio.to_thread(started.process.popen.wait, DEADLINE)
    output = started.output()
    assert returned == 1, output
    assert "Traceback" not in output, output
    assert output.count(WAITING) >= 2, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("error: connecting to Postgres: gave up after 2 s"), output


# --- the library call ----------------------------------------------------------------------------


async def test_connect_tries_once_unless_told_to_wait(
    down: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobkeeper.supervise"):
        with pytest.raises(DatabaseUnavailable) as once:
            await JobManager.connect(down.url)
        assert WAITING not in caplog.text
        with pytest.raises(DatabaseUnavailable) as waiting:
            await JobManager.connect(down.url, wait=1.0)
    assert "gave up" not in once.value.message
    assert waiting.value.message.startswith("connecting to Postgres: gave up after 1 s")
    assert caplog.text.count(WAITING) >= 2


async def test_connect_waits_for_a_database_that_comes_up(
    down: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="jobkeeper.supervise"):
        connecting = asyncio.create_task(JobManager.connect(down.url, wait=DEADLINE))
        try:
            await eventually(lambda: WAITING in caplog.text, what="connect to wait")
            await down.start()
        except BaseException:
            connecting.cancel()
            raise
        async with await connecting as jobs:
            await jobs.ping()


async def test_connect_does_not_wait_for_a_missing_schema(
    postgres_server_url: str,
) -> None:
    name = f"jobkeeper_empty_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        with pytest.raises(SchemaMissing):
            await asyncio.wait_for(JobManager.connect(url, wait=600), DEADLINE)
    finally:
        await drop_database(postgres_server_url, name)


@pytest.mark.parametrize("wait", [-1, float("nan"), True, "5"])
async def test_a_bad_wait_is_refused(database_url: str, wait: object) -> None:
    with pytest.raises(InvalidRequest):
        await JobManager.connect(database_url, wait=wait)  # type: ignore[arg-type]
