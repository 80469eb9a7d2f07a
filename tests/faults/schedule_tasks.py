"""The periodic handler that ``test_schedules_processes.py`` runs in worker processes.

Loaded as ``tests.faults.schedule_tasks:tasks``; its kind and tenant are ``$SCHEDULE_PREFIX``
(fresh per test). Every second a tick is due; the payload, computed by whichever worker fires
the tick, names that worker's pid, so the test sees who fired what.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["PREFIX", "tasks"]

PREFIX = os.environ.get("SCHEDULE_PREFIX", "schedule")

tasks = TaskRegistry()


@tasks.periodic(
    every=timedelta(seconds=1),
    tenant=PREFIX,
    misfire="all",
    payload=lambda tick: {"fired_by": os.getpid(), "tick": tick.isoformat()},
)
@tasks.task(f"{PREFIX}.tick")
async def tick(ctx: JobContext, payload: Any) -> dict[str, Any]:
    return {"ran_by": os.getpid()}
