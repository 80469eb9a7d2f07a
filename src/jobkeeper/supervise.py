"""Background loops that never end silently: ``supervised`` restarts a loop that raised, after
logging it once with its traceback, and backs off while it keeps failing; ``while_leased``
retries a worker's final write through a database blip for as long as its lease holds;
``until_reachable`` lets a starting process wait a bounded time for Postgres."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from jobkeeper.errors import DatabaseUnavailable

__all__ = ["supervised", "until_reachable", "while_leased"]

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
    return await _retried(what, write, until=valid_until, longest=1.0, why="while the lease holds")


async def until_reachable(what: str, attempt: Callable[[], Awaitable[T]], *, within: float) -> T:
    """``attempt()``, tried again with backoff while it raises ``DatabaseUnavailable``, for up to
    ``within`` seconds (0: once): a process started while Postgres is down (or restarting) waits
    for it, saying so at WARNING each time, instead of exiting. Past the bound the last error is
    raised again, in one line that says how long it waited. Any other error (a schema never
    migrated) is raised at once: waiting does not fix it."""
    deadline = time.monotonic() + within
    try:
        return await _retried(
            what, attempt, until=lambda: deadline, longest=2.0, why=f"(waiting up to {within:g} s)"
        )
    except DatabaseUnavailable as exc:
        if within <= 0:
            raise
        raise DatabaseUnavailable(f"{what}: gave up after {within:g} s: {exc.message}") from exc


async def _retried(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    until: Callable[[], float],
    longest: float,
    why: str,
) -> T:
    """``attempt()`` until it does not raise ``DatabaseUnavailable``, with backoff (at most
    ``longest`` s) and a WARNING per failure, while a retry would start before ``until()``."""
    failures = 0
    while True:
        try:
            return await attempt()
        except DatabaseUnavailable as exc:
            failures += 1
            delay = min(longest, _backoff(failures))
            if time.monotonic() + delay >= until():
                raise
            log.warning("%s failed (%s); retrying %s", what, exc, why)
            await asyncio.sleep(delay)
