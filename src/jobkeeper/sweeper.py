"""The sweeper: the periodic upkeep any process may run, safely at the same time as others.

One pass re-queues (or fails with ``lease_expired``) jobs whose lease expired and applies the
``on_timeout`` of questions past their deadline, in bounded batches (``FOR UPDATE SKIP LOCKED``
keeps concurrent sweepers apart). Workers run it between claims; the API runs it in its lifespan.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.manager import JobManager

__all__ = ["SweepReport", "Sweeper"]

log = logging.getLogger("jobkeeper.sweeper")
_BATCH = 100


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one pass changed."""

    leases_recovered: int
    inputs_timed_out: int


class Sweeper:
    """Runs ``sweep()`` every ``interval`` seconds with ``run()``, or once on demand."""

    def __init__(
        self,
        jobs: JobManager,
        *,
        interval: float = 5.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        self._jobs = jobs
        self._interval = interval
        self._backoff = (backoff_base, backoff_max)

    async def sweep(self) -> SweepReport:
        """One pass, batch by batch until nothing is left to do."""
        base, cap = self._backoff
        recovered = timed_out = 0
        while batch := await self._jobs.recover_expired(
            limit=_BATCH, backoff_base=base, backoff_max=cap
        ):
            recovered += len(batch)
        while batch := await self._jobs.expire_input_deadlines(limit=_BATCH):
            timed_out += len(batch)
        if recovered or timed_out:
            log.info("sweep: %d leases recovered, %d questions timed out", recovered, timed_out)
        return SweepReport(recovered, timed_out)

    async def run(self) -> None:
        """Sweep forever (until cancelled); a database outage is logged and waited out."""
        while True:
            try:
                await self.sweep()
            except DatabaseUnavailable as exc:
                log.warning("sweep failed: %s", exc)
            await asyncio.sleep(self._interval)
