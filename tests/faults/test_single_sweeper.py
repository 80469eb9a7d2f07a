"""One sweeper at a time, across real OS processes: the session advisory lock behind
``Sweeper.sweep()`` keeps sweeps of concurrent processes apart, a held lock makes the others skip,
and a holder killed with SIGKILL frees it (the session dies with the process).

Every wait polls against a deadline, and every process started here is killed and awaited when
its test ends. The processes run ``tests/faults/sweeper_process.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from jobkeeper.maintenance import Sweeper
from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from support import eventually

ROOT = Path(__file__).parents[2]
SCRIPT = Path(__file__).with_name("sweeper_process.py")
DEADLINE = 30.0  # the bound of every wait; the expected times are about a second
PROCESSES = 3
LOOP_SECONDS = 3.0
DUE_JOBS = 300


class Processes:
    """Starts sweeper processes for one test; ``close()`` kills and awaits every one."""

    def __init__(self, database_url: str, tmp: Path) -> None:
        self.database_url = database_url
        self.tmp = tmp
        self.started: list[tuple[asyncio.subprocess.Process, Path]] = []

    async def start(self, mode: str, *args: str) -> asyncio.subprocess.Process:
        log = self.tmp / f"sweeper-{len(self.started)}.log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT),
                mode,
                self.database_url,
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                cwd=self.tmp,
            )
        finally:
            os.close(fd)
        self.started.append((proc, log))
        return proc

    def died(self) -> bool:
        """Whether a process failed (one that sweeps once exits 0 when it is done)."""
        return any(proc.returncode not in (None, 0) for proc, _ in self.started)

    def tail(self) -> str:
        return "\n".join(
            f"--- pid {proc.pid} exit {proc.returncode} ---\n"
            + (log.read_text(errors="replace")[-2000:] if log.exists() else "")
            for proc, log in self.started
        )

    async def finish(self, proc: asyncio.subprocess.Process) -> None:
        code = await asyncio.wait_for(proc.wait(), DEADLINE)
        assert code == 0, self.tail()

    async def close(self) -> None:
        for proc, _ in self.started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for proc, _ in self.started:
            await asyncio.wait_for(proc.wait(), DEADLINE)


@pytest.fixture
async def processes(database_url: str, tmp_path: Path) -> AsyncIterator[Processes]:
    started = Processes(database_url, tmp_path)
    try:
        yield started
    finally:
        await started.close()


def exists(path: Path) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await asyncio.to_thread(path.exists)

    return check


async def sweep_once(procs: Processes) -> dict[str, Any]:
    """A whole process that sweeps once; its ``SweepReport`` as a dict."""
    out = procs.tmp / f"once-{uuid.uuid4().hex[:8]}.json"
    await procs.finish(await procs.start("once", str(out)))
    report: dict[str, Any] = json.loads(out.read_text())
    return report


async def advisory_locks(database_url: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        return count
    finally:
        await conn.close()


@pytest.mark.timeout(120)
async def test_concurrent_processes_never_sweep_at_the_same_time(
    job_manager: JobManager, database_url: str, tenant: str, processes: Processes
) -> None:
    kind = f"sweep.{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:  # finished two days ago: due under the processes' one-day job_ttl
        ids = [
            r["id"]
            for r in await conn.fetch(
                "INSERT INTO jobs (id, tenant, kind, status, payload, finished_at)"
                " SELECT gen_random_uuid(), $1, $2, 'cancelled', '{}'::jsonb,"
                " now() - interval '2 days' - make_interval(secs => g)"
                " FROM generate_series(1, $3::int) AS g RETURNING id",
                tenant,
                kind,
                DUE_JOBS,
            )
        ]
    finally:
        await conn.close()

    go = processes.tmp / "go"
    outs = [processes.tmp / f"loop-{i}.json" for i in range(PROCESSES)]
    procs = [
        await processes.start("loop", kind, str(LOOP_SECONDS), str(go), str(out)) for out in outs
    ]
    for out in outs:
        await eventually(
            exists(Path(f"{out}.ready")),
            timeout=DEADLINE,
            what=f"{out.name} to be ready",
            watch=[processes],
        )
    go.write_text("go")
    for proc in procs:
        await processes.finish(proc)
    results = [json.loads(out.read_text()) for out in outs]

    # the lock windows of passes that swept never overlap, whichever processes they ran in
    windows = sorted(
        (held_from, held_to, i)
        for i, result in enumerate(results)
        for _, _, swept, held_from, held_to, _ in result["passes"]
        if swept
    )
    assert len(windows) >= 10, f"too few passes swept: {len(windows)}"
    for (_, earlier_to, a), (later_from, _, b) in itertools.pairwise(windows):
        assert earlier_to < later_from, f"passes of processes {a} and {b} overlapped"

    # the lock was contended, and more than one process got to sweep
    per_process = [
        (sum(1 for p in r["passes"] if p[2]), sum(1 for p in r["passes"] if not p[2]))
        for r in results
    ]
    assert sum(skipped for _, skipped in per_process) > 0, per_process
    assert sum(1 for swept, _ in per_process if swept) >= 2, per_process

    # every due job was expired exactly once, and its hook ran exactly once in all processes
    expired = sum(p[5] for r in results for p in r["passes"])
    hooked = [job_id for r in results for job_id in r["hooked"]]
    assert expired == DUE_JOBS
    assert sorted(hooked) == sorted(str(i) for i in ids)
    sys.stderr.write(f"\nsweeper passes (swept, skipped) per process: {per_process}\n")


async def test_a_held_lock_makes_another_process_skip_its_sweep(
    job_manager: JobManager, database_url: str, processes: Processes
) -> None:
    async with job_manager.sweep_lock() as held:
        assert held
        report = await sweep_once(processes)
        assert report["swept"] is False
        assert report == {"swept": False} | {k: 0 for k in report if k != "swept"}
    assert (await sweep_once(processes))["swept"] is True
    # the lock is taken and given back by every sweep: nothing is left held
    assert await advisory_locks(database_url) == 0


async def _holding(processes: Processes, *, idle_limit: float) -> asyncio.subprocess.Process:
    """A process that takes the sweeper lock and then does nothing."""
    ready = processes.tmp / "holding.json"
    holder = await processes.start("hold", str(ready), str(idle_limit))
    await eventually(
        exists(ready), timeout=DEADLINE, what="the holder to take the lock", watch=[processes]
    )
    assert json.loads(ready.read_text()) == {"held": True}
    return holder


async def test_a_stopped_holder_loses_the_lock_after_its_idle_limit(
    job_manager: JobManager, database_url: str, processes: Processes
) -> None:
    """A sweeper paused mid-pass (SIGSTOP: its connection stays open) must not keep every other
    process from sweeping, and so from recovering leases, for longer than its idle limit."""
    holder = await _holding(processes, idle_limit=1.0)
    holder.send_signal(signal.SIGSTOP)
    try:
        sweeper = Sweeper(job_manager)

        async def swept() -> bool:
            return (await sweeper.sweep()).swept

        await eventually(swept, timeout=DEADLINE, what="the stopped holder's lock to be freed")
    finally:
        holder.send_signal(signal.SIGCONT)


async def test_a_shorter_idle_timeout_of_the_database_is_kept(
    database_url: str, processes: Processes
) -> None:
    """The sweeper's bound only ever shortens how long its lock's transaction may idle: where the
    database (or role) already ends idle transactions sooner, that stays (a stopped sweeper of
    the fault suites held up recovery for its own 30 s instead of the database's 2 s)."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await admin.execute(
            f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = 1000'
        )
        holder = await _holding(processes, idle_limit=300.0)
        holder.send_signal(signal.SIGSTOP)
        try:
            async with await JobManager.connect(database_url, pool_size=2) as other:
                sweeper = Sweeper(other)

                async def swept() -> bool:
                    return (await sweeper.sweep()).swept

                await eventually(swept, timeout=DEADLINE, what="the database's bound to end it")
        finally:
            holder.send_signal(signal.SIGCONT)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET idle_in_transaction_session_timeout')
        await admin.close()


async def test_a_killed_holder_frees_the_lock(
    job_manager: JobManager, database_url: str, processes: Processes
) -> None:
    holder = await _holding(processes, idle_limit=300.0)

    sweeper = Sweeper(job_manager)
    assert (await sweeper.sweep()).swept is False
    assert await advisory_locks(database_url) == 1
    async with job_manager.sweep_lock() as held:
        assert not held

    holder.send_signal(signal.SIGKILL)
    assert await asyncio.wait_for(holder.wait(), DEADLINE) == -signal.SIGKILL

    async def swept() -> bool:
        return (await sweeper.sweep()).swept

    await eventually(swept, timeout=DEADLINE, what="the killed holder's lock to be freed")
    assert await advisory_locks(database_url) == 0
