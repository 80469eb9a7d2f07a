"""One fault scenario, end to end: a fresh database, the processes, the client's workload, the
injected faults, the drain, and the checker's report.

The workload: ``jobs`` jobs submitted over HTTP by ``SUBMITTERS`` concurrent submitters, each with
its own idempotency key: mostly short jobs, some slow ones (so faults find jobs running) and some
that ask a question (answered by the client; every other one is answered and cancelled at once).
Every ``storm_every``-th job is submitted by ``STORM`` concurrent requests with the same key.

The jobs are submitted at ``rate`` per second, and the faults (``Scenario.faults``) are each
injected every ``interval`` seconds while they are:
- ``kill_worker``: SIGKILL a worker (round robin), then start a new one in its slot;
- ``kill_replica``: SIGKILL a replica, then start a new one on the same port;
- ``stop_worker``: SIGSTOP a worker for twice its lease, then SIGCONT;
- ``terminate_backends``: ``pg_terminate_backend`` every backend of the database but the
  harness's own;
- ``restart_postgres``: a fast, then an immediate restart of the scenario's own Postgres cluster
  (``pgcluster.py``), alternately.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import create_database, drop_database

from .checker import Report, Run, check
from .client import Client
from .cluster import Cluster, Member
from .pgcluster import OwnPostgres
from .tasks import ASK, SHORT, SLOW

__all__ = ["FAULTS", "Scenario", "run_scenario"]

LEASE_SECONDS = 3.0
SETTINGS = {
    "auth": "disabled",
    "log_level": "WARNING",
    "lease_seconds": str(LEASE_SECONDS),
    "sweep_interval": "0.5",
    "backoff_base": "0.05",
    "backoff_max": "0.5",
    "worker_concurrency": "8",
    "shutdown_grace": "2",
    "pool_size": "8",
}
SUBMITTERS = 16
STORM = 12  # concurrent requests of one idempotency storm
DRAIN = 120.0  # seconds the acknowledged jobs get to finish once the faults stop
OVERDUE_BOUND = 30.0  # seconds a running job's expired lease may go unrecovered (generous)
MONITOR_EVERY = 0.5


@dataclass(frozen=True)
class Scenario:
    name: str
    jobs: int
    rate: float  # jobs submitted per second, so the faults find work in flight throughout
    faults: tuple[str, ...]
    interval: float = 4.0  # seconds between two injections of each fault
    storm_every: int = 50
    slow_share: float = 0.2
    ask_share: float = 0.15


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def _injectors(
    cluster: Cluster, postgres: OwnPostgres | None
) -> dict[str, Callable[[asyncio.Event, float], Awaitable[None]]]:
    async def kill(members: list[Member], stop: asyncio.Event, interval: float) -> None:
        for member in itertools.cycle(members):
            await _pause(stop, interval)
            if stop.is_set():
                return
            await cluster.kill(member)

    async def stop_worker(stop: asyncio.Event, interval: float) -> None:
        for member in itertools.cycle(cluster.workers):
            await _pause(stop, interval)
            if stop.is_set():
                return
            cluster.stop(member)
            try:
                await asyncio.sleep(2 * LEASE_SECONDS)  # past the lease, whatever else happens
            finally:
                cluster.cont(member)

    async def terminate_backends(stop: asyncio.Event, interval: float) -> None:
        while True:
            await _pause(stop, interval)
            if stop.is_set():
                return
            await cluster.terminate_backends()

    async def restart_postgres(stop: asyncio.Event, interval: float) -> None:
        assert postgres is not None, "restart_postgres needs the scenario's own Postgres"
        for mode in itertools.cycle(("fast", "immediate")):
            await _pause(stop, interval)
            if stop.is_set():
                return
            began = time.time()
            await postgres.restart(mode)
            cluster.record(f"restart_postgres_{mode}", down_seconds=round(time.time() - began, 2))

    return {
        "kill_worker": functools.partial(kill, cluster.workers),
        "kill_replica": functools.partial(kill, cluster.replicas),
        "stop_worker": stop_worker,
        "terminate_backends": terminate_backends,
        "restart_postgres": restart_postgres,
    }


FAULTS = ("kill_worker", "kill_replica", "stop_worker", "terminate_backends", "restart_postgres")


def _job(n: int, scenario: Scenario, rng: random.Random) -> tuple[str, dict[str, Any]]:
    draw = rng.random()
    if draw < scenario.ask_share:
        return ASK, {"n": n}
    if draw < scenario.ask_share + scenario.slow_share:
        return SLOW, {"n": n, "seconds": round(rng.uniform(1.0, 3.0), 2)}
    return SHORT, {"n": n}


async def _workload(client: Client, scenario: Scenario, rng: random.Random) -> None:
    numbers = iter(range(scenario.jobs))
    start = time.monotonic()

    async def submitter() -> None:
        for n in numbers:
            await asyncio.sleep(max(0.0, start + n / scenario.rate - time.monotonic()))
            kind, payload = _job(n, scenario, rng)
            key = f"job-{n}-{uuid.uuid4().hex[:8]}"
            if n % scenario.storm_every == 0:
                job_id = await client.storm(key, kind, payload, STORM)
            else:
                job_id = await client.submit(key, kind, payload)
            if job_id is not None and kind == ASK:
                client.ask_jobs.add(job_id)
                if n % 2:
                    client.racing.add(job_id)

    await asyncio.gather(*(submitter() for _ in range(SUBMITTERS)))


async def _monitor(cluster: Cluster, stop: asyncio.Event, overdue: list[float]) -> None:
    """Sample how long the most overdue running job's lease has been expired."""
    assert cluster.admin is not None
    while not stop.is_set():
        with contextlib.suppress(Exception):
            seconds = await cluster.admin.fetchval(
                "SELECT coalesce(max(extract(epoch FROM now() - lease_expires_at)), 0)::float8"
                " FROM jobkeeper.jobs WHERE status = 'running' AND lease_expires_at < now()"
            )
            overdue.append(float(seconds))
        await _pause(stop, MONITOR_EVERY)


async def _unfinished(cluster: Cluster, ids: list[str]) -> int:
    assert cluster.admin is not None
    count: int = await cluster.admin.fetchval(
        "SELECT count(*) FROM jobkeeper.jobs WHERE id = ANY($1::uuid[])"
        " AND status NOT IN ('succeeded', 'failed', 'cancelled')",
        ids,
    )
    return count


async def _drain(cluster: Cluster, client: Client) -> None:
    end = time.monotonic() + DRAIN
    left = None
    while True:
        with contextlib.suppress(asyncpg.PostgresError, OSError):  # Postgres restarting
            left = await _unfinished(cluster, client.acked)
        if left == 0:
            return
        if time.monotonic() > end:
            pytest.fail(f"{left} acknowledged jobs still unfinished after {DRAIN} s")
        for member in cluster.members:
            if member.died():
                pytest.fail(f"{member.name} died during the drain\n{member.tail()}")
        await asyncio.sleep(0.2)


async def run_scenario(
    scenario: Scenario,
    server_url: str,
    template: str,
    tmp: Path,
    *,
    postgres: OwnPostgres | None = None,
    seed: int = 12,
) -> Report:
    """Run ``scenario`` on a fresh database of ``server_url`` (a copy of ``template``) and check
    it. ``postgres`` is the cluster ``restart_postgres`` restarts (``server_url`` is its)."""
    name = f"faults_{scenario.name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_url, name, template=template)
    cluster = Cluster(url, tmp, SETTINGS)
    started = time.monotonic()
    try:
        await cluster.start(replicas=2, workers=3)
        injectors = _injectors(cluster, postgres)
        stop_faults, stop_reads = asyncio.Event(), asyncio.Event()
        overdue: list[float] = []
        client = Client(cluster, tmp / "acks.jsonl", tmp / "reads.jsonl")
        background = [
            asyncio.ensure_future(client.answerer(stop_reads)),
            asyncio.ensure_future(_monitor(cluster, stop_reads, overdue)),
            *(asyncio.ensure_future(client.poller(r, stop_reads)) for r in cluster.replicas),
        ]
        faults = [
            asyncio.ensure_future(injectors[f](stop_faults, scenario.interval))
            for f in scenario.faults
        ]
        try:
            await _workload(client, scenario, random.Random(seed))
            stop_faults.set()
            await asyncio.gather(*faults)
            fault_phase = time.monotonic() - started
            await _drain(cluster, client)
        finally:
            stop_faults.set()
            stop_reads.set()
            for task in faults:
                task.cancel()
            await asyncio.gather(*faults, return_exceptions=True)
            await asyncio.gather(*background, return_exceptions=True)
            await client.close()
        deaths = cluster.unexpected_deaths()
        logs = cluster.logs()
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            report = await check(
                conn,
                Run(
                    ack_log=tmp / "acks.jsonl",
                    reads_log=tmp / "reads.jsonl",
                    statuses=client.statuses,
                    faults=cluster.faults,
                    deaths=deaths,
                    logs=logs,
                    overdue_max=max(overdue, default=0.0),
                    overdue_bound=OVERDUE_BOUND,
                ),
            )
        finally:
            await conn.close()
        report.figures.update(
            scenario=scenario.name,
            jobs=scenario.jobs,
            fault_phase_seconds=round(fault_phase, 1),
            total_seconds=round(time.monotonic() - started, 1),
        )
        (tmp / "report.json").write_text(json.dumps(report.figures, indent=2, default=str))
        (tmp / "faults.json").write_text(json.dumps(cluster.faults, indent=2, default=str))
        (tmp / "violations.txt").write_text(report.summary())
        return report
    finally:
        await cluster.close()
        await drop_database(server_url, name)
