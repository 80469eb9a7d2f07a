"""The harness of the fault tests: worker processes (`jobkeeper worker`) that are always killed
and awaited, and that ``support.eventually(watch=...)`` watches: a wait fails as soon as one
dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
JOBKEEPER = Path(sys.executable).parent / "jobkeeper"
DEADLINE = 30.0  # the bound of every wait; the expected times are a few seconds


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
        self, *args: str, target: str | None = None, grace: float = 30.0, **settings: str
    ) -> WorkerProcess:
        """``jobkeeper worker TARGET ARGS`` with ``JOBKEEPER_<SETTING>`` from ``settings``."""
        log = self._tmp / f"worker-{len(self.started)}.log"
        chosen = {**self._settings, "shutdown_grace": str(grace), **settings}
        env = {**process_env(self.database_url, chosen), self._prefix_var: self.prefix}
        worker = await spawn(
            "worker", target or self._tasks, *args, env=env, log=log, cwd=self._tmp
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


async def spawn(*args: str, env: Mapping[str, str], log: Path, cwd: Path) -> WorkerProcess:
    """``jobkeeper ARGS`` with its output in ``log``, started in ``cwd`` (so no stray ``.env``
    file is read)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        proc = await asyncio.create_subprocess_exec(
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
