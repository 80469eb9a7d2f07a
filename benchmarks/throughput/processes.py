"""Worker processes: ``bench_throughput.py --role SYSTEM`` started by the parent, told to go,
stopped and measured (CPU time of the workers and of their Postgres backends).

The parent starts a configuration's processes and waits until each has printed ``ready`` (set
up and connected), then writes ``go`` to all of them, so start-up is outside the clock. On the
way out every child gets SIGTERM, then SIGKILL if it has not exited within ``STOP_TIMEOUT``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from common import proc_cpu
from systems import NAMES, Config, WorkerArgs, load

SCRIPT = Path(__file__).resolve().parent.parent / "bench_throughput.py"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0


# --- in the worker process --------------------------------------------------------------------


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    """The options the parent starts a worker process with (not for people)."""
    parser.add_argument("--role", choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--drain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--uvloop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)


def run_role(args: argparse.Namespace) -> int:
    """Be one worker process of system ``args.role``; with ``--profile``, under cProfile from
    "go" on (start-up is not in the profile), its stats written to that file at the end."""
    # CPU time of this thread, not wall time: on a shared machine, preemption would otherwise be
    # charged to whatever function happened to be running
    profiler = cProfile.Profile(time.thread_time) if args.profile else None

    async def ready() -> None:
        """Tell the parent we are set up ("ready" on stdout), then wait for its "go" on stdin."""
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        os.dup2(2, 1)  # anything printed later goes to stderr and cannot fill the parent's pipe
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if line.strip() != "go":
            raise SystemExit(0)
        if profiler is not None:
            profiler.enable()

    worker = WorkerArgs(args.concurrency, args.batch, args.drain)
    work = load(args.role).run_worker(args.url, worker, ready)
    try:
        if args.uvloop:
            import uvloop

            uvloop.run(work)
        else:
            asyncio.run(work)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    return 0


# --- in the parent ------------------------------------------------------------------------------


@dataclass(slots=True)
class Child:
    proc: asyncio.subprocess.Process
    log: Path


def _argv(
    system: str, config: Config, url: str, args: WorkerArgs, profile: Path | None
) -> list[str]:
    argv = [sys.executable, str(SCRIPT), "--role", system, "--url", url]
    argv += ["--concurrency", str(args.concurrency), "--batch", str(args.batch)]
    if args.drain:
        argv.append("--drain")
    if config.uvloop:
        argv.append("--uvloop")
    if profile is not None:
        argv += ["--profile", str(profile)]
    return argv


@asynccontextmanager
async def workers(
    system: str,
    config: Config,
    url: str,
    logs: Path,
    *,
    drain: bool = False,
    profile: Path | None = None,
) -> AsyncIterator[list[Child]]:
    """Start ``config.processes`` worker processes of ``system``, wait until each is ready; stop
    them all on exit. ``drain``: the queue is pre-loaded; ``profile``: run under cProfile."""
    args = WorkerArgs(config.args.concurrency, config.args.batch, drain)
    children: list[Child] = []
    try:
        for i in range(config.processes):
            log = logs / f"{system}-{uuid.uuid4().hex[:6]}-{i}.log"
            with log.open("wb") as err:
                proc = await asyncio.create_subprocess_exec(
                    *_argv(system, config, url, args, profile),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=err,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            children.append(Child(proc, log))
        for child in children:
            assert child.proc.stdout is not None
            try:
                line = await asyncio.wait_for(child.proc.stdout.readline(), READY_TIMEOUT)
            except TimeoutError:
                line = b""
            if line.strip() != b"ready":
                tail = child.log.read_text(errors="replace")[-2_000:]
                raise RuntimeError(f"{system} worker did not start:\n{tail}")
        yield children
    finally:
        await stop_children(children)


async def go(children: Sequence[Child]) -> None:
    for child in children:
        assert child.proc.stdin is not None
        child.proc.stdin.write(b"go\n")
        await child.proc.stdin.drain()


async def stop_children(children: Sequence[Child]) -> None:
    """SIGTERM (graceful), then SIGKILL after ``STOP_TIMEOUT``; only our own children."""
    for child in children:
        if child.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            await asyncio.wait_for(child.proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.proc.kill()
            await child.proc.wait()


async def backend_pids(conn: asyncpg.Connection) -> list[int]:
    """Postgres backends connected to this connection's database."""
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid IS NOT NULL"
    )
    return [int(r["pid"]) for r in rows]


@dataclass(slots=True)
class CpuMeter:
    """CPU used by a set of worker processes and by the Postgres backends of one database."""

    workers: Sequence[int]
    conn: asyncpg.Connection
    start_workers: float = 0.0
    start_backends: dict[int, float] = field(default_factory=dict)
    # the last CPU reading of every backend seen, kept once it is gone: a worker may open
    # connections after the start and close them before the stop (procrastinate's does both)
    seen_backends: dict[int, float] = field(default_factory=dict)

    async def start(self) -> None:
        self.start_workers = sum(proc_cpu(p) for p in self.workers)
        self.start_backends = {p: proc_cpu(p) for p in await backend_pids(self.conn)}
        self.seen_backends = dict(self.start_backends)

    async def sample(self) -> None:
        """Read the backends connected now; call it while the workers run."""
        for pid in await backend_pids(self.conn):
            self.seen_backends[pid] = max(self.seen_backends.get(pid, 0.0), proc_cpu(pid))

    async def stop(self) -> tuple[float, float]:
        """(worker CPU s, Postgres backend CPU s) since ``start``; call before workers exit."""
        workers = sum(proc_cpu(p) for p in self.workers) - self.start_workers
        await self.sample()
        backends = sum(
            cpu - self.start_backends.get(pid, 0.0) for pid, cpu in self.seen_backends.items()
        )
        return workers, backends
