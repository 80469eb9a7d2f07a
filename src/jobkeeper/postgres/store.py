"""``Postgres``: the one handle on the data layer. One pool, the announcer of its changes, and
the statements grouped by what they touch."""

from __future__ import annotations

from jobkeeper.domain.validate import DEFAULT_SCHEMA, validate_schema
from jobkeeper.postgres.batch import BatchStatements
from jobkeeper.postgres.jobs import JobStatements
from jobkeeper.postgres.keys import KeyStatements
from jobkeeper.postgres.leases import LeaseStatements
from jobkeeper.postgres.notify import Announcer
from jobkeeper.postgres.pool import Database
from jobkeeper.postgres.questions import QuestionStatements
from jobkeeper.postgres.retention import RetentionStatements
from jobkeeper.postgres.schedules import ScheduleStatements
from jobkeeper.postgres.workers import WorkerStatements
from jobkeeper.postgres.workflows import WorkflowStatements
from jobkeeper.settings import asyncpg_dsn

__all__ = ["Postgres"]


class Postgres:
    """``Postgres.create(url)`` (no I/O yet), then ``close()`` when done.

    ``notify=False`` sends no change notifications (poll mode, for transaction poolers).
    """

    def __init__(self, database: Database, *, notify: bool) -> None:
        self.database = database
        self.notifies = notify
        self._announcer = Announcer(database) if notify else None
        if self._announcer is not None:
            database.announce = self._announcer.queue
        self.jobs = JobStatements(database)
        self.batch = BatchStatements(database)
        self.leases = LeaseStatements(database)
        self.questions = QuestionStatements(database)
        self.retention = RetentionStatements(database)
        self.keys = KeyStatements(database)
        self.workers = WorkerStatements(database)
        self.schedules = ScheduleStatements(database)
        self.workflows = WorkflowStatements(database)

    @classmethod
    def create(
        cls,
        url: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        command_timeout: float = 10.0,
        notify: bool = True,
        prepared_statements: bool = True,
    ) -> Postgres:
        """Build the pool (no I/O yet) for the tables in ``schema``. ``url`` may be
        ``postgresql://`` or ``+asyncpg``; ``prepared_statements=False`` for a transaction-mode
        pooler."""
        database = Database(
            asyncpg_dsn(url),
            schema=validate_schema(schema),
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            prepared_statements=prepared_statements,
        )
        return cls(database, notify=notify)

    async def ping(self) -> None:
        """``DatabaseUnavailable`` unless Postgres answers, ``SchemaMissing`` without the schema."""
        await self.database.ping()

    async def close(self) -> None:
        """Send the notifications still queued, then close every pooled connection."""
        if self._announcer is not None:
            await self._announcer.close()
        await self.database.close()
