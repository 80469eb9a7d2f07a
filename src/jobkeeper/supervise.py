"""Background loops that never end silently: ``supervised`` restarts a loop that raised, after
logging it once with its traceback, and backs off while it keeps failing; ``while_leased``
retries a worker's final write through a database blip for as long as its lease holds."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jobkeeper.errors import DatabaseUnavailable

__all__ = ["supervised", "while_leased"]

log = logging.getLogger("jobkeeper.supervise")
T = TypeVar("T")
_FIRST, _MAX = 0.05, 5.0


def _backoff(failures: int) -> float:
    return min(_MAX, _FIRST * 2.0 ** min(failures, 10)) * random.uniform(0.5, 1.0)


async def supervised(name: str, loop: Callable[[], Awaitable[None]]) -> None:
    """Run ``loop()`` until it returns (a loop that is done) or is cancelled; an exception
    is logged once with its traceback and ``loop()`` starts again after a backoff that grows
    while it keeps failing, so a bug neither ends the loop nor takes the process down."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception:
            # a loop that ran a while before failing is not failing in a row
            failures = 1 if time.monotonic() - started > _MAX else failures + 1
            delay = _backoff(failures)
            log.exception("%s failed unexpectedly; restarting in %.2f s", name, delay)
            await asyncio.sleep(delay)


async def while_leased(
    what: str, write: Callable[[], Awaitable[T]], *, valid_until: Callable[[], float]
) -> T:
    """``write()``, tried again with backoff while it raises ``DatabaseUnavailable`` and the
    lease it presents is still valid (``valid_until()``, on ``time.monotonic``): a finished job's
    outcome survives a blip instead of waiting out its lease and running again. Retrying is safe
    because every such write is fenced by the lease: if an earlier attempt did commit, the next
    one matches nothing. Past the lease the error is raised; recovery takes the job over."""
    failures = 0
    while True:
        try:
            return await write()
        except DatabaseUnavailable as exc:
            failures += 1
            delay = min(1.0, _backoff(failures))
            if time.monotonic() + delay >= valid_until():
                raise
            log.warning("%s failed (%s); retrying while the lease holds", what, exc)
            await asyncio.sleep(delay)
