"""Statements on periodic schedules: create, declare (from ``@tasks.periodic``), read, pause,
resume, delete, and the one statement that turns a schedule's due ticks into jobs.

Exactly one job per schedule and tick, enforced by Postgres, not by electing a scheduler: every
worker's scheduler may find the same schedule due at the same moment, and each runs ``_FIRE``,
which moves ``next_tick`` on only if it still holds the value that scheduler read (a conditional
``UPDATE``: the second writer waits for the first's row lock, then finds ``next_tick`` changed and
matches nothing) and inserts the ticks' jobs in the same statement, so they commit together or not
at all. Behind that, the partial unique index ``uq_jobs_schedule_tick`` refuses a second job for
a tick outright (``ON CONFLICT DO NOTHING``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from uuid_utils.compat import uuid7

from jobkeeper.domain.schedules import NewSchedule, Schedule, ScheduleSpec
from jobkeeper.domain.values import Job
from jobkeeper.postgres.compile import Sql, raw, with_event
from jobkeeper.postgres.pool import Database

__all__ = ["ScheduleStatements"]

_COLUMNS = (
    "id, tenant, name, kind, cron, every_seconds, timezone, misfire, max_catch_up, payload,"
    " computed_payload, priority, max_attempts, concurrency_key, paused, declared, next_tick"
)
_VALUES = "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17"
_PARAMS = (
    "id",
    "tenant",
    "name",
    "kind",
    "cron",
    "every_seconds",
    "timezone",
    "misfire",
    "max_catch_up",
    "payload",
    "computed_payload",
    "priority",
    "max_attempts",
    "concurrency_key",
    "paused",
    "declared",
    "next_tick",
)
_CREATE = raw(
    f"""INSERT INTO schedules ({_COLUMNS}) VALUES ({_VALUES})
ON CONFLICT (tenant, name) DO NOTHING RETURNING *""",
    *_PARAMS,
)
# A worker declares its registry's schedules at start: the definition is the code's, the pause
# is the operators' (kept), and the next tick is kept unless the timing changed.
_DECLARE = raw(
    f"""INSERT INTO schedules ({_COLUMNS}) VALUES ({_VALUES})
ON CONFLICT (tenant, name) DO UPDATE SET
    kind = excluded.kind, cron = excluded.cron, every_seconds = excluded.every_seconds,
    timezone = excluded.timezone, misfire = excluded.misfire,
    max_catch_up = excluded.max_catch_up, payload = excluded.payload,
    computed_payload = excluded.computed_payload, priority = excluded.priority,
    max_attempts = excluded.max_attempts, concurrency_key = excluded.concurrency_key,
    declared = true, updated_at = now(),
    next_tick = CASE
        WHEN (schedules.cron, schedules.every_seconds, schedules.timezone)
             IS NOT DISTINCT FROM (excluded.cron, excluded.every_seconds, excluded.timezone)
        THEN schedules.next_tick ELSE excluded.next_tick END
RETURNING *""",
    *_PARAMS,
)
_GET = raw("SELECT * FROM schedules WHERE id = $1 AND tenant = $2", "id", "tenant")
_BY_NAME = raw("SELECT * FROM schedules WHERE tenant = $1 AND name = $2", "tenant", "name")
_LIST = raw("SELECT * FROM schedules WHERE tenant = $1 ORDER BY name LIMIT $2", "tenant", "limit")
_PAUSE = raw(
    """UPDATE schedules SET paused = true, updated_at = now()
WHERE id = $1 AND tenant = $2 AND NOT paused RETURNING *""",
    "id",
    "tenant",
)
# ticks that passed while paused are not missed: the schedule resumes at the tick after now
# ($3, worked out from the definition read at $4: a definition changed meanwhile matches nothing)
_RESUME = raw(
    """UPDATE schedules SET paused = false, next_tick = $3, updated_at = now()
WHERE id = $1 AND tenant = $2 AND paused AND updated_at = $4 RETURNING *""",
    "id",
    "tenant",
    "next_tick",
    "read_at",
)
_DELETE = raw("DELETE FROM schedules WHERE id = $1 AND tenant = $2 RETURNING id", "id", "tenant")
# The running schedules a scheduler handles (its kinds; one with a computed payload only where
# this process can compute it), soonest first, with the database's clock: due ones first.
_SOONEST = raw(
    """SELECT now() AS now, schedules.* FROM schedules
WHERE NOT paused AND kind = ANY($1::text[]) AND (NOT computed_payload OR id = ANY($2::uuid[]))
ORDER BY next_tick LIMIT $3""",
    "kinds",
    "computed",
    "limit",
)
# Hand a schedule's due ticks: move next_tick from $2 (what the scheduler read) to $3, and insert
# one job per tick ($5 ids, $6 ticks, $7 payloads as JSON text, NULL for the schedule's own).
_FIRE = with_event(
    raw(
        """WITH advanced AS (
    UPDATE schedules SET next_tick = $3, last_tick = coalesce($4, schedules.last_tick),
        updated_at = now()
    WHERE schedules.id = $1 AND schedules.next_tick = $2 AND NOT schedules.paused
    RETURNING schedules.*
), changed AS (
    INSERT INTO jobs (id, tenant, kind, payload, priority, max_attempts, run_after,
        concurrency_key, schedule_id, scheduled_for)
    SELECT t.id, a.tenant, a.kind, coalesce(t.payload::jsonb, a.payload), a.priority,
        a.max_attempts, t.tick, a.concurrency_key, a.id, t.tick
    FROM advanced AS a, unnest($5::uuid[], $6::timestamptz[], $7::text[]) AS t(id, tick, payload)
    ON CONFLICT DO NOTHING
    RETURNING jobs.*
)""",
        "schedule_id",
        "read_tick",
        "next_tick",
        "last_tick",
        "ids",
        "ticks",
        "payloads",
    ),
    "'submitted'",
    "jsonb_build_object('kind', changed.kind, 'schedule_id', changed.schedule_id,"
    " 'scheduled_for', changed.scheduled_for)",
)


def to_schedule(row: Mapping[str, Any]) -> Schedule:
    every = row["every_seconds"]
    return Schedule(
        id=row["id"],
        tenant=row["tenant"],
        name=row["name"],
        kind=row["kind"],
        spec=ScheduleSpec(
            cron=row["cron"],
            every=None if every is None else timedelta(seconds=every),
            timezone=row["timezone"],
            misfire=row["misfire"],
            max_catch_up=row["max_catch_up"],
        ),
        payload=row["payload"],
        computed_payload=row["computed_payload"],
        priority=row["priority"],
        max_attempts=row["max_attempts"],
        concurrency_key=row["concurrency_key"],
        paused=row["paused"],
        declared=row["declared"],
        next_tick=row["next_tick"],
        last_tick=row["last_tick"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _params(new: NewSchedule, next_tick: datetime, *, declared: bool) -> dict[str, Any]:
    every = new.spec.every
    return {
        "id": uuid7(),
        "tenant": new.tenant,
        "name": new.name,
        "kind": new.job.kind,
        "cron": new.spec.cron,
        "every_seconds": None if every is None else int(every.total_seconds()),
        "timezone": new.spec.timezone,
        "misfire": new.spec.misfire,
        "max_catch_up": new.spec.max_catch_up,
        "payload": new.job.payload_json,
        "computed_payload": new.computed_payload,
        "priority": new.job.priority,
        "max_attempts": new.job.max_attempts,
        "concurrency_key": new.job.concurrency_key,
        "paused": new.paused,
        "declared": declared,
        "next_tick": next_tick,
    }


class ScheduleStatements:
    """The statements above, run on one ``Database``."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def _one(self, sql: Sql, params: Mapping[str, Any], *, read: bool) -> Schedule | None:
        rows = await self._db.rows(sql, params, read=read)
        return to_schedule(rows[0]) if rows else None

    async def create(self, new: NewSchedule, next_tick: datetime) -> Schedule | None:
        """Insert a schedule; ``None`` if the tenant has one of that name."""
        return await self._one(_CREATE, _params(new, next_tick, declared=False), read=False)

    async def declare(self, new: NewSchedule, next_tick: datetime) -> Schedule:
        """Insert or update a schedule from code (its pause kept; its next tick kept unless
        its timing changed)."""
        found = await self._one(_DECLARE, _params(new, next_tick, declared=True), read=False)
        assert found is not None  # an upsert always returns its row
        return found

    async def get(self, schedule_id: UUID, tenant: str) -> Schedule | None:
        return await self._one(_GET, {"id": schedule_id, "tenant": tenant}, read=True)

    async def by_name(self, tenant: str, name: str) -> Schedule | None:
        return await self._one(_BY_NAME, {"tenant": tenant, "name": name}, read=True)

    async def of_tenant(self, tenant: str, *, limit: int) -> list[Schedule]:
        rows = await self._db.rows(_LIST, {"tenant": tenant, "limit": limit}, read=True)
        return [to_schedule(row) for row in rows]

    async def pause(self, schedule_id: UUID, tenant: str) -> Schedule | None:
        """Pause; ``None`` if it is paused already (or missing)."""
        return await self._one(_PAUSE, {"id": schedule_id, "tenant": tenant}, read=False)

    async def resume(
        self, schedule_id: UUID, tenant: str, next_tick: datetime, read_at: datetime
    ) -> Schedule | None:
        """Resume at ``next_tick``; ``None`` unless it is paused and unchanged since ``read_at``."""
        params = {"id": schedule_id, "tenant": tenant, "next_tick": next_tick, "read_at": read_at}
        return await self._one(_RESUME, params, read=False)

    async def delete(self, schedule_id: UUID, tenant: str) -> bool:
        rows = await self._db.rows(_DELETE, {"id": schedule_id, "tenant": tenant}, read=False)
        return bool(rows)

    async def soonest(
        self, kinds: Sequence[str], computed: Sequence[UUID], *, limit: int
    ) -> tuple[datetime | None, list[Schedule]]:
        """The database's clock, and up to ``limit`` running schedules of ``kinds``, soonest
        first (those with a computed payload only if in ``computed``)."""
        params = {"kinds": list(kinds), "computed": list(computed), "limit": limit}
        rows = await self._db.rows(_SOONEST, params, read=True)
        return (rows[0]["now"] if rows else None), [to_schedule(row) for row in rows]

    async def fire(
        self,
        schedule: Schedule,
        ticks: Sequence[tuple[datetime, str | None]],
        next_tick: datetime,
    ) -> list[Job]:
        """Move ``schedule`` on to ``next_tick`` and submit a job per tick (with its payload as
        JSON, or ``None`` for the schedule's), if no other scheduler did first: the jobs this
        call inserted (none when it lost)."""
        params = {
            "schedule_id": schedule.id,
            "read_tick": schedule.next_tick,
            "next_tick": next_tick,
            "last_tick": ticks[-1][0] if ticks else None,
            "ids": [uuid7() for _ in ticks],
            "ticks": [tick for tick, _ in ticks],
            "payloads": [payload for _, payload in ticks],
        }
        return await self._db.write_jobs(_FIRE, params)
