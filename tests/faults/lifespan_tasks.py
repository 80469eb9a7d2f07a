"""A registry with a lifespan, for ``jobkeeper worker tests.faults.lifespan_tasks:tasks``: it
opens a "resource" once per process (from ``LIFESPAN_TOKEN``; ``LIFESPAN_FAIL`` makes it raise),
and the handler returns what the resource holds."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from jobkeeper.worker import JobContext, TaskRegistry

PREFIX = os.environ.get("LIFESPAN_KIND_PREFIX", "lifespan")


@asynccontextmanager
async def resources() -> AsyncIterator[dict[str, Any]]:
    if os.environ.get("LIFESPAN_FAIL"):
        raise RuntimeError("the application's engine would not open")
    yield {"token": os.environ["LIFESPAN_TOKEN"], "pid": os.getpid()}


tasks = TaskRegistry(lifespan=resources)


@tasks.task(f"{PREFIX}.read")
async def read(ctx: JobContext, payload: Any) -> dict[str, Any]:
    return dict(ctx.resources)
