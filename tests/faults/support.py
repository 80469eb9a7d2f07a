"""The harness of the fault tests: worker processes (`jobkeeper worker`) that are always killed
and awaited, and that ``support.eventually(watch=...)`` watches: a wait fails as soon as one
dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

ROOT = Path(__file__).parents[2]
JOBKEEPER = Path(sys.executable).parent / "jobkeeper"
DEADLINE = 30.0  # the bound of every wait; the expected times are a few seconds
FAULT_TASKS = "tests.faults.fault_tasks:tasks"
LEASE_SECONDS = 1.5  # the lease of the conftest's workers
# where the fault tasks record every start of a handler (tests/faults/fault_tasks.py)
STARTS_TABLE = (
    "CREATE TABLE IF NOT EXISTS fault_starts (job_id uuid NOT NULL, n int NOT NULL,"
    " attempt int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
)


@dataclass
class WorkerProcess:
    proc: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def died(self) -> bool:
        """A worker runs until it is told to stop: any exit while a test waits is a death."""
        return self.proc.returncode is not None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self) -> str:
        return (
            f"--- {self.log.name} (pid {self.pid}, exit {self.proc.returncode}) ---\n"
            + self.output()[-3000:]
        )


class Workers:
    """Starts worker processes for one test; ``close()`` kills and awaits every one of them.

    Their task module names its kinds after ``$prefix_var`` (a fresh prefix per test), so tests
    sharing a database never run each other's jobs.
    """

    def __init__(
        self,
        database_url: str,
        tmp: Path,
        *,
        tasks: str,
        prefix_var: str,
        settings: Mapping[str, str] = {},
    ) -> None:
        self.database_url = database_url
        self.prefix = f"{prefix_var.split('_')[0].lower()}-{uuid.uuid4().hex[:10]}"
        self._tmp = tmp
        self._tasks = tasks
        self._prefix_var = prefix_var
        self._settings = dict(settings)
        self.started: list[WorkerProcess] = []

    def kind(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    async def start(
        self,
        *args: str,
        target: str | None = None,
        grace: float = 30.0,
        via: Sequence[str] = (),
        **settings: str,
    ) -> WorkerProcess:
        """``jobkeeper worker TARGET ARGS`` with ``JOBKEEPER_<SETTING>`` from ``settings``,
        run through ``via`` if given (``ip netns exec NAME``: on another host)."""
        log = self._tmp / f"worker-{len(self.started)}.log"
        chosen = {**self._settings, "shutdown_grace": str(grace), **settings}
        env = {**process_env(self.database_url, chosen), self._prefix_var: self.prefix}
        worker = await spawn(
            "worker", target or self._tasks, *args, env=env, log=log, cwd=self._tmp, via=via
        )
        self.started.append(worker)
        return worker

    async def close(self) -> None:
        for worker in self.started:
            if worker.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
        for worker in self.started:
            await asyncio.wait_for(worker.proc.wait(), DEADLINE)


def process_env(database_url: str, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``jobkeeper`` process: this one's without any ``JOBKEEPER_*``, plus
    the database, ``JOBKEEPER_<SETTING>`` for each of ``settings`` and the repository on
    ``PYTHONPATH`` (task modules are imported from ``tests``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBKEEPER_")}
    env.update(
        PYTHONPATH=str(ROOT),
        JOBKEEPER_DATABASE_URL=database_url,
        **{f"JOBKEEPER_{name.upper()}": value for name, value in settings.items()},
    )
    return env


async def spawn(
    *args: str, env: Mapping[str, str], log: Path, cwd: Path, via: Sequence[str] = ()
) -> WorkerProcess:
    """``jobkeeper ARGS`` with its output in ``log``, started in ``cwd`` (so no stray ``.env``
    file is read), through ``via`` if given (``ip netns exec NAME``: on another host)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
            *via,
            str(JOBKEEPER),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=fd,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
    finally:
        os.close(fd)
    return WorkerProcess(proc, log)


async def exit_code(worker: WorkerProcess, within: float) -> int:
    try:
        return await asyncio.wait_for(worker.proc.wait(), within)
    except TimeoutError:
        pytest.fail(f"worker did not exit within {within} s\n{worker.tail()}")


async def running_on(db: asyncpg.Connection, job_id: UUID, worker: WorkerProcess) -> Any:
    """The job's lease row while ``worker`` holds it and its handler has started there."""
    return await db.fetchrow(
        "SELECT j.lease_token, j.worker_id, j.attempts FROM jobs AS j"
        " JOIN fault_starts AS s ON s.job_id = j.id AND s.pid = $2"
        " WHERE j.id = $1 AND j.status = 'running'"
        " AND j.worker_id IN (SELECT id FROM workers WHERE pid = $2)",
        job_id,
        worker.pid,
    )


@asynccontextmanager
async def fault_workers(
    database_url: str,
    tmp: Path,
    *,
    lease_seconds: float,
    tasks: str = FAULT_TASKS,
    prefix_var: str = "FAULT_KIND_PREFIX",
) -> AsyncIterator[Workers]:
    """A ``Workers`` of ``tasks`` (the fault tasks, ``tests/faults/fault_tasks.py``, unless
    another module's) with a short lease and quick retries, every process killed when the block
    ends."""
    started = Workers(
        database_url,
        tmp,
        tasks=tasks,
        prefix_var=prefix_var,
        settings={
            "lease_seconds": str(lease_seconds),
            "backoff_base": "0.05",
            "backoff_max": "0.2",
        },
    )
    try:
        yield started
    finally:
        await started.close()
