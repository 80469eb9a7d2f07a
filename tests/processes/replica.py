"""A replica process for the coherence tests: polls its own cache for a set of jobs.

Usage: replica.py URL TENANT IDS_FILE OUT_FILE DONE_FILE LINGER_SECONDS FEED_MODE
Writes OUT_FILE.ready once its cache is warm, then reads every job in a loop until DONE_FILE
exists (the writer's output: its last commit has returned) and LINGER_SECONDS more, so a slow
start of the writer on a busy machine never ends the observation before the stream does; then
writes, per job, the runs of versions it saw: [[version, first_seen_ns, last_seen_ns], ...]
(CLOCK_MONOTONIC, shared by every process on the machine), plus its feed and cache status.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, cast

from tests.support import eventually

from jobkeeper.manager import JobManager

DEADLINE_S = 50.0  # below the test's own bound on each process (60 s)


async def observe(
    url: str, tenant: str, ids: list[str], ready: Path, done: Path, linger: float, mode: str
) -> dict[str, Any]:
    feed_mode = cast(Literal["notify", "poll"], mode)
    async with await JobManager.connect(url, feed_mode=feed_mode, feed_interval=0.5) as jobs:
        runs: list[list[list[int]]] = [[] for _ in ids]
        for job_id in ids:
            await jobs.get(job_id, tenant=tenant)
        await asyncio.to_thread(ready.write_text, "ready")
        finished = asyncio.create_task(
            eventually(lambda: asyncio.to_thread(done.exists), timeout=DEADLINE_S, what=done.name)
        )
        end, streaming = time.monotonic() + DEADLINE_S, True
        while time.monotonic() < end:
            if streaming and finished.done():
                end, streaming = time.monotonic() + linger, False
            for i, job_id in enumerate(ids):
                version = (await jobs.get(job_id, tenant=tenant)).version
                now = time.monotonic_ns()
                seen = runs[i]
                if seen and seen[-1][0] == version:
                    seen[-1][2] = now
                else:
                    seen.append([version, now, now])
            await asyncio.sleep(
                0.001
            )  # sample, don't spin: two replicas must not starve the writer
        finished.cancel()
        return {
            "runs": runs,
            "feed": dataclasses.asdict(jobs.feed_status()),
            "cache": dataclasses.asdict(jobs.cache_stats()),
        }


if __name__ == "__main__":
    url, tenant, ids_file, out_file, done_file, linger, mode = sys.argv[1:8]
    ids = json.loads(Path(ids_file).read_text())
    ready = Path(out_file + ".ready")
    result = asyncio.run(observe(url, tenant, ids, ready, Path(done_file), float(linger), mode))
    Path(out_file).write_text(json.dumps(result))
