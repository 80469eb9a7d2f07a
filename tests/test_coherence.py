"""Cross-replica coherence with real OS processes: two replicas poll their caches while a writer
process commits a stream of changes. No replica may show a version that was superseded longer than
the stated worst-case bound ago, and no replica may ever go back to an older version.

These are the tests named in docs/consistency.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from jobkeeper.manager import JobManager
from jobkeeper.settings import asyncpg_dsn
from support import eventually

PROCESSES = Path(__file__).parent / "processes"
FEED_INTERVAL = 0.5  # what the replica processes use
WORST_CASE_S = 2 * FEED_INTERVAL + 1.0  # the stated worst case (docs/consistency.md)
WRITE_SECONDS = 4.0
JOBS = 20
DEADLINE = 60.0


@dataclass
class Outcome:
    commits: list[list[int]]  # [job_index, version, committed_ns]
    replicas: list[dict[str, Any]]  # {"runs": per job [[version, first_ns, last_ns]], "feed", ...}


def _start(script: str, *args: str) -> asyncio.Future[asyncio.subprocess.Process]:
    return asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            sys.executable,
            str(PROCESSES / script),
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
    )


def _written(path: Path, procs: list[asyncio.subprocess.Process]) -> Callable[[], Awaitable[bool]]:
    """A check: whether ``path`` exists yet; it fails the test once a process has exited."""

    async def check() -> bool:
        if await asyncio.to_thread(path.exists):
            return True
        for proc in procs:
            if proc.returncode is not None:
                _, err = await proc.communicate()
                pytest.fail(f"a process exited early: {err.decode()[-2000:]}")
        return False

    return check


async def _finish(proc: asyncio.subprocess.Process) -> None:
    _, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode == 0, err.decode()[-3000:]


async def _kill_listeners_mid_stream(url: str, tenant: str) -> None:
    """Once the stream is flowing, terminate every change-feed backend (replicas' included)."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:

        async def going() -> bool:
            progress: int = await conn.fetchval(
                "SELECT count(*) FROM job_events e JOIN jobs j ON j.id = e.job_id"
                " WHERE j.tenant = $1 AND e.type = 'progress'",
                tenant,
            )
            return progress >= 300

        await eventually(going, timeout=DEADLINE, what="the writer to get going")
        killed = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'jobkeeper-feed' AND datname = current_database()"
        )
        assert len(killed) >= 2
    finally:
        await conn.close()


async def run_stream(
    manager: JobManager, url: str, tenant: str, tmp: Path, *, mode: str, kill: bool
) -> Outcome:
    ids = [str((await manager.submit(tenant, "coherence", {"n": i})).id) for i in range(JOBS)]
    ids_file = tmp / "ids.json"
    ids_file.write_text(json.dumps(ids))
    linger = str(WORST_CASE_S + 1.0)  # past the writer's last commit
    writes = tmp / "writer.json"
    outs = [tmp / f"replica{i}.json" for i in range(2)]
    procs: list[asyncio.subprocess.Process] = []
    try:
        for out in outs:
            procs.append(
                await _start(
                    "replica.py", url, tenant, str(ids_file), str(out), str(writes), linger, mode
                )
            )
        for out in outs:
            ready = Path(str(out) + ".ready")
            await eventually(_written(ready, procs), timeout=DEADLINE, what=ready.name)
        writer = await _start(
            "writer.py", url, tenant, str(ids_file), str(writes), str(WRITE_SECONDS), mode
        )
        procs.append(writer)
        if kill:
            await _kill_listeners_mid_stream(url, tenant)
        for proc in procs:
            await _finish(proc)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    return Outcome(
        commits=json.loads(writes.read_text()),
        replicas=[json.loads(out.read_text()) for out in outs],
    )


def check(outcome: Outcome) -> list[float]:
    """Assert the guarantees; return the observed visibility lags (ms) for the report."""
    committed: dict[tuple[int, int], int] = {(i, v): t for i, v, t in outcome.commits}
    final = {i: v for i, v, _ in outcome.commits}
    bound_ns = int(WORST_CASE_S * 1e9)
    lags: list[float] = []
    for replica in outcome.replicas:
        for i, runs in enumerate(replica["runs"]):
            versions = [v for v, _, _ in runs]
            assert versions == sorted(versions), f"job {i} went back in time: {versions}"
            for version, first_ns, last_ns in runs:
                superseded = committed.get((i, version + 1))
                if superseded is not None:
                    stale_for = (last_ns - superseded) / 1e9
                    assert last_ns <= superseded + bound_ns, (
                        f"job {i}: version {version} still shown {stale_for:.3f} s after "
                        f"version {version + 1} was committed (bound {WORST_CASE_S} s)"
                    )
                if (i, version) in committed:
                    lags.append((first_ns - committed[(i, version)]) / 1e6)
            assert runs[-1][0] == final[i], f"job {i} never caught up: {runs[-1]} vs {final[i]}"
    return lags


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("mode", "kill"),
    [("notify", False), ("notify", True), ("poll", False)],
    ids=["notify", "notify-listener-killed", "poll"],
)
async def test_replicas_never_show_stale_or_older_versions(
    job_manager: JobManager,
    database_url: str,
    tenant: str,
    tmp_path: Path,
    mode: str,
    kill: bool,
) -> None:
    outcome = await run_stream(job_manager, database_url, tenant, tmp_path, mode=mode, kill=kill)
    assert len(outcome.commits) >= 10 * JOBS, "the writer did not produce a meaningful stream"
    lags = sorted(check(outcome))
    for replica in outcome.replicas:
        assert replica["cache"]["hits"] > replica["cache"]["misses"], "the cache was not in play"
        assert replica["feed"]["vouching"], "the replica did not end in sync"
        if kill:
            assert replica["feed"]["reconnects"] >= 1
        if mode == "poll":
            assert replica["feed"]["notifications"] == 0
    p99 = lags[int(len(lags) * 0.99)]
    sys.stderr.write(f"\n{mode} kill={kill}: {len(lags)} versions seen, lag p99 {p99:.2f} ms\n")
