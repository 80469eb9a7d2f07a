"""The change-feed protocol, in one home: channels, the typed ``Change``, its wire format, the
announcer that sends it, and the feed's own connection and catch-up query.

Right after a change commits, it is announced on ``CHANNEL`` as JSON arrays
``[[job_id, version, status], ...]`` (``_PER_PAYLOAD`` to a payload, under Postgres's 8,000-byte
cap). ``status`` is the job's new status, except that a running job asked to cancel is announced
as ``cancel_requested``, so its worker stops it without reading the row. The changes workers act
on also go to ``WORK_CHANNEL``: jobs queued (new work) and cancel requests. A worker process
listens only there, so it does not parse every claim and completion of every other worker, and
none of its own writes but the ones that queue a job comes back to it.

Not in the writing statement: Postgres serialises committing transactions that notify on one
database-wide lock, held through the commit's WAL flush, so durable commits that notify run one at
a time. The announcer sends what concurrent writes committed meanwhile in one transaction of its
own, committed without waiting for the flush. A process that dies between the two leaves a change
unannounced, which the catch-up finds (docs/consistency.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg

from jobkeeper.domain.validate import DEFAULT_SCHEMA
from jobkeeper.errors import DatabaseUnavailable
from jobkeeper.postgres.compile import raw
from jobkeeper.postgres.pool import Database
from jobkeeper.supervise import supervised

__all__ = [
    "CANCEL_REQUESTED",
    "CHANNEL",
    "EXPIRED_VERSION",
    "WORK_CHANNEL",
    "Announcer",
    "CatchUp",
    "Change",
    "FeedConnection",
    "catch_up",
    "channels",
    "decode",
    "encode",
    "open_feed",
]


def channels(schema: str) -> tuple[str, str]:
    """The channels of the install in ``schema``: every change (what caches follow), and what
    workers act on (new work, cancel requests). Two installs in one database never hear each
    other."""
    return f"{schema}_changes", f"{schema}_work"


CHANNEL, WORK_CHANNEL = channels(DEFAULT_SCHEMA)  # those of the default schema
# the work channel's word for "a running job was asked to cancel" (its status stays running)
CANCEL_REQUESTED = "cancel_requested"
_WORK = frozenset({"queued", CANCEL_REQUESTED})  # what WORK_CHANNEL carries
# an expired job is gone for good: its "version" outranks every real one, so caches drop it
EXPIRED_VERSION = 2**63 - 1
# Postgres caps a notification payload at 8000 bytes. An entry is at most 83 bytes (a 36-character
# id, a version of at most 19 digits, a word of at most 16 characters, JSON punctuation) and 84
# with its comma, so 90 of them always fit.
_PER_PAYLOAD = 90
log = logging.getLogger("jobkeeper.notify")


class Change(NamedTuple):
    """One committed change as listeners hear it. ``job_id`` is text (the form logs and the
    change feed use); ``status`` is the job's status or ``cancel_requested`` (see above), and
    ``None`` when a catch-up found the change (what changed is then unknown)."""

    job_id: str
    version: int
    status: str | None


# a change to announce: (job id, UUID or text, version, status); a Change is one too
_Entry = tuple[object, int, str | None]


def encode(changes: Sequence[_Entry]) -> list[str]:
    """The payloads announcing ``changes``, ``_PER_PAYLOAD`` to a payload."""
    return _payloads([_entry(job_id, version, status) for job_id, version, status in changes])


def _entry(job_id: object, version: int, status: str | None) -> str:
    """One change as its payloads list it. Ids, versions and statuses need no JSON escaping, so
    plain formatting builds it."""
    return f'["{job_id}",{version},"{status}"]'


def _payloads(entries: Sequence[str]) -> list[str]:
    """``entries`` (each from ``_entry``) as payloads, ``_PER_PAYLOAD`` to a payload."""
    return [
        "[" + ",".join(entries[start : start + _PER_PAYLOAD]) + "]"
        for start in range(0, len(entries), _PER_PAYLOAD)
    ]


def decode(payload: str) -> list[Change]:
    """The changes of one payload; ``ValueError`` if it is not one of ours."""
    try:
        entries = json.loads(payload)
        if not isinstance(entries, list):
            raise TypeError("not a list")
        changes = list(map(Change._make, entries))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"malformed change notification: {exc}") from None
    for change in changes:
        if not isinstance(change.version, int) or not isinstance(change.job_id, str):
            raise ValueError("malformed change notification entry")
    return changes


# Sends notifications: each payload of $2 on channel $1, of $4 on channel $3. Its transaction
# commits without waiting for the WAL flush (set_config(..., true) lasts until that commit): only
# notifications are lost if the server crashes, and listeners then reconnect and catch up anyway.
_ANNOUNCE = """SELECT set_config('synchronous_commit', 'off', true),
  (SELECT count(pg_notify($1, payload)) FROM unnest($2::text[]) AS payload),
  (SELECT count(pg_notify($3, payload)) FROM unnest($4::text[]) AS payload)"""


class Announcer:
    """Queues the changes a process commits and sends them off the writer's path: one task sends
    whatever queued up while the previous batch was being sent, in one statement."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._channels = channels(database.schema)
        # entries (``_entry``) to send; a change workers act on goes in both, formatted once
        self._changes: list[str] = []
        self._work: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def queue(self, rows: Sequence[Any]) -> None:
        """Queue the notification of committed rows (each with id, version, status and, for
        ``jobs`` rows, cancel_requested)."""
        if not rows:
            return
        for row in rows:
            job_id, version, status = row["id"], row["version"], row["status"]
            if status == "running" and row.get("cancel_requested"):
                status = CANCEL_REQUESTED
            entry = _entry(job_id, version, status)
            self._changes.append(entry)
            if status in _WORK:
                self._work.append(entry)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(
                supervised("change announcer", self._run), name="jobkeeper-announce"
            )
        self._wake.set()

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._send()

    async def _send(self) -> None:
        """Send every queued notification. A failure is only logged: the changes are committed,
        and every feed's catch-up finds them without the notice."""
        changes, self._changes = self._changes, []
        work, self._work = self._work, []
        if not changes:
            return
        try:
            async with self._database.connection() as conn:
                changes_channel, work_channel = self._channels
                await conn.execute(
                    _ANNOUNCE,
                    changes_channel,
                    _payloads(changes),
                    work_channel,
                    _payloads(work),
                )
        except (DatabaseUnavailable, asyncpg.PostgresError) as exc:
            log.warning(
                "%d change notifications not sent (%s); listeners catch up", len(changes), exc
            )

    async def close(self) -> None:
        """Send what is still queued (waiting briefly for a batch in flight), then stop."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._task), self._database.connect_timeout)
            self._task.cancel()
            self._task = None
        if self._database.ready:
            await self._send()  # what queued while the last batch was sent


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What a catch-up found: the newest version of each changed job, and the next cursor."""

    changes: list[tuple[UUID, int]]
    cursor: int
    truncated: bool


# One statement, so the horizon and the rows come from the same snapshot. Every transaction with an
# id below the horizon (pg_snapshot_xmin) had finished when the snapshot was taken, so its events
# are visible here; later ones may still be running and are read again next time (re-applying an
# invalidation is harmless). A plain sequence would not do: ids are taken in start order, not
# commit order, so a slow transaction's events could appear behind a cursor that already passed.
# Expiries are found in job_tombstones (the expired job's events are deleted with it).
_CATCH_UP = raw(
    f"""
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS horizon,
       coalesce(array_agg(c.job_id), '{{}}') AS ids,
       coalesce(array_agg(c.version), '{{}}') AS versions
FROM (
    SELECT job_id, max(version) AS version FROM (
        SELECT job_id, seq AS version FROM job_events WHERE txid >= $1
        UNION ALL
        SELECT job_id, {EXPIRED_VERSION} FROM job_tombstones WHERE txid >= $1
    ) AS changes GROUP BY job_id LIMIT $2
) AS c
""",
    "cursor",
    "limit",
)
_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


async def catch_up(database: Database, cursor: int, limit: int) -> CatchUp:
    """Changes of transactions at or after ``cursor``; at most ``limit`` jobs. Runs on a pooled
    connection, so the feed's LISTEN connection never waits behind it."""
    rows = await database.rows(_CATCH_UP, {"cursor": cursor, "limit": limit + 1}, read=True)
    row = rows[0]
    changes = list(zip(row["ids"], row["versions"], strict=True))
    return CatchUp(changes=changes[:limit], cursor=row["horizon"], truncated=len(changes) > limit)


class FeedConnection:
    """The change feed's own asyncpg connection, kept idle so notifications arrive at once (a
    connection busy with a query holds them back): it only LISTENs and answers health pings."""

    def __init__(self, conn: asyncpg.Connection, *, timeout: float) -> None:
        self._conn = conn
        self._timeout = timeout

    async def horizon(self) -> int:
        """A cursor from which a catch-up finds every change committed from now on."""
        value = await self._conn.fetchval(_HORIZON, timeout=self._timeout)
        return int(value)

    async def ping(self) -> None:
        """Fail (OSError, TimeoutError, asyncpg errors) unless the connection still answers."""
        await self._conn.fetchval("SELECT 1", timeout=self._timeout)

    def is_closed(self) -> bool:
        return self._conn.is_closed()

    async def close(self) -> None:
        if self._conn.is_closed():
            return
        try:
            await asyncio.wait_for(self._conn.close(), timeout=self._timeout)
        except (OSError, TimeoutError, asyncpg.PostgresError):
            self._conn.terminate()


async def open_feed(
    database: Database,
    *,
    listen: Callable[[str], None] | None,
    on_lost: Callable[[], None],
    work_only: bool = False,
) -> FeedConnection:
    """A dedicated connection (outside the pool) for the change feed of the database's schema.

    ``listen`` receives every payload on its changes channel, or on its work channel only with
    ``work_only`` (``None``: poll mode, no LISTEN); ``on_lost`` is called once if the connection
    dies.
    """
    changes_channel, work_channel = channels(database.schema)
    channel = work_channel if work_only else changes_channel
    try:
        conn = await asyncpg.connect(
            database.dsn,
            timeout=database.connect_timeout,
            server_settings={"application_name": "jobkeeper-feed"},
            statement_cache_size=100 if database.prepared_statements else 0,
        )
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"change feed cannot connect: {exc}") from exc
    feed = FeedConnection(conn, timeout=database.connect_timeout)
    conn.add_termination_listener(lambda _: on_lost())
    if listen is not None:
        await conn.add_listener(channel, lambda *args: listen(args[-1]))
    return feed
