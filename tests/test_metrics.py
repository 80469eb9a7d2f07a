"""Metrics are scraped in Prometheus text and say what happened: a process's writes as counters,
the shared queue and live workers as gauges."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobkeeper.demo import tasks
from jobkeeper.maintenance import Retention, Sweeper, SweepReport
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.settings import asyncpg_dsn
from support import eventually, make_worker


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_counters_and_gauges(job_manager: JobManager, tenant: str) -> None:
    metrics = Metrics(job_manager)
    ok = await job_manager.submit(tenant, "demo.sleep", {"seconds": 0.05, "steps": 1})
    bad = await job_manager.submit(tenant, "demo.fail", {"permanent": True})
    dropped = await job_manager.submit(tenant, "demo.sleep", {"seconds": 60})
    await job_manager.cancel(dropped.id, tenant=tenant)
    worker = make_worker(job_manager, tasks, kinds=["demo.sleep", "demo.fail"], poll_interval=0.2)
    running = asyncio.create_task(worker.run())
    try:

        async def finished() -> bool:
            return all(
                [
                    (await job_manager.get(j.id, tenant=tenant, consistency="strong")).terminal
                    for j in (ok, bad)
                ]
            )

        await eventually(finished, timeout=30, what="the jobs to finish")
        await job_manager.get(ok.id, tenant=tenant)  # a cached read
        await metrics.refresh()
        found = samples(metrics.render().decode())
    finally:
        worker.stop()
        await asyncio.wait_for(running, 30)
    assert found[("jobkeeper_jobs_submitted_total", (("kind", "demo.sleep"),))] >= 2
    assert (
        found[("jobkeeper_jobs_finished_total", (("kind", "demo.sleep"), ("outcome", "succeeded")))]
        >= 1
    )
    assert (
        found[("jobkeeper_jobs_finished_total", (("kind", "demo.fail"), ("outcome", "failed")))]
        >= 1
    )
    assert (
        found[("jobkeeper_jobs_finished_total", (("kind", "demo.sleep"), ("outcome", "cancelled")))]
        >= 1
    )
    assert found[("jobkeeper_claim_latency_seconds_count", ())] >= 2
    assert found[("jobkeeper_run_seconds_count", (("kind", "demo.sleep"),))] >= 1
    assert found[("jobkeeper_listener_connected", ())] == 1
    assert (
        found[("jobkeeper_cache_hits_total", ())] + found[("jobkeeper_cache_misses_total", ())] > 0
    )
    for status in ("queued", "running", "waiting_input", "waiting_children"):
        assert ("jobkeeper_jobs", (("status", status),)) in found
    assert found[("jobkeeper_live_workers", ())] >= 1  # it was still registered at refresh


async def test_retention_counts_no_job_as_finished_again(
    job_manager: JobManager, tenant: str, db: asyncpg.Connection
) -> None:
    """Clearing an old job's input and deleting it are the sweeper's (its report counts them):
    the job finished once, and jobs_finished_total says so once."""
    metrics = Metrics(job_manager)
    kind = f"metrics.{uuid.uuid4().hex[:12]}"
    job = await job_manager.submit(tenant, kind, {"x": 1})
    [lease] = await job_manager.claim(uuid.uuid4(), kinds=[kind], limit=1, lease_seconds=60)
    assert await job_manager.mark_succeeded([(lease, "{}", None)]) == [job.id]
    finished = ("jobkeeper_jobs_finished_total", (("kind", kind), ("outcome", "succeeded")))
    assert samples(metrics.render().decode())[finished] == 1
    await db.execute(
        "UPDATE jobs SET finished_at = now() - interval '2 days' WHERE id = $1", job.id
    )
    day = 86_400.0

    async def sweep(job_ttl: float) -> SweepReport:
        retention = Retention(payload_ttl=day, job_ttl=job_ttl, tombstone_ttl=day)

        async def swept() -> SweepReport | None:
            report = await Sweeper(job_manager, retention=retention).sweep()
            return report if report.swept else None

        return await eventually(swept, timeout=10, what="the sweeper lock to be free")

    assert (await sweep(30 * day)).payloads_cleared >= 1
    assert (await sweep(day)).jobs_expired >= 1
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE id = $1", job.id) == 0
    assert samples(metrics.render().decode())[finished] == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.timeout(90)
async def test_a_worker_process_serves_metrics(database_url: str) -> None:
    port = _free_port()
    env = {**os.environ, "JOBKEEPER_DATABASE_URL": asyncpg_dsn(database_url)}
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "jobkeeper"),
        "worker",
        "jobkeeper.demo:tasks",
        "--kind",
        "demo.cpu",
        "--metrics-port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with httpx.AsyncClient() as http:

            async def scraped() -> httpx.Response | None:
                try:
                    return await http.get(f"http://127.0.0.1:{port}/metrics")
                except httpx.TransportError:
                    assert proc.returncode is None, "the worker exited"
                    return None

            response = await eventually(scraped, timeout=60, what="the metrics endpoint")
        assert response.status_code == 200
        assert ("jobkeeper_listener_connected", ()) in samples(response.text)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
