"""The test kit (``jobkeeper.testing``) as a host application uses it.

Pure parts are tested directly: which server is chosen from the environment and whether Docker
answers, the fallback from one server to the next, the migrations hash and ``lifespan_client``.
The fixtures are tested the way an application meets them: a pytest session of a small FastAPI +
SQLAlchemy + Alembic app (pytester, in a subprocess) whose conftest overrides the migrations hook,
sets a database prefix and calls its app through ``lifespan_client``, against this session's
server and against the embedded one.
"""

from __future__ import annotations

import asyncio
import re
import socketserver
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from fastapi import FastAPI, Request

from jobkeeper.settings import asyncpg_dsn
from jobkeeper.testing import (
    _TEMPLATE_LOCK_CLASS,
    TEST_URL_ENV,
    docker_answers,
    drop_database,
    hash_files,
    lifespan_client,
    server_candidates,
    start_first_server,
    with_database,
)
from support import alembic_env

RUN_TIMEOUT = 120.0  # one nested pytest session (imports, a migration, two tests)


# --- choosing the server -----------------------------------------------------------------------


def never_asked() -> bool:
    raise AssertionError("Docker must not be asked when a URL is configured")


def test_a_configured_url_is_the_only_choice_and_docker_is_not_asked() -> None:
    assert server_candidates({TEST_URL_ENV: "postgresql://ci/pg"}, never_asked) == ("configured",)


@pytest.mark.parametrize("environ", [{}, {TEST_URL_ENV: ""}], ids=["unset", "empty"])
def test_without_a_url_a_container_where_docker_answers_then_the_embedded_server(
    environ: dict[str, str],
) -> None:
    assert server_candidates(environ, lambda: True) == ("testcontainers", "embedded")
    assert server_candidates(environ, lambda: False) == ("embedded",)


class Daemon(socketserver.StreamRequestHandler):
    """Answers one request the way the Docker API answers ``GET /_ping`` (or refuses it)."""

    status = b"200 OK"

    def handle(self) -> None:
        self.rfile.readline()
        self.wfile.write(b"HTTP/1.1 " + self.status + b"\r\nContent-Length: 2\r\n\r\nOK")


@contextmanager
def daemon(status: bytes) -> Iterator[str]:
    """A fake Docker daemon on a loopback port; yields its ``DOCKER_HOST``."""
    handler = type("Handler", (Daemon,), {"status": status})
    with socketserver.TCPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            thread.join()


def test_docker_answers_where_a_daemon_pongs_and_only_there(tmp_path: Path) -> None:
    with daemon(b"200 OK") as host:
        assert docker_answers({"DOCKER_HOST": host}) is True
    with daemon(b"404 Not Found") as host:
        assert docker_answers({"DOCKER_HOST": host}) is False, "not a Docker API"
    assert docker_answers({"DOCKER_HOST": "tcp://127.0.0.1:1"}) is False  # nothing listens
    assert docker_answers({"DOCKER_HOST": f"unix://{tmp_path}/docker.sock"}) is False
    assert docker_answers({"DOCKER_HOST": "ssh://builder@example"}) is False, "not asked"


@contextmanager
def failing_server() -> Iterator[str]:
    raise RuntimeError("cannot start")
    yield "never"


@contextmanager
def working_server(stopped: list[str]) -> Iterator[str]:
    yield "postgresql://works/pg"
    stopped.append("works")


def test_a_server_that_fails_to_start_passes_the_choice_to_the_next() -> None:
    stopped: list[str] = []
    said: list[str] = []
    servers: Any = {
        "testcontainers": ("a container", failing_server),
        "embedded": ("an embedded one", lambda: working_server(stopped)),
    }
    with ExitStack() as stack:
        url = start_first_server(("testcontainers", "embedded"), stack, said.append, servers)
        assert url == "postgresql://works/pg" and not stopped
    assert stopped == ["works"], "the server is stopped with the session"
    assert said == ["a container failed (cannot start); trying the next", "using an embedded one"]


def test_no_server_starting_fails_the_session_naming_each_failure() -> None:
    servers: Any = {
        "testcontainers": ("a container", failing_server),
        "embedded": ("an embedded one", failing_server),
    }
    with ExitStack() as stack, pytest.raises(pytest.fail.Exception) as failed:
        start_first_server(("testcontainers", "embedded"), stack, [].append, servers)
    message = str(failed.value)
    assert message.startswith("no test database")
    assert "a container failed: cannot start; an embedded one failed: cannot start" in message


# --- the migrations hash and the client --------------------------------------------------------


def test_the_migrations_hash_follows_names_and_contents_but_not_caches(tmp_path: Path) -> None:
    versions = tmp_path / "versions"
    (versions / "__pycache__").mkdir(parents=True)
    (versions / "a1.py").write_text("revision = 'a1'\n")
    first = hash_files(versions)
    (versions / "__pycache__" / "a1.cpython-311.pyc").write_bytes(b"\0cache")
    assert hash_files(str(versions)) == first
    (versions / "a1.py").write_text("revision = 'a1'  # edited\n")
    edited = hash_files(versions)
    (versions / "a1.py").rename(versions / "b1.py")
    assert len({first, edited, hash_files(versions)}) == 3


async def test_lifespan_client_runs_the_lifespan_and_hands_its_state_to_each_request() -> None:
    phases: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        phases.append("startup")
        yield {"greeting": "hello"}
        phases.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greet")
    async def greet(request: Request) -> dict[str, Any]:
        request.state.visits = getattr(request.state, "visits", 0) + 1  # this request's copy
        return {"greeting": request.state.greeting, "visits": request.state.visits}

    async with lifespan_client(app, headers={"X-Test": "1"}) as client:
        assert phases == ["startup"]
        for _ in range(2):
            response = await client.get("/greet")
            assert response.json() == {"greeting": "hello", "visits": 1}
    assert phases == ["startup", "shutdown"]


# --- a host application's session --------------------------------------------------------------

HOSTAPP = '''
"""A host application: SQLAlchemy Core tables of its own, jobkeeper mounted in its lifespan."""

from contextlib import asynccontextmanager

import sqlalchemy as sa
from fastapi import FastAPI, Request
from sqlalchemy.ext.asyncio import create_async_engine

import jobkeeper.api
from jobkeeper.settings import Settings, sqlalchemy_url

metadata = sa.MetaData()
invoices = sa.Table("invoices", metadata, sa.Column("id", sa.Integer, primary_key=True))


def create_app(database_url: str) -> FastAPI:
    settings = Settings(_env_file=None, database_url=database_url, auth="disabled")
    jobkeeper_lifespan = jobkeeper.api.lifespan(settings)

    @asynccontextmanager
    async def lifespan(app):
        engine = create_async_engine(sqlalchemy_url(database_url))
        async with jobkeeper_lifespan(app) as state:
            yield {**state, "engine": engine}
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(jobkeeper.api.jobs_router)

    @app.get("/invoices/count")
    async def count(request: Request) -> int:
        async with request.state.engine.connect() as conn:
            return (await conn.execute(sa.select(sa.func.count()).select_from(invoices))).scalar()

    return app
'''

CONFTEST = """
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config

from jobkeeper.settings import sqlalchemy_url
from jobkeeper.testing import Migrations, hash_files

pytest_plugins = ["jobkeeper.testing"]
HERE = Path(__file__).parent


def alembic_upgrade(url: str) -> None:
    config = Config(str(HERE / "alembic.ini"))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url))
    command.upgrade(config, "head")  # the app's history, which brings jobkeeper's along


@pytest.fixture(scope="session")
def jobkeeper_migrations() -> Migrations:
    return Migrations(upgrade=alembic_upgrade, version=hash_files(HERE / "migrations/versions"))
"""

ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
path_separator = os
"""

ENV_PY = alembic_env(models="from hostapp import metadata", metadata="metadata")

REVISION = """
import sqlalchemy as sa
from alembic import op

import jobkeeper.migrate

revision = "{revision}"
down_revision = {down!r}


def upgrade():
    op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))
    if down_revision is None:
        jobkeeper.migrate.upgrade(op.get_bind())  # jobkeeper's tables, in the app's history


def downgrade():
    op.drop_table("{table}")
"""

TESTS = """
import asyncpg

from hostapp import create_app
from jobkeeper.testing import lifespan_client


async def test_the_database_has_the_apps_tables_and_jobkeepers(database_url):
    conn = await asyncpg.connect(database_url)
    try:
        tables = {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()
    assert {"invoices", "jobs", "job_events"} <= tables


async def test_the_app_runs_with_its_lifespan(database_url):
    async with lifespan_client(create_app(database_url)) as client:
        created = await client.post("/jobs", json={"kind": "invoice.send", "payload": {"n": 1}})
        assert created.status_code == 201, created.text
        assert (await client.get("/invoices/count")).json() == 0
"""


@dataclass
class HostApp:
    """The host application's folder, and running pytest sessions in it."""

    pytester: pytest.Pytester
    prefix: str
    revisions: int = 0

    def write(self, prefix: str) -> None:
        self.pytester.makeini(
            f"""
            [pytest]
            asyncio_mode = auto
            asyncio_default_fixture_loop_scope = session
            asyncio_default_test_loop_scope = session
            filterwarnings = error
            jobkeeper_database_prefix = {prefix}
            """
        )
        files = {
            "hostapp.py": HOSTAPP,
            "conftest.py": CONFTEST,
            "alembic.ini": ALEMBIC_INI,
            "migrations/env.py": ENV_PY,
            "test_hostapp.py": TESTS,
        }
        for name, text in files.items():
            path = self.pytester.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text).lstrip())
        if not self.revisions:
            self.add_revision("invoices")

    def add_revision(self, table: str) -> None:
        """A new revision of the app that creates ``table`` (its migrations changed)."""
        self.revisions += 1
        number = self.revisions
        down = None if number == 1 else f"app{number - 1}"
        text = REVISION.format(revision=f"app{number}", down=down, table=table)
        versions = self.pytester.path / "migrations" / "versions"
        versions.mkdir(parents=True, exist_ok=True)
        (versions / f"app{number}_{table}.py").write_text(text)

    async def session(self) -> pytest.RunResult:
        return await asyncio.to_thread(
            self.pytester.runpytest_subprocess,
            str(self.pytester.path),
            "-p",
            "no:cacheprovider",
            timeout=RUN_TIMEOUT,
        )


async def database_names(server_url: str, prefix: str) -> list[str]:
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        rows = await conn.fetch(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1) ORDER BY datname",
            prefix + "_",
        )
    finally:
        await conn.close()
    return [row["datname"] for row in rows]


async def tables_of(server_url: str, database: str) -> set[str]:
    conn = await asyncpg.connect(with_database(server_url, database))
    try:
        return {row["tablename"] for row in await conn.fetch("SELECT tablename FROM pg_tables")}
    finally:
        await conn.close()


async def templates(server_url: str, prefix: str) -> list[str]:
    names = await database_names(server_url, prefix)
    return [n for n in names if re.fullmatch(rf"{prefix}_tmpl_[0-9a-f]{{12}}", n)]


@pytest.fixture
async def host_app(
    pytester: pytest.Pytester, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[HostApp]:
    """The host app, its sessions configured to use this session's server (whichever it is),
    under a prefix of its own; every database it made is dropped afterwards."""
    monkeypatch.setenv(TEST_URL_ENV, postgres_server_url)
    app = HostApp(pytester, prefix=f"hostapp_{uuid4().hex[:8]}")
    app.write(app.prefix)
    try:
        yield app
    finally:
        for name in await database_names(postgres_server_url, app.prefix):
            await drop_database(postgres_server_url, name)


def passed_both(result: pytest.RunResult) -> None:
    assert result.ret == 0, result.stdout.str() + result.stderr.str()
    result.assert_outcomes(passed=2)


async def test_a_host_app_session_runs_its_migrations_with_jobkeepers_under_its_prefix(
    host_app: HostApp, postgres_server_url: str
) -> None:
    result = await host_app.session()

    passed_both(result)
    assert f"jobkeeper.testing: using {TEST_URL_ENV}" in result.stderr.str()
    (template,) = await templates(postgres_server_url, host_app.prefix)
    assert await database_names(postgres_server_url, host_app.prefix) == [template], (
        "the module's database was dropped; the template stays"
    )
    assert {"invoices", "jobs", "job_events"} <= await tables_of(postgres_server_url, template)


async def test_changed_migrations_build_a_new_template_and_drop_the_old_unless_held(
    host_app: HostApp, postgres_server_url: str
) -> None:
    passed_both(await host_app.session())
    (first,) = await templates(postgres_server_url, host_app.prefix)

    host_app.add_revision("credit_notes")
    passed_both(await host_app.session())
    (second,) = await templates(postgres_server_url, host_app.prefix)
    assert second != first, "the old one was stale: dropped"
    assert "credit_notes" in await tables_of(postgres_server_url, second)

    async with AsyncExitStack() as stack:  # as if another session still used the second one
        holder = await asyncpg.connect(asyncpg_dsn(postgres_server_url))
        stack.push_async_callback(holder.close)
        await holder.execute(
            "SELECT pg_advisory_lock_shared($1, hashtext($2))", _TEMPLATE_LOCK_CLASS, second
        )
        host_app.add_revision("refunds")
        passed_both(await host_app.session())
        held = await templates(postgres_server_url, host_app.prefix)
        assert second in held and len(held) == 2, held

    passed_both(await host_app.session())  # nobody holds it any more
    (third,) = await templates(postgres_server_url, host_app.prefix)
    assert third not in (first, second)


async def test_a_bad_prefix_fails_the_session_in_one_clear_line(host_app: HostApp) -> None:
    host_app.write("Bad-Prefix")
    result = await host_app.session()
    assert result.ret != 0
    result.assert_outcomes(errors=2)
    assert "jobkeeper_database_prefix = 'Bad-Prefix': use 1 to 30 lowercase" in result.stdout.str()


async def test_without_a_configured_url_the_session_uses_the_embedded_server(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TEST_URL_ENV, raising=False)
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")  # no Docker daemon, even on a laptop
    # a fixed prefix: the embedded server keeps its template for the next run, as a laptop would
    app = HostApp(pytester, prefix="hostapp_embedded")
    app.write(app.prefix)

    result = await app.session()

    passed_both(result)
    assert "jobkeeper.testing: using an embedded Postgres (pgserver)" in result.stderr.str()
