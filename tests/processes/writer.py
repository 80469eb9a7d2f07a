"""A writer process for the coherence tests: commits a stream of version bumps to a set of jobs.

Usage: writer.py URL TENANT IDS_FILE OUT_FILE SECONDS FEED_MODE
Moves every job to running, then reports progress on them round-robin for SECONDS, and writes
[[job_index, version, committed_ns], ...] (CLOCK_MONOTONIC taken when the commit returned).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Literal, cast
from uuid import UUID

from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Progress
from jobkeeper.manager import JobManager
from jobkeeper.testing import data_layer


async def write(
    url: str, tenant: str, ids: list[UUID], seconds: float, mode: str
) -> list[tuple[int, int, int]]:
    feed_mode = cast(Literal["notify", "poll"], mode)
    commits: list[tuple[int, int, int]] = []
    async with await JobManager.connect(url, feed_mode=feed_mode) as jobs:
        repo = data_layer(jobs).jobs
        for i, job_id in enumerate(ids):
            job = await repo.transition(job_id, tenant, JobStatus.RUNNING, event="claimed")
            commits.append((i, job.version, time.monotonic_ns()))
        end = time.monotonic() + seconds
        step = 0
        while time.monotonic() < end:
            i = step % len(ids)
            job = await repo.progress(ids[i], tenant, Progress(None, f"step {step}"))
            commits.append((i, job.version, time.monotonic_ns()))
            step += 1
    return commits


if __name__ == "__main__":
    url, tenant, ids_file, out_file, seconds, mode = sys.argv[1:7]
    ids = [UUID(i) for i in json.loads(Path(ids_file).read_text())]
    commits = asyncio.run(write(url, tenant, ids, float(seconds), mode))
    Path(out_file).write_text(json.dumps(commits))
