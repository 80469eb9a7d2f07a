"""A Postgres cluster of the fault suite's own (Debian's ``pg_createcluster`` on a free port), for
the scenario that restarts Postgres: the shared server of the other tests is never restarted.
``own_postgres()`` creates and starts it, migrates a template database in it, and drops the
whole cluster at the end, whatever happened."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import asyncpg

from jobkeeper.migrate import upgrade
from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import create_database

from .cluster import free_port

__all__ = ["OwnPostgres", "available", "own_postgres"]

TEMPLATE = "faults_template"
VERSIONS = Path("/usr/lib/postgresql")


def available() -> bool:
    """Whether Debian's cluster tools and a server version are installed here."""
    return bool(shutil.which("pg_createcluster")) and VERSIONS.is_dir()


@dataclass(frozen=True)
class OwnPostgres:
    version: str
    name: str
    url: str  # the server (database ``postgres``)
    template: str

    async def restart(self, mode: Literal["fast", "immediate"]) -> None:
        """Restart the server: ``fast`` (clients disconnected, a clean shutdown) or ``immediate``
        (no shutdown at all: crash recovery at the start). Returns once it accepts connections."""
        await _run("pg_ctlcluster", self.version, self.name, "restart", "-m", mode)


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {out.decode()}")
    return out.decode()


def _newest_version() -> str:
    return max((p.name for p in VERSIONS.iterdir() if p.name.isdigit()), key=int)


@contextlib.asynccontextmanager
async def own_postgres() -> AsyncIterator[OwnPostgres]:
    version = _newest_version()
    name = f"faults_{uuid.uuid4().hex[:8]}"
    port = free_port()
    await _run(
        "pg_createcluster", version, name, "--port", str(port), "--start", "--", "--auth=trust"
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        template_url = await create_database(url, TEMPLATE)
        await asyncio.to_thread(upgrade, template_url)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:  # a template must have no connections when it is copied
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                TEMPLATE,
            )
        finally:
            await conn.close()
        yield OwnPostgres(version, name, url, TEMPLATE)
    finally:
        await _run("pg_dropcluster", version, name, "--stop")
