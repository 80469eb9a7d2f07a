"""All SQL lives here: inserts, conditional transitions and reads of jobs and their events.

Connections run in autocommit mode and every change is a single statement: a conditional
``UPDATE ... WHERE status IN (...) RETURNING`` (or ``INSERT ... ON CONFLICT``) in a CTE that also
appends the ``job_events`` row. One statement is one transaction and one round trip, so a change and
its event commit together or not at all, and no Python code reads a row and then writes it back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from uuid_utils.compat import uuid7

from jobkeeper.errors import DatabaseUnavailable, InvalidTransition, JobFinished, JobNotFound
from jobkeeper.models import (
    TERMINAL,
    Job,
    JobEvent,
    JobStatus,
    NewJob,
    Progress,
    freeze_json,
    sources_of,
)
from jobkeeper.schema import job_events, jobs
from jobkeeper.settings import sqlalchemy_url

__all__ = ["JobRepository"]

_NOW = sa.func.now()
_CANCELLABLE_AT_ONCE = (JobStatus.QUEUED, JobStatus.WAITING_INPUT)


def _loads(text: str) -> Any:
    return freeze_json(json.loads(text))


def _to_job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    return Job(
        id=m["id"],
        tenant=m["tenant"],
        kind=m["kind"],
        status=JobStatus(m["status"]),
        payload=m["payload"],
        result=m["result"],
        error=m["error"],
        progress=Progress(m["progress_fraction"], m["progress_message"]),
        priority=m["priority"],
        attempts=m["attempts"],
        max_attempts=m["max_attempts"],
        run_after=m["run_after"],
        idempotency_key=m["idempotency_key"],
        concurrency_key=m["concurrency_key"],
        cancel_requested=m["cancel_requested"],
        pinned=m["pinned"],
        version=m["version"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        started_at=m["started_at"],
        finished_at=m["finished_at"],
    )


class JobRepository:
    """Postgres access for jobs: ``JobRepository.create(url)``, then ``close()`` when done."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @classmethod
    def create(
        cls, url: str, *, pool_size: int = 10, connect_timeout: float = 5.0
    ) -> JobRepository:
        """Build the engine (no I/O yet). ``url`` may be ``postgresql://`` or ``+asyncpg``."""
        engine = create_async_engine(
            sqlalchemy_url(url),
            isolation_level="AUTOCOMMIT",
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=connect_timeout,
            json_deserializer=_loads,
            connect_args={
                "timeout": connect_timeout,
                "server_settings": {"application_name": "jobkeeper"},
            },
        )
        return cls(engine)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def close(self) -> None:
        await self._engine.dispose()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled autocommit connection; connection failures become ``DatabaseUnavailable``."""
        try:
            async with self._engine.connect() as conn:
                yield conn
        except sa.exc.DBAPIError as exc:
            if exc.connection_invalidated or isinstance(exc, sa.exc.InterfaceError):
                raise DatabaseUnavailable(f"database connection failed: {exc.orig}") from exc
            raise
        except (OSError, sa.exc.TimeoutError) as exc:
            raise DatabaseUnavailable(f"database unreachable: {exc}") from exc

    async def _one(self, statement: sa.Executable) -> Job | None:
        async with self._connection() as conn:
            row = (await conn.execute(statement)).first()
        return None if row is None else _to_job(row)

    # --- reads -------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise ``DatabaseUnavailable`` unless Postgres answers a trivial query."""
        async with self._connection() as conn:
            await conn.execute(sa.select(1))

    async def get(self, job_id: UUID, tenant: str) -> Job | None:
        """The committed job, or ``None`` if it does not exist for this tenant."""
        return await self._one(sa.select(jobs).where(jobs.c.id == job_id, jobs.c.tenant == tenant))

    async def list_jobs(
        self,
        tenant: str,
        *,
        status: JobStatus | None,
        kind: str | None,
        limit: int,
        before: UUID | None,
    ) -> list[Job]:
        """Up to ``limit`` jobs, newest first, with ids below ``before`` (keyset pagination)."""
        query = sa.select(jobs).where(jobs.c.tenant == tenant)
        if status is not None:
            query = query.where(jobs.c.status == status.value)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if before is not None:
            query = query.where(jobs.c.id < before)
        query = query.order_by(jobs.c.id.desc()).limit(limit)
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        return [_to_job(r) for r in rows]

    async def find_by_idempotency_key(self, tenant: str, key: str) -> tuple[Job, str | None] | None:
        """The job submitted with this key, with the fingerprint of the request that created it."""
        query = sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == key)
        async with self._connection() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else (_to_job(row), row._mapping["request_fingerprint"])

    async def events(self, job_id: UUID, tenant: str, *, after: int = 0) -> list[JobEvent]:
        """The job's history after sequence ``after``, oldest first (empty for a foreign job)."""
        query = (
            sa.select(job_events.c.seq, job_events.c.type, job_events.c.data, job_events.c.at)
            .join(jobs, jobs.c.id == job_events.c.job_id)
            .where(job_events.c.job_id == job_id, jobs.c.tenant == tenant)
            .where(job_events.c.seq > after)
            .order_by(job_events.c.seq)
        )
        async with self._connection() as conn:
            rows = (await conn.execute(query)).all()
        return [JobEvent(seq=r.seq, type=r.type, data=r.data, at=r.at) for r in rows]

    # --- writes ------------------------------------------------------------------------------

    async def insert(self, new: NewJob) -> Job | None:
        """Insert a job and its ``submitted`` event; ``None`` if its idempotency key already exists.

        ``ON CONFLICT DO NOTHING`` waits for a concurrent insert of the same key to commit, so the
        caller's follow-up read (a new statement, a new snapshot) always finds the winner.
        """
        values: dict[str, Any] = {
            "id": uuid7(),
            "tenant": new.tenant,
            "kind": new.kind,
            "payload": sa.cast(sa.literal(new.payload_json, sa.Text()), JSONB),
            "priority": new.priority,
            "max_attempts": new.max_attempts,
            "idempotency_key": new.idempotency_key,
            "request_fingerprint": new.fingerprint if new.idempotency_key else None,
            "concurrency_key": new.concurrency_key,
            "pinned": new.pinned,
        }
        if new.run_after is not None:
            values["run_after"] = new.run_after
        statement = (
            insert(jobs)
            .values(values)
            .on_conflict_do_nothing(index_elements=[jobs.c.tenant, jobs.c.idempotency_key])
            .returning(*jobs.c)
        )
        return await self._one(_with_event(statement, "submitted", {"kind": new.kind}))

    async def transition(
        self,
        job_id: UUID,
        tenant: str,
        target: JobStatus,
        *,
        event: str,
        values: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
        extra_where: Iterable[sa.ColumnElement[bool]] = (),
    ) -> Job:
        """Move a job to ``target`` if the transition table allows it from its current status.

        The allowed sources come from ``models.TRANSITIONS``; the check and the write are one
        statement, so a concurrent change can never be overwritten. Raises ``JobNotFound``,
        ``JobFinished`` (already terminal) or ``InvalidTransition``.
        """
        changes: dict[str, Any] = {"status": target.value, **(values or {})}
        if target in TERMINAL:
            changes.setdefault("finished_at", _NOW)
        statement = _update(
            job_id,
            tenant,
            changes,
            jobs.c.status.in_([s.value for s in sources_of(target)]),
            *extra_where,
        )
        job = await self._one(
            _with_event(statement, event, {"status": target.value, **(data or {})})
        )
        if job is None:
            await self._raise_refusal(job_id, tenant, target.value)
        assert job is not None
        return job

    async def cancel(self, job_id: UUID, tenant: str) -> tuple[Job, bool]:
        """Cancel a queued or waiting job at once, or flag a running one for its worker.

        Returns the job and whether this call changed it (a repeated cancel of a running job that
        is already flagged changes nothing). Raises ``JobNotFound`` or ``JobFinished``.
        """
        at_once = [s.value for s in _CANCELLABLE_AT_ONCE]
        immediate = jobs.c.status.in_(at_once)
        statement = _update(
            job_id,
            tenant,
            {
                "status": sa.case((immediate, JobStatus.CANCELLED.value), else_=jobs.c.status),
                "finished_at": sa.case((immediate, _NOW), else_=jobs.c.finished_at),
                "cancel_requested": True,
            },
            sa.or_(
                immediate,
                sa.and_(jobs.c.status == JobStatus.RUNNING.value, ~jobs.c.cancel_requested),
            ),
        )
        job = await self._one(_with_event(statement, _cancel_event_type, {}))
        if job is not None:
            return job, True
        current = await self.get(job_id, tenant)
        if current is None:
            raise JobNotFound(job_id)
        if current.terminal:
            raise JobFinished(job_id, current.status.value, JobStatus.CANCELLED.value)
        return current, False

    async def _raise_refusal(self, job_id: UUID, tenant: str, requested: str) -> None:
        """Explain why a conditional write matched no row (read only to build the error)."""
        current = await self.get(job_id, tenant)
        if current is None:
            raise JobNotFound(job_id)
        error = JobFinished if current.terminal else InvalidTransition
        raise error(job_id, current.status.value, requested)


def _update(
    job_id: UUID, tenant: str, changes: Mapping[str, Any], *conditions: sa.ColumnElement[bool]
) -> sa.Update:
    """``UPDATE jobs`` of one job, bumping ``version`` and ``updated_at``, returning the new row."""
    return (
        sa.update(jobs)
        .where(jobs.c.id == job_id, jobs.c.tenant == tenant, *conditions)
        .values(version=jobs.c.version + 1, updated_at=_NOW, **changes)
        .returning(*jobs.c)
    )


def _with_event(
    statement: sa.Update | sa.Insert,
    event_type: str | Callable[[sa.CTE], sa.ColumnElement[str]],
    data: Mapping[str, Any],
) -> sa.Select[Any]:
    """Wrap a ``RETURNING`` write in a CTE that appends its event; select the changed row.

    The event's ``seq`` is the job's new ``version``: one change, one version, one event.
    """
    changed = statement.cte("changed")
    kind = sa.literal(event_type, sa.Text()) if isinstance(event_type, str) else event_type(changed)
    record = (
        sa.insert(job_events)
        .from_select(
            ["job_id", "seq", "type", "data", "at"],
            sa.select(
                changed.c.id,
                changed.c.version,
                kind,
                sa.cast(sa.literal(json.dumps(dict(data)), sa.Text()), JSONB),
                changed.c.updated_at,
            ),
        )
        .cte("recorded")
    )
    return sa.select(changed).add_cte(record)


def _cancel_event_type(changed: sa.CTE) -> sa.ColumnElement[str]:
    return sa.case(
        (changed.c.status == JobStatus.CANCELLED.value, "cancelled"), else_="cancel_requested"
    )
