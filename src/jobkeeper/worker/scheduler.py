"""The scheduler: each worker's loop that turns the due ticks of periodic schedules into jobs.

Every worker runs one, for the schedules of its kinds; no scheduler is elected. Several finding
the same tick due is expected, and harmless: ``JobManager.fire_schedule`` moves a schedule's
``next_tick`` on and inserts its jobs in one conditional statement that only one of them wins
(``postgres/schedules.py``), so each tick becomes exactly one job, and a killed worker's share
is simply done by the others. Due-ness is judged on the database's clock, not the worker's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from jobkeeper.domain.schedules import PayloadFunction, Schedule, plan_firing
from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.manager import JobManager
from jobkeeper.worker.registry import Periodic

__all__ = ["Scheduler"]

log = logging.getLogger("jobkeeper.scheduler")
_BATCH = 100


class Scheduler:
    """Declares the registry's ``periodic`` schedules (``declared``), then fires due ticks of
    the schedules of ``kinds`` (``run``), looking again at the next tick or every ``interval``
    seconds, whichever comes first (a schedule created or resumed elsewhere is seen within
    ``interval``)."""

    def __init__(
        self,
        jobs: JobManager,
        periodic: Sequence[Periodic],
        kinds: Sequence[str],
        *,
        interval: float = 1.0,
    ) -> None:
        self._jobs = jobs
        self._periodic = periodic
        self._kinds = tuple(kinds)
        self._interval = interval
        self._computed: dict[UUID, PayloadFunction] = {}

    async def declare(self) -> None:
        """Write the declared schedules (their definitions are the code's; pauses are kept)."""
        for periodic in self._periodic:
            schedule = await self._jobs.declare_schedule(periodic.schedule)
            if periodic.payload is not None:
                self._computed[schedule.id] = periodic.payload

    async def run(self) -> None:
        """Declare, then fire due ticks until cancelled; an outage is logged and waited out."""
        while True:
            try:
                await self.declare()
                break
            except DatabaseUnavailable as exc:
                log.warning("declaring schedules failed (%s); retrying", exc)
                await asyncio.sleep(self._interval)
        while True:
            try:
                delay = await self.fire_due()
            except DatabaseUnavailable as exc:
                log.warning("firing schedules failed (%s); retrying", exc)
                delay = self._interval
            await asyncio.sleep(delay)

    async def fire_due(self) -> float:
        """One pass over the due schedules; the seconds until the next tick (at most
        ``interval``; 0 when there may be more due at once)."""
        now, schedules = await self._jobs.due_schedules(
            self._kinds, list(self._computed), limit=_BATCH
        )
        if now is None:
            return self._interval
        failed = False
        for schedule in schedules:
            if schedule.next_tick > now:
                wait = (schedule.next_tick - now).total_seconds()
                return self._interval if failed else min(self._interval, wait)
            failed = not await self._fire(schedule, now) or failed
        return self._interval if failed else 0.0

    async def _fire(self, schedule: Schedule, now: datetime) -> bool:
        plan = plan_firing(schedule.spec, schedule.next_tick, now)
        compute = self._computed.get(schedule.id)
        zone = schedule.spec.zone
        try:
            ticks: list[tuple[datetime, Any]] = [
                (tick, None if compute is None else compute(tick.astimezone(zone)))
                for tick in plan.ticks
            ]
            await self._jobs.fire_schedule(schedule, ticks, plan.next_tick)
        except DatabaseUnavailable:
            raise
        except Exception:  # the application's payload function raised, or returned no JSON
            log.exception("the payload of schedule %s failed; its tick waits", schedule.name)
            return False
        return True
