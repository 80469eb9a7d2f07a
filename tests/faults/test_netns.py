"""Across hosts: Postgres, workers and an API replica in network namespaces of their own, linked
by veth pairs through a bridge (``tests/faults/netns.py``), and partitions made by taking a
host's link down: packets vanish, connections hang, nothing is reset.

* A worker cut off from Postgres past its lease: its job moves to a worker on another host and
  finishes there once; the cut-off worker's own late writes, delivered when the link heals, are
  refused by the lease fence; the worker lives through it and runs new jobs afterwards.
* An API replica cut off from Postgres: ``/readyz`` says 503 and reads that need Postgres answer
  503 problems (never a 500, never a hang); its cache serves nothing older than the staleness
  bound of docs/consistency.md; once healed it is ready and shows the newest version.

* A worker 0.4 s of round trip away (a delaying proxy: this kernel has no ``tc netem``) keeps
  its leases and runs each job once.

The replica's and the far worker's scenarios are long and marked ``faults_full``. Loss is not
exercised (no netem; docs/operations.md, "Across hosts").
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from jobkeeper.domain.status import JobStatus
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.settings import asyncpg_dsn
from support import eventually

from .netns import (
    HUB_ADDRESS,
    PG_PORT,
    Host,
    Network,
    Postgres,
    remove_stale,
    require_netns,
    start_on,
    start_replica,
)
from .support import DEADLINE, WorkerProcess, Workers, fault_workers, running_on

PROXY = Path(__file__).with_name("delay_proxy.py")
PROXY_PORT, ONE_WAY_DELAY = 6432, 0.2  # a round trip through the proxy gains 0.4 s
LEASE_SECONDS = 3.0
FEED_INTERVAL = 0.5
BOUND = 2 * FEED_INTERVAL + 1.0  # docs/consistency.md: the feed vouches no longer than this
TENANT = "default"  # the replicas run with auth disabled


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


@pytest.fixture
async def workers(hub: tuple[Network, Postgres], tmp_path: Path) -> AsyncIterator[Workers]:
    async with fault_workers(hub[1].url(), tmp_path, lease_seconds=LEASE_SECONDS) as started:
        yield started


# --- what the test reads ------------------------------------------------------------------------


def finished(jobs: JobManager, job_id: UUID) -> Callable[[], Any]:
    async def check() -> Any:
        job = await jobs.get(job_id, tenant=TENANT, consistency="strong")
        return job if job.terminal else None

    return check


# --- 1. a worker cut off past its lease ----------------------------------------------------------

# what a cut-off worker logs when its late write comes back refused (the write reached Postgres
# after the link healed and matched no lease) or was given up (its lease had passed)
FENCED = re.compile(r"finished but its lease was lost|recording 1 completions failed")


async def test_a_partitioned_worker_loses_its_job_is_fenced_and_recovers(
    hub: tuple[Network, Postgres],
    attach: Callable[[str], Host],
    admin: asyncpg.Connection,
    jobs: JobManager,
    workers: Workers,
) -> None:
    network, _ = hub
    host_a, host_b = attach("wa"), attach("wb")
    a = await workers.start(via=host_a.exec())
    # the first start runs 2.5 s (it ends while A is cut off), the re-run 1.5 s
    job = await jobs.submit(TENANT, workers.kind("slow"), {"seconds": [2.5, 1.5]})
    held = await eventually(
        lambda: running_on(admin, job.id, a), timeout=DEADLINE, what="A to run the job", watch=[a]
    )

    network.cut(host_a)
    cut_at = time.monotonic()
    b = await workers.start(via=host_b.exec())
    done = await eventually(
        finished(jobs, job.id), timeout=DEADLINE, what="B to take over and finish", watch=[a, b]
    )
    assert time.monotonic() - cut_at >= LEASE_SECONDS - 1.0, "taken over before A's lease ran out"
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.result["pid"] == b.pid
    assert done.attempts == 2
    starts = await admin.fetch(
        "SELECT n, pid FROM fault_starts WHERE job_id = $1 ORDER BY n", job.id
    )
    assert [(r["n"], r["pid"]) for r in starts] == [(0, a.pid), (1, b.pid)]
    events = await jobs.events(job.id, tenant=TENANT)
    lifecycle = [e.type for e in events if e.type != "progress"]
    assert lifecycle == ["submitted", "claimed", "retried", "claimed", "succeeded"]
    assert next(e for e in events if e.type == "retried").data["error"]["code"] == "lease_expired"
    assert held["lease_token"] != await admin.fetchval(
        "SELECT lease_token FROM jobs WHERE id = $1", job.id
    )

    b.proc.kill()  # B's part is over
    await b.proc.wait()
    network.heal(host_a)
    # A's statements, stuck in the cut link, now arrive: its success is refused by the fence
    await eventually(
        lambda: FENCED.search(a.output()),
        timeout=DEADLINE,
        what="A's late success to be refused",
        watch=[a],
    )
    after = await jobs.get(job.id, tenant=TENANT, consistency="strong")
    assert (after.version, after.status, after.result) == (done.version, done.status, done.result)
    assert [e.type for e in await jobs.events(job.id, tenant=TENANT)].count("succeeded") == 1

    # and A works again: a new job runs there
    again = await jobs.submit(TENANT, workers.kind("slow"), {"seconds": [0.2]})
    fresh = await eventually(
        finished(jobs, again.id), timeout=DEADLINE, what="A to run a new job", watch=[a]
    )
    assert fresh.status is JobStatus.SUCCEEDED, fresh.error
    assert fresh.result["pid"] == a.pid
    assert fresh.attempts == 1


# --- 2. a worker far away ------------------------------------------------------------------------


@pytest.mark.faults_full
async def test_a_worker_behind_added_latency_keeps_its_leases_and_runs_each_job_once(
    hub: tuple[Network, Postgres],
    attach: Callable[[str], Host],
    admin: asyncpg.Connection,
    jobs: JobManager,
    tmp_path: Path,
) -> None:
    """Delay without netem: the worker reaches Postgres through a proxy on the hub that holds
    every chunk back (``delay_proxy.py``). Jobs longer than the lease still run once, on one
    lease renewed by heartbeats that each take a slow round trip."""
    network, postgres = hub
    proxy = await start_on(
        network.hub_host, tmp_path / "proxy.log", str(PROXY),
        HUB_ADDRESS, str(PROXY_PORT), HUB_ADDRESS, str(PG_PORT), str(ONE_WAY_DELAY),
    )  # fmt: skip
    try:
        await eventually(
            lambda: "listening" in proxy.output(), timeout=DEADLINE, what="the proxy", watch=[proxy]
        )
        host = attach("wd")
        far = postgres.url(port=PROXY_PORT)
        async with fault_workers(far, tmp_path, lease_seconds=LEASE_SECONDS) as workers:
            worker = await workers.start(via=host.exec())
            seconds = 2 * LEASE_SECONDS
            submitted = [
                await jobs.submit(TENANT, workers.kind("slow"), {"seconds": [seconds]})
                for _ in range(4)
            ]
            # its connections come from the proxy (the hub's address), not from its own host
            assert await eventually(
                lambda: admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE client_addr = $1::inet",
                    HUB_ADDRESS,
                ),
                timeout=DEADLINE,
                what="the worker's connections through the proxy",
                watch=[worker, proxy],
            )
            for job in submitted:
                done = await eventually(
                    finished(jobs, job.id),
                    timeout=DEADLINE,
                    what="the far worker to finish",
                    watch=[worker, proxy],
                )
                assert done.status is JobStatus.SUCCEEDED, done.error
                assert (done.attempts, done.result["pid"]) == (1, worker.pid)
                events = await jobs.events(job.id, tenant=TENANT)
                lifecycle = [e.type for e in events if e.type != "progress"]
                assert lifecycle == ["submitted", "claimed", "succeeded"]
            assert not re.search(r"lease on \S+ lost|its lease was lost", worker.output()), (
                worker.tail()
            )
            assert not proxy.died(), proxy.tail()
    finally:
        proxy.proc.kill()
        await proxy.proc.wait()


# --- 4. a replica cut off ----------------------------------------------------------------------


@pytest.fixture
async def replica(
    hub: tuple[Network, Postgres], attach: Callable[[str], Host], tmp_path: Path
) -> AsyncIterator[tuple[Host, WorkerProcess, httpx.AsyncClient]]:
    _, postgres = hub
    host = attach("ra")
    proc, sock = await start_replica(
        host,
        postgres.url(),
        tmp_path,
        feed_interval=str(FEED_INTERVAL),
        sweep_interval="1",
        command_timeout="1",
    )
    transport = httpx.AsyncHTTPTransport(uds=str(sock))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://replica", timeout=DEADLINE
        ) as http:
            await eventually(
                lambda: sock.exists(), timeout=DEADLINE, what="the replica", watch=[proc]
            )
            yield host, proc, http
    finally:
        if proc.proc.returncode is None:
            proc.proc.kill()
        await proc.proc.wait()


async def answer(
    http: httpx.AsyncClient, path: str, **headers: str
) -> tuple[float, httpx.Response]:
    """The response and when it was asked for; never a 500 (a hang fails at the timeout)."""
    asked = time.monotonic()
    response = await http.get(path, headers=headers)
    assert response.status_code != 500, response.text
    return asked, response


@pytest.mark.faults_full
async def test_a_partitioned_replica_answers_503_serves_nothing_stale_and_recovers(
    hub: tuple[Network, Postgres],
    replica: tuple[Host, WorkerProcess, httpx.AsyncClient],
    jobs: JobManager,
) -> None:
    network, _ = hub
    host, proc, http = replica

    async def ready() -> bool:
        return (await answer(http, "/readyz"))[1].status_code == 200

    await eventually(ready, timeout=DEADLINE, what="the replica to be ready", watch=[proc])
    watched = await jobs.submit(TENANT, "netns.watched", {})
    unread = await jobs.submit(TENANT, "netns.unread", {})
    _, first = await answer(http, f"/jobs/{watched.id}")
    assert (first.status_code, first.json()["version"]) == (200, 1)  # now in its cache

    network.cut(host)
    cancelled = await jobs.cancel(watched.id, tenant=TENANT)  # version 2, the replica cannot hear
    changed_at = time.monotonic()
    assert cancelled.version == 2

    # until its feed stops vouching, its cached copy may be served: within the bound, no longer
    seen: list[tuple[float, int, int | None]] = []

    async def not_vouched() -> Any:
        asked, cached = await answer(http, f"/jobs/{watched.id}")
        seen.append((asked, cached.status_code, cached.json().get("version")))
        _, probe = await answer(http, "/readyz")
        body = probe.json()
        return None if body["cache_vouched"] else (probe.status_code, body)

    status, body = await eventually(
        not_vouched, timeout=DEADLINE, what="the feed to stop vouching", watch=[proc]
    )
    assert (status, body["status"], body["database"]) == (503, "not_ready", False)
    stale = [(t - changed_at, code) for t, code, v in seen if v == 1 and t > changed_at + BOUND]
    assert not stale, f"version 1 served past the {BOUND} s bound: {stale}"

    # partitioned and saying so: every read that needs Postgres is a 503 problem
    for path, headers in (
        (f"/jobs/{watched.id}", {}),  # cached, but the feed cannot vouch for it
        (f"/jobs/{watched.id}", {"Cache-Control": "no-cache"}),  # a strong read
        (f"/jobs/{unread.id}", {}),  # never cached
    ):
        _, response = await answer(http, path, **headers)
        assert response.status_code == 503, (path, headers, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "database_unavailable"

    network.heal(host)
    await eventually(ready, timeout=DEADLINE, what="the replica to be ready again", watch=[proc])
    for job_id, version in ((watched.id, 2), (unread.id, 1)):
        _, response = await answer(http, f"/jobs/{job_id}")
        assert (response.status_code, response.json()["version"]) == (200, version)
    assert json.loads((await answer(http, f"/jobs/{watched.id}"))[1].text)["status"] == "cancelled"
    assert not proc.died(), proc.tail()
