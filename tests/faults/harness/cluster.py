"""The processes of a fault scenario, on loopback: API replicas (``jobkeeper serve``, each on a
free port) and workers (``jobkeeper worker tests.faults.harness.tasks:tasks``).

Each replica or worker is a ``Member``: a slot that the injectors may kill (it is then restarted
as a new process in the same slot: a replica on the same port) or stop and continue. Every
process is recorded, so at the end the harness can tell a process it killed from one that died
on its own, and ``close()`` kills and awaits them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest

from jobkeeper.settings import asyncpg_dsn

from ..support import DEADLINE, WorkerProcess, process_env, spawn

__all__ = ["ADMIN_APP", "Cluster", "Member"]

TASKS = "tests.faults.harness.tasks:tasks"
# the harness's own connections: the backend-terminating injector spares them
ADMIN_APP = "faults-admin"
READY_POLL = 0.05

Role = Literal["replica", "worker"]


@dataclass
class Member:
    """One replica or worker slot. ``incarnation`` counts its processes (0 for the first)."""

    role: Role
    index: int
    process: WorkerProcess
    port: int | None = None
    worker_id: str | None = None
    incarnation: int = 0
    stopped: bool = False
    killed: list[WorkerProcess] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.index}"

    def died(self) -> bool:
        return self.process.died()

    def tail(self) -> str:
        return self.process.tail()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Cluster:
    """Starts, kills, stops and restarts the scenario's processes; ``faults`` records each
    injected fault (what, whom, when in wall-clock seconds, the clock Postgres's ``now()`` uses
    on this machine)."""

    def __init__(self, database_url: str, tmp: Path, settings: dict[str, str]) -> None:
        self.database_url = database_url
        self._tmp = tmp
        self._env = process_env(database_url, settings)
        self.replicas: list[Member] = []
        self.workers: list[Member] = []
        self.faults: list[dict[str, Any]] = []
        self.admin: asyncpg.Pool | None = None

    @property
    def members(self) -> list[Member]:
        return [*self.replicas, *self.workers]

    async def start(self, *, replicas: int, workers: int) -> None:
        self.admin = await asyncpg.create_pool(
            asyncpg_dsn(self.database_url),
            min_size=1,
            max_size=4,
            server_settings={"application_name": ADMIN_APP},
        )
        for i in range(replicas):
            port = free_port()
            self.replicas.append(Member("replica", i, await self._spawn_replica(i, port, 0), port))
        for i in range(workers):
            self.workers.append(Member("worker", i, await self._spawn_worker(i, 0)))
        for member in self.members:
            await self._ready(member)

    # --- processes -------------------------------------------------------------------------------

    def _log(self, member: str, incarnation: int) -> Path:
        return self._tmp / f"{member}.{incarnation}.log"

    async def _spawn_replica(self, index: int, port: int, incarnation: int) -> WorkerProcess:
        log = self._log(f"replica-{index}", incarnation)
        return await spawn("serve", "--port", str(port), env=self._env, log=log, cwd=self._tmp)

    async def _spawn_worker(self, index: int, incarnation: int) -> WorkerProcess:
        log = self._log(f"worker-{index}", incarnation)
        return await spawn("worker", TASKS, env=self._env, log=log, cwd=self._tmp)

    async def _ready(self, member: Member) -> None:
        """Wait until a replica answers ``/readyz`` with 200, or a worker has registered."""
        end = time.monotonic() + DEADLINE
        while True:
            if member.died():
                pytest.fail(f"{member.name} died while starting\n{member.tail()}")
            if await self._is_ready(member):
                return
            if time.monotonic() > end:
                pytest.fail(f"{member.name} not ready after {DEADLINE} s\n{member.tail()}")
            await asyncio.sleep(READY_POLL)

    async def _is_ready(self, member: Member) -> bool:
        if member.role == "replica":
            try:
                async with httpx.AsyncClient(timeout=1.0) as http:
                    response = await http.get(f"{self.url(member)}/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200
        assert self.admin is not None
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            found = await self.admin.fetchval(
                "SELECT id FROM jobkeeper.workers WHERE pid = $1", member.process.pid
            )
            if found is not None:
                member.worker_id = str(found)
                return True
        return False

    def url(self, member: Member) -> str:
        return f"http://127.0.0.1:{member.port}"

    # --- faults ----------------------------------------------------------------------------------

    def _record(self, fault: str, member: Member, **more: Any) -> dict[str, Any]:
        entry = {
            "fault": fault,
            "target": member.name,
            "pid": member.process.pid,
            "worker_id": member.worker_id,
            "at": time.time(),
            **more,
        }
        self.faults.append(entry)
        return entry

    async def kill(self, member: Member) -> None:
        """SIGKILL the member's process, then start a new one in its slot and wait until it is
        ready."""
        victim = member.process
        self._record(f"kill_{member.role}", member)
        member.killed.append(victim)
        victim.proc.send_signal(signal.SIGKILL)  # a stopped process dies too
        await asyncio.wait_for(victim.proc.wait(), DEADLINE)
        member.stopped = False
        member.incarnation += 1
        if member.role == "replica":
            assert member.port is not None
            member.process = await self._spawn_replica(
                member.index, member.port, member.incarnation
            )
        else:
            member.worker_id = None
            member.process = await self._spawn_worker(member.index, member.incarnation)
        await self._ready(member)

    def stop(self, member: Member) -> None:
        """SIGSTOP: the process holds its leases and connections but does nothing."""
        self._record(f"stop_{member.role}", member)
        member.stopped = True
        member.process.proc.send_signal(signal.SIGSTOP)

    def cont(self, member: Member) -> None:
        if member.stopped:
            member.process.proc.send_signal(signal.SIGCONT)
            member.stopped = False
            for entry in reversed(self.faults):
                if entry.get("pid") == member.process.pid and entry["fault"].startswith("stop_"):
                    entry["continued_at"] = time.time()
                    break

    async def terminate_backends(self) -> int:
        """``pg_terminate_backend`` every backend of the scenario's database but the harness's."""
        assert self.admin is not None
        killed: int = await self.admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name <> $1) AS t",
            ADMIN_APP,
        )
        self.record("terminate_backends", killed=killed)
        return killed

    def record(self, fault: str, **more: Any) -> None:
        """A fault that hits no member in particular."""
        self.faults.append({"fault": fault, "at": time.time(), **more})

    # --- the end ---------------------------------------------------------------------------------

    def unexpected_deaths(self) -> list[str]:
        """Every current process that ended although nothing killed it."""
        return [member.tail() for member in self.members if member.died()]

    def logs(self) -> dict[str, str]:
        """Each process's whole log, by file name (killed ones included)."""
        processes = [p for m in self.members for p in (*m.killed, m.process)]
        return {p.log.name: p.output() for p in processes}

    async def close(self) -> None:
        for member in self.members:
            if member.stopped:
                with contextlib.suppress(ProcessLookupError):
                    member.process.proc.send_signal(signal.SIGCONT)
            if member.process.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    member.process.proc.kill()
        for member in self.members:
            await asyncio.wait_for(member.process.proc.wait(), DEADLINE)
        if self.admin is not None:
            await self.admin.close()
