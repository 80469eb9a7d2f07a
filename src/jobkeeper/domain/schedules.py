"""Periodic schedules without I/O: what a schedule says, and which ticks it has.

A schedule is a cron expression read on the wall clock of a timezone (``"*/5 * * * *"`` in
``Europe/Stockholm``), or an interval (``every=timedelta(seconds=30)``) in real time. Its ticks
are instants (timezone-aware, UTC); each tick becomes at most one job (Postgres enforces it, see
``postgres/schedules.py``).

The wall-clock rule (docs/workers.md, "Periodic schedules"): each matching wall-clock time runs
once.

* A time the clock skips (spring forward, ``02:30`` in Stockholm on the last Sunday of March)
  runs at the first instant after the gap (``03:00`` local); several skipped times become that
  one tick.
* A time the clock shows twice (fall back, ``02:30`` on the last Sunday of October) runs at its
  first occurrence (summer time); the repeated hour does not run again.

Intervals ignore the timezone: ticks are the multiples of ``every`` since the Unix epoch, in UTC
(``every=1h`` ticks on the hour of UTC).

After downtime, when a scheduler finds several ticks due, the schedule's ``misfire`` policy says
which become jobs: ``latest`` (the default: the most recent only), ``all`` (every one, the most
recent ``max_catch_up`` at most) or ``none`` (only a tick at most ``ON_TIME`` late: nothing
missed runs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeAlias
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from jobkeeper.domain.validate import optional_text, validate_new_job
from jobkeeper.domain.values import NewJob
from jobkeeper.errors import InvalidRequest

__all__ = [
    "MAX_CATCH_UP",
    "MISFIRE_POLICIES",
    "ON_TIME",
    "FirePlan",
    "Misfire",
    "NewSchedule",
    "PayloadFunction",
    "Schedule",
    "ScheduleSpec",
    "next_tick",
    "plan_firing",
    "validate_schedule",
    "validate_spec",
]

Misfire: TypeAlias = Literal["latest", "all", "none"]
MISFIRE_POLICIES: tuple[Misfire, ...] = ("latest", "all", "none")
MAX_CATCH_UP = 1_000
# under misfire="none", a tick found later than this counts as missed and does not run
ON_TIME = timedelta(seconds=60)
# ``every`` is whole seconds, from 1 second to a year
_MAX_EVERY = 366 * 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
# a payload computed per tick, from the tick (in the schedule's timezone)
PayloadFunction: TypeAlias = Callable[[datetime], Any]


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """When a schedule ticks and what happens to ticks missed: exactly one of ``cron`` (five
    fields, minute resolution, or a nickname such as ``@hourly``) and ``every``."""

    cron: str | None
    every: timedelta | None
    timezone: str
    misfire: Misfire
    max_catch_up: int

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """A validated schedule, ready to insert: its timing and the job each tick submits
    (``job.payload_json`` is ``null`` when ``computed_payload``: a worker computes it per tick)."""

    tenant: str
    name: str
    spec: ScheduleSpec
    job: NewJob
    computed_payload: bool
    paused: bool


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule as committed. ``next_tick`` is the next tick not yet handled; ``last_tick``
    the latest tick that became a job. ``declared``: written by a worker from
    ``@tasks.periodic`` (it is declared again, with its pause kept, whenever a worker starts)."""

    id: UUID
    tenant: str
    name: str
    kind: str
    spec: ScheduleSpec
    payload: Any
    computed_payload: bool
    priority: int
    max_attempts: int
    concurrency_key: str | None
    paused: bool
    declared: bool
    next_tick: datetime
    last_tick: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class FirePlan:
    """What a scheduler does with a due schedule: submit a job for each of ``ticks`` (oldest
    first) and move ``next_tick`` on to ``next_tick``."""

    ticks: tuple[datetime, ...]
    next_tick: datetime


def _zone(timezone: object) -> str:
    if not isinstance(timezone, str) or not timezone or len(timezone) > 64:
        raise InvalidRequest("timezone", "an IANA timezone name such as 'Europe/Stockholm'")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder, such as "Europe"
        raise InvalidRequest("timezone", f"unknown timezone {timezone!r}") from None
    return timezone


def _cron(cron: object) -> str:
    if not isinstance(cron, str) or len(cron) > 255:
        raise InvalidRequest("cron", "a cron expression such as '*/5 * * * *'")
    text = " ".join(cron.split())
    # five fields (minute resolution) or a nickname: croniter reads a sixth field as seconds
    # and a seventh as years, which no other cron does; intervals cover sub-minute schedules
    fields = text.split(" ")
    if not (len(fields) == 5 or (len(fields) == 1 and text.startswith("@"))):
        raise InvalidRequest("cron", f"{cron!r}: five fields (minute hour day month weekday)")
    if not croniter.is_valid(text):
        raise InvalidRequest("cron", f"{cron!r} is not a valid cron expression")
    try:  # valid, yet maybe never matching ("0 0 30 2 *"): croniter gives up after years
        croniter(text, _EPOCH.replace(tzinfo=None)).get_next(datetime)
    except CroniterError:
        raise InvalidRequest("cron", f"{cron!r} never matches a date") from None
    return text


def validate_spec(
    *,
    cron: object = None,
    every: object = None,
    timezone: object = "UTC",
    misfire: object = "latest",
    max_catch_up: object = 100,
) -> ScheduleSpec:
    """Check a schedule's timing; raise ``InvalidRequest`` naming the first bad field."""
    if (cron is None) == (every is None):
        raise InvalidRequest("cron", "exactly one of cron and every is required")
    interval = None
    if every is not None:
        if (
            not isinstance(every, timedelta)
            or every % _SECOND
            or not (_SECOND <= every <= timedelta(seconds=_MAX_EVERY))
        ):
            raise InvalidRequest("every", f"whole seconds from 1 to {_MAX_EVERY}")
        interval = every
    if misfire not in MISFIRE_POLICIES:
        raise InvalidRequest("misfire", f"one of {list(MISFIRE_POLICIES)}")
    if (
        isinstance(max_catch_up, bool)
        or not isinstance(max_catch_up, int)
        or not 1 <= max_catch_up <= MAX_CATCH_UP
    ):
        raise InvalidRequest("max_catch_up", f"an integer from 1 to {MAX_CATCH_UP} is required")
    return ScheduleSpec(
        cron=None if cron is None else _cron(cron),
        every=interval,
        timezone=_zone(timezone),
        misfire=misfire,
        max_catch_up=max_catch_up,
    )


def validate_schedule(
    *,
    tenant: object,
    name: object,
    kind: object,
    spec: ScheduleSpec,
    payload: Any = None,
    priority: object = 0,
    max_attempts: object = 3,
    concurrency_key: object = None,
    paused: object = False,
) -> NewSchedule:
    """Check a whole schedule: its name (1 to 255 characters), and the job each tick submits
    (the rules of a submit). A callable ``payload`` is computed per tick by a worker."""
    computed = callable(payload)
    job = validate_new_job(
        tenant=tenant,
        kind=kind,
        payload=None if computed else payload,
        priority=priority,
        max_attempts=max_attempts,
        run_after=None,
        idempotency_key=None,
        concurrency_key=concurrency_key,
        pinned=False,
    )
    checked = optional_text("name", name)
    if checked is None:
        raise InvalidRequest("name", "a string of 1 to 255 characters is required")
    if not isinstance(paused, bool):
        raise InvalidRequest("paused", "a boolean is required")
    return NewSchedule(job.tenant, checked, spec, job, computed, paused)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC) a naive wall-clock time of ``zone`` stands for: its first occurrence
    when the clock shows it twice, the end of the gap when the clock skips it."""
    moment = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the earlier offset
    if moment.astimezone(zone).replace(tzinfo=None) == wall:
        return moment
    # in a gap: fold=1 reads it with the offset after the change, landing before the change;
    # fold=0 lands after it. The change itself is the first instant with the later offset.
    before = int(wall.replace(tzinfo=zone, fold=1).timestamp())
    after = int(moment.timestamp())
    offset = moment.astimezone(zone).utcoffset()
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == offset:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def next_tick(spec: ScheduleSpec, after: datetime) -> datetime:
    """The first tick strictly after the instant ``after`` (aware), in UTC."""
    if spec.every is not None:
        periods = (after - _EPOCH) // spec.every
        return _EPOCH + (periods + 1) * spec.every
    assert spec.cron is not None
    zone = spec.zone
    ticks = croniter(spec.cron, _local(after, zone))
    while True:  # a wall time of a repeated hour may stand for an instant before ``after``
        moment = _instant(ticks.get_next(datetime), zone)
        if moment > after:
            return moment


def _ticks_back(spec: ScheduleSpec, now: datetime) -> Iterator[datetime]:
    """Every tick at or before ``now``, latest first, each instant once."""
    if spec.every is not None:
        tick = _EPOCH + ((now - _EPOCH) // spec.every) * spec.every
        while True:
            yield tick
            tick -= spec.every
    assert spec.cron is not None
    zone = spec.zone
    # from a minute past now: croniter's get_prev is strictly before its start
    ticks = croniter(spec.cron, _local(now, zone) + timedelta(minutes=1))
    previous = None
    while True:
        moment = _instant(ticks.get_prev(datetime), zone)
        if moment <= now and moment != previous:  # skipped times collapse into one instant
            yield moment
            previous = moment


def plan_firing(spec: ScheduleSpec, next_due: datetime, now: datetime) -> FirePlan:
    """Which ticks from ``next_due`` up to ``now`` become jobs, by the misfire policy, and the
    tick after ``now`` the schedule waits for next. Nothing is due before ``next_due``."""
    following = next_tick(spec, now)
    if next_due > now:
        return FirePlan((), next_due)
    limit = spec.max_catch_up if spec.misfire == "all" else 1
    ticks: list[datetime] = []
    for tick in _ticks_back(spec, now):
        if tick < next_due or len(ticks) == limit:
            break
        ticks.append(tick)
    if spec.misfire == "none" and ticks and now - ticks[0] > ON_TIME:
        ticks = []
    return FirePlan(tuple(reversed(ticks)), following)
