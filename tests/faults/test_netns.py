"""Across hosts: Postgres and the processes that use it in network namespaces of their own,
linked by veth pairs through a bridge (``tests/faults/netns.py``), and partitions made by taking a
host's link down: packets vanish, connections hang, nothing is reset.

* The holder of the sweeper lock cut off mid-sweep loses the lock, so other processes sweep (and
  recover expired leases) again.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.settings import asyncpg_dsn
from support import eventually

from .netns import Host, Network, Postgres, remove_stale, require_netns, start_on
from .support import DEADLINE

SWEEPER = Path(__file__).with_name("sweeper_process.py")


# --- the hosts -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub() -> Iterator[tuple[Network, Postgres]]:
    """The hub namespace with Postgres, migrated; removed (cluster, namespaces) whatever happens."""
    require_netns()
    remove_stale()
    network = Network().open()
    try:
        postgres = Postgres(network).start()
        try:
            upgrade(postgres.local_url())
            yield network, postgres
        finally:
            postgres.stop()
    finally:
        network.close()


@pytest.fixture
def attach(hub: tuple[Network, Postgres]) -> Iterator[Callable[[str], Host]]:
    """Make hosts for one test; they (and whatever runs on them) are deleted when it ends."""
    network, _ = hub
    made: list[Host] = []

    def make(role: str) -> Host:
        made.append(network.attach(role))
        return made[-1]

    try:
        yield make
    finally:
        for host in made:
            network.detach(host)


@pytest.fixture(scope="module")
async def admin(hub: tuple[Network, Postgres]) -> AsyncIterator[asyncpg.Connection]:
    """The test's own connection (through the Unix socket, outside every partition), with the
    side table of the fault tasks and jobkeeper's tables on its search path."""
    _, postgres = hub
    conn = await asyncpg.connect(asyncpg_dsn(postgres.local_url()))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS public.fault_starts (job_id uuid NOT NULL, n int NOT NULL,"
            " attempt int NOT NULL, pid int NOT NULL, at timestamptz NOT NULL"
            " DEFAULT clock_timestamp())"
        )
        await conn.execute("ALTER DATABASE postgres SET search_path TO jobkeeper, public")
        await conn.execute("SET search_path TO jobkeeper, public")
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def jobs(
    hub: tuple[Network, Postgres], admin: asyncpg.Connection
) -> AsyncIterator[JobManager]:
    _, postgres = hub
    async with await JobManager.connect(postgres.local_url()) as manager:
        yield manager


# --- 2. the sweeper lock's holder cut off --------------------------------------------------------


async def test_a_partitioned_holder_of_the_sweeper_lock_loses_it(
    hub: tuple[Network, Postgres],
    attach: Callable[[str], Host],
    jobs: JobManager,
    tmp_path: Path,
) -> None:
    """A worker cut off mid-sweep must not stop every other process from sweeping: its backend,
    idle in the transaction that holds the lock, hears nothing from it, not even a reset. Before
    Postgres was told to probe that connection, the lock stayed held for the kernel's two hours
    of keepalive silence, and no expired lease anywhere was recovered meanwhile."""
    network, postgres = hub
    host = attach("sw")
    ready = tmp_path / "holding.json"
    holder = await start_on(
        host, tmp_path / "holder.log", str(SWEEPER), "hold", postgres.url(), str(ready)
    )
    await eventually(ready.exists, timeout=DEADLINE, what="the lock to be taken", watch=[holder])
    assert json.loads(ready.read_text()) == {"held": True}
    async with jobs.sweep_lock() as held:
        assert not held

    network.cut(host)

    async def free() -> bool:
        async with jobs.sweep_lock() as held:
            return held

    await eventually(
        free, timeout=DEADLINE, what="the cut-off holder's lock to end", watch=[holder]
    )
