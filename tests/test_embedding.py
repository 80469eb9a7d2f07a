"""jobkeeper inside an application's own database: the application's Alembic history migrates
jobkeeper from one of its revisions and its ``alembic check`` passes; jobkeeper's tables, version
table and channels stay in their schema, beside application tables named like them; a job
submitted in the application's transaction commits or rolls back with it."""

from __future__ import annotations

import asyncio
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from jobkeeper import JobContext, JobManager, TaskRegistry
from jobkeeper.errors import (
    IdempotencyConflict,
    InvalidRequest,
    JobNotFound,
    QueueFull,
    SchemaMissing,
    SchemaOutdated,
)
from jobkeeper.settings import asyncpg_dsn, sqlalchemy_url
from jobkeeper.testing import create_database, drop_database
from support import alembic_env, eventually, make_worker

MODELS = """
import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    title: Mapped[str] = mapped_column(sa.Text)


class Worker(Base):  # the application's own "workers": jobkeeper's live in its schema
    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(sa.Text, primary_key=True)
"""
ENV = alembic_env(models="from embedded_app_models import Base", metadata="Base.metadata")
REVISION_1 = """
import sqlalchemy as sa
from alembic import op

revision = "a1"
down_revision = None


def upgrade():
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.Text, nullable=False),
    )
    op.create_table("workers", sa.Column("name", sa.Text, primary_key=True))


def downgrade():
    op.drop_table("workers")
    op.drop_table("documents")
"""
REVISION_2 = """
from alembic import op

import jobkeeper.migrate

revision = "a2"
down_revision = "a1"


def upgrade():
    jobkeeper.migrate.upgrade(op.get_bind(), "0007")
    op.execute("INSERT INTO workers (name) VALUES ('still the app''s op')")


def downgrade():
    op.execute("DELETE FROM workers")
    jobkeeper.migrate.downgrade(op.get_bind(), "base")
"""


@pytest.fixture(scope="module")
def app_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An application's Alembic layout: models, env.py, and two revisions, the second of which
    brings jobkeeper to revision 0007."""
    root = tmp_path_factory.mktemp("app")
    (root / "embedded_app_models.py").write_text(textwrap.dedent(MODELS))
    migrations = root / "migrations"
    (migrations / "versions").mkdir(parents=True)
    (migrations / "env.py").write_text(textwrap.dedent(ENV))
    (migrations / "versions" / "a1_documents.py").write_text(textwrap.dedent(REVISION_1))
    (migrations / "versions" / "a2_jobkeeper.py").write_text(textwrap.dedent(REVISION_2))
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))


def app_alembic(app_dir: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(app_dir / "migrations"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    return config


@pytest.fixture(scope="module")
async def app_database(postgres_server_url: str, app_dir: Path) -> AsyncIterator[str]:
    """A fresh database migrated by the application's own ``alembic upgrade head``; its search
    path is the default one, where the application's tables are."""
    name = f"jobkeeper_app_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        await asyncio.to_thread(command.upgrade, app_alembic(app_dir, url), "head")
        yield url
    finally:
        await drop_database(postgres_server_url, name)


@pytest.fixture(scope="module")
async def engine(app_database: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(sqlalchemy_url(app_database), pool_size=2)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def jobs(engine: AsyncEngine) -> AsyncIterator[JobManager]:
    """The application's jobkeeper, configured from its own engine."""
    async with await JobManager.connect(engine, pool_size=4) as manager:
        yield manager


@pytest.fixture
async def db(app_database: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(app_database))
    try:
        yield conn
    finally:
        await conn.close()


def documents_table() -> sa.Table:
    return sa.table("documents", sa.column("id", sa.Integer), sa.column("title", sa.Text))


# --- migrations side by side -----------------------------------------------------------------


async def test_the_applications_alembic_migrates_jobkeeper_and_its_check_passes(
    app_database: str, app_dir: Path, db: asyncpg.Connection
) -> None:
    config = app_alembic(app_dir, app_database)
    await asyncio.to_thread(command.check, config)  # no drop_table for jobkeeper's tables
    assert await db.fetchval("SELECT version_num FROM public.alembic_version") == "a2"
    ours = "SELECT version_num FROM jobkeeper.jobkeeper_alembic_version"
    assert await db.fetchval(ours) == "0007"
    # the application's revision went on with its own op after jobkeeper's ran
    assert await db.fetchval("SELECT name FROM public.workers") == "still the app's op"
    # jobkeeper's own check sees only its tables, none of the application's as removed
    from jobkeeper import migrate

    await asyncio.to_thread(migrate.check, app_database)


async def test_downgrading_the_application_takes_jobkeeper_down_and_up_again(
    postgres_server_url: str, app_dir: Path
) -> None:
    name = f"jobkeeper_app_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        config = app_alembic(app_dir, url)
        await asyncio.to_thread(command.upgrade, config, "head")
        await asyncio.to_thread(command.downgrade, config, "a1")
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            assert await conn.fetchval("SELECT to_regclass('jobkeeper.jobs')") is None
            assert await conn.fetchval("SELECT to_regclass('public.documents')") is not None
        finally:
            await conn.close()
        await asyncio.to_thread(command.upgrade, config, "head")
        await asyncio.to_thread(command.check, config)
    finally:
        await drop_database(postgres_server_url, name)


# --- one database, the application's tables beside jobkeeper's -------------------------------


async def test_jobkeeper_runs_in_its_schema_beside_tables_named_like_its_own(
    jobs: JobManager, db: asyncpg.Connection
) -> None:
    """The application's search path finds its own ``workers``; every jobkeeper statement names
    its schema, so none of them touches the application's table."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    tasks = TaskRegistry()
    kind = f"app.{uuid.uuid4().hex[:8]}"

    @tasks.task(kind)
    async def handle(ctx: JobContext, payload: Any) -> dict[str, int]:
        return {"doubled": payload["n"] * 2}

    job = await jobs.submit(tenant, kind, {"n": 21})
    worker = make_worker(jobs, tasks, kinds=[kind])
    running = asyncio.create_task(worker.run())
    try:

        async def done() -> bool:
            return (await jobs.get(job.id, tenant=tenant, consistency="strong")).terminal

        await eventually(done, what="the job to finish")
        registered = await db.fetchval("SELECT count(*) FROM jobkeeper.workers")
        assert registered >= 1
    finally:
        worker.stop()
        await running
    finished = await jobs.get(job.id, tenant=tenant, consistency="strong")
    assert finished.result == {"doubled": 42}
    assert [e.type for e in await jobs.events(job.id, tenant=tenant)][-1] == "succeeded"
    assert await db.fetchval("SELECT count(*) FROM public.workers") == 1  # the app's row only


async def test_two_installs_in_two_schemas_never_see_each_others_jobs_or_notifications(
    app_database: str,
) -> None:
    from jobkeeper import migrate

    await asyncio.to_thread(migrate.upgrade, app_database, schema="billing_jobs")
    tenant = "shared-tenant"
    async with (
        await JobManager.connect(app_database) as first,
        await JobManager.connect(app_database, schema="billing_jobs") as second,
    ):
        heard_first: list[str] = []
        heard_second: list[str] = []
        first.subscribe(lambda job_id, _v, _s: heard_first.append(str(job_id)))
        second.subscribe(lambda job_id, _v, _s: heard_second.append(str(job_id)))
        mine = await first.submit(tenant, "app.isolated", {})
        marker = await second.submit(tenant, "app.marker", {})
        await eventually(lambda: str(mine.id) in heard_first, what="the first install's notice")
        await eventually(lambda: str(marker.id) in heard_second, what="the second's notice")
        assert str(mine.id) not in heard_second and str(marker.id) not in heard_first
        with pytest.raises(JobNotFound):
            await second.get(mine.id, tenant=tenant, consistency="strong")
        page = await second.list(tenant=tenant)
        assert [job.id for job in page.items] == [marker.id]


async def test_a_database_without_the_schema_says_what_to_run(postgres_server_url: str) -> None:
    name = f"jobkeeper_bare_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name)
    try:
        with pytest.raises(SchemaMissing) as missing:
            await JobManager.connect(url, schema="nowhere")
        assert "jobkeeper migrate --schema nowhere" in str(missing.value)
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:  # the layout before schemas: jobkeeper's tables and Alembic's table in public
            await conn.execute("CREATE TABLE job_tombstones (job_id uuid)")
            await conn.execute("CREATE TABLE alembic_version (version_num text)")
        finally:
            await conn.close()
        with pytest.raises(SchemaOutdated) as outdated:
            await JobManager.connect(url)
        assert outdated.value.code == "schema_outdated" and "public" in str(outdated.value)
    finally:
        await drop_database(postgres_server_url, name)


# --- submit inside the application's transaction ---------------------------------------------


async def test_a_job_submitted_in_a_rolled_back_transaction_never_existed(
    jobs: JobManager, engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        await session.execute(sa.insert(documents_table()).values(title="rolled back"))
        job = await jobs.submit(tenant, "app.convert", {"doc": 1}, connection=session)
        await session.rollback()
    with pytest.raises(JobNotFound):
        await jobs.get(job.id, tenant=tenant, consistency="strong")
    assert (
        await db.fetchval("SELECT count(*) FROM jobkeeper.job_events WHERE job_id = $1", job.id)
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM documents WHERE title = 'rolled back'") == 0


async def test_no_worker_claims_before_commit_and_commit_wakes_one_at_once(
    jobs: JobManager, engine: AsyncEngine
) -> None:
    """The worker polls only every 60 s: finishing within seconds of the commit shows the
    commit itself woke it."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    kind = f"app.{uuid.uuid4().hex[:8]}"
    tasks = TaskRegistry()
    ran: list[str] = []

    @tasks.task(kind)
    async def handle(ctx: JobContext, payload: Any) -> None:
        ran.append(str(ctx.job.id))

    async with await JobManager.connect(engine, role="worker", pool_size=2) as worker_side:
        worker = make_worker(worker_side, tasks, kinds=[kind], poll_interval=60.0)
        running = asyncio.create_task(worker.run())
        try:
            async with engine.connect() as conn, conn.begin() as transaction:
                job = await jobs.submit(tenant, kind, {}, connection=conn)
                # invisible to everyone else until the commit: a claim finds nothing
                assert await jobs.claim(uuid.uuid4(), kinds=[kind], limit=5, lease_seconds=30) == []
                await transaction.commit()
            await eventually(lambda: str(job.id) in ran, timeout=10.0, what="the woken worker")
        finally:
            worker.stop()
            await running


async def test_an_idempotent_replay_inside_the_transaction_returns_the_same_job(
    jobs: JobManager, app_database: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(asyncpg_dsn(app_database))
    try:
        async with conn.transaction():
            first, created = await jobs.submit_or_replay(
                tenant, "app.once", {"n": 1}, idempotency_key="upload-1", connection=conn
            )
            again, created_again = await jobs.submit_or_replay(
                tenant, "app.once", {"n": 1}, idempotency_key="upload-1", connection=conn
            )
            assert (created, created_again) == (True, False) and again.id == first.id
            with pytest.raises(IdempotencyConflict):
                await jobs.submit(
                    tenant, "app.once", {"n": 2}, idempotency_key="upload-1", connection=conn
                )
    finally:
        await conn.close()
    committed = await jobs.get(first.id, tenant=tenant, consistency="strong")
    assert committed.payload == {"n": 1} and committed.idempotency_key == "upload-1"


async def test_max_queued_holds_across_open_transactions(
    engine: AsyncEngine, app_database: str, db: asyncpg.Connection
) -> None:
    """A second submit waits for the first transaction (the tenant's queue lock is held until
    it ends), then counts its job."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with await JobManager.connect(engine, max_queued=1, pool_size=2) as limited:
        first = await asyncpg.connect(asyncpg_dsn(app_database))
        second = await asyncpg.connect(asyncpg_dsn(app_database))
        try:
            tx = first.transaction()
            await tx.start()
            await limited.submit(tenant, "app.limited", {}, connection=first)

            async def submit_second() -> None:
                async with second.transaction():
                    await limited.submit(tenant, "app.limited", {}, connection=second)

            waiting = asyncio.create_task(submit_second())
            pid = second.get_server_pid()
            await eventually(
                lambda: db.fetchval(
                    "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
                ),
                what="the second submit to wait on the tenant's queue lock",
            )
            await tx.commit()
            with pytest.raises(QueueFull):
                await waiting
        finally:
            await first.close()
            await second.close()


async def test_a_connection_without_an_open_transaction_is_refused(
    jobs: JobManager, engine: AsyncEngine, app_database: str
) -> None:
    async with engine.connect() as conn:
        with pytest.raises(InvalidRequest):
            await jobs.submit("t", "app.x", {}, connection=conn)
    raw = await asyncpg.connect(asyncpg_dsn(app_database))
    try:
        with pytest.raises(InvalidRequest):
            await jobs.submit("t", "app.x", {}, connection=raw)
    finally:
        await raw.close()
    with pytest.raises(InvalidRequest):
        await jobs.submit("t", "app.x", {}, connection="not a connection")  # type: ignore[arg-type]


async def test_the_orm_row_and_its_job_commit_together(
    jobs: JobManager, engine: AsyncEngine
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        result = await session.execute(
            sa.insert(documents_table()).values(title="kept").returning(sa.column("id"))
        )
        document_id = result.scalar_one()
        job = await jobs.submit(
            tenant, "app.convert", {"document": document_id}, connection=session
        )
    committed = await jobs.get(job.id, tenant=tenant, consistency="strong")
    assert committed.payload == {"document": document_id}
