"""Time, as jobkeeper writes and waits on it: UTC timestamps in the ``Z`` form the API uses,
and a sleep that a wake-up cuts short."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime

__all__ = ["nap", "utc_text"]


def utc_text(moment: datetime) -> str:
    """An aware UTC datetime as ISO 8601 with ``Z`` (``2026-12-01T20:59:01.5Z``)."""
    return moment.isoformat().replace("+00:00", "Z")


async def nap(wake: asyncio.Event, seconds: float) -> None:
    """Wait until ``wake`` is set or ``seconds`` pass, then clear it for the next wait."""
    # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as the
    # event is set (a stop() does both), and the task would then wait forever
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await wake.wait()
    wake.clear()
