"""The test kit: pytest fixtures that give each test module a migrated database on a real Postgres
(never a mock), for jobkeeper's own suite and for applications that embed jobkeeper.

Enable with ``pytest_plugins = ["jobkeeper.testing"]`` in the root ``conftest.py``;
``docs/testing.md`` shows an application's conftest. In short:

* **The server** (session): ``JOBKEEPER_TEST_DATABASE_URL`` when set (a URL whose user may
  ``CREATE DATABASE``); else a Postgres container (testcontainers, ``jobkeeper[testing]``) where a
  Docker daemon answers; else an embedded Postgres (pgserver, ``jobkeeper[embedded]``). One
  stderr line says which; if none starts, the session fails, naming each failure, never skips.
* **The template** (kept across sessions): an empty database migrated by the
  ``jobkeeper_migrations`` fixture, which an application overrides to run its own migrations
  with jobkeeper's. Its name carries a hash of jobkeeper's migrations and the hook's ``version``,
  so changed migrations build a new template; templates of the same prefix that no running
  session holds are dropped.
* **A database per test module**: ``CREATE DATABASE ... TEMPLATE``, dropped after the module, so
  modules never see each other's rows; each test gets its own ``tenant``.
* **Names**: every database is named after the ``jobkeeper_database_prefix`` ini option
  (default ``jobkeeper``), so suites sharing a server keep apart.
* **HTTP**: ``lifespan_client(app)``, an httpx client on ``ASGITransport`` with the app's
  lifespan running (``ASGITransport`` alone does not run it, and jobkeeper's routes read their
  services from the lifespan's state).

A conftest imports from this module before pytest registers it as a plugin, so pytest may not
rewrite its asserts (it has none): PYTEST_DONT_REWRITE keeps pytest from warning about that.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import (
    AbstractContextManager,
    ExitStack,
    asynccontextmanager,
    contextmanager,
    nullcontext,
    suppress,
)
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from jobkeeper.embedded import EmbeddedPostgres, default_data_dir
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.postgres import Postgres
from jobkeeper.settings import asyncpg_dsn

__all__ = [
    "POSTGRES_IMAGE",
    "PREFIX_OPTION",
    "TEST_URL_ENV",
    "Migrations",
    "ServerKind",
    "create_database",
    "data_layer",
    "database_prefix",
    "database_url",
    "docker_answers",
    "drop_database",
    "hash_files",
    "job_manager",
    "jobkeeper_migrations",
    "lifespan_client",
    "postgres_server_url",
    "server_candidates",
    "start_first_server",
    "template_database",
    "tenant",
    "with_database",
]

TEST_URL_ENV = "JOBKEEPER_TEST_DATABASE_URL"
PREFIX_OPTION = "jobkeeper_database_prefix"
POSTGRES_IMAGE = "postgres:16"  # the major version pgserver bundles
# a prefix leaves room in Postgres's 63-byte names for "_tmpl_<12 hex>_<8 hex>" while building
_PREFIX = re.compile(r"[a-z][a-z0-9_]{0,29}")
# the class of the advisory locks that mark templates in use (two-key form: class, hashtext(name))
_TEMPLATE_LOCK_CLASS = 0x6A6B

ServerKind: TypeAlias = Literal["configured", "testcontainers", "embedded"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        PREFIX_OPTION,
        "prefix of every database jobkeeper.testing creates (lowercase letters, digits, _)",
        default="jobkeeper",
    )


# --- databases ---------------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database on the same server (query string kept)."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + database))


def data_layer(manager: JobManager) -> Postgres:
    """The manager's own data layer, for tests that reach under the facade: ad-hoc SQL on its
    pool (``.database.connection()``), forcing a status (``.jobs.transition``), or wrapping a
    statement to hold it back. Applications never need it."""
    return manager._pg


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(asyncpg_dsn(url))


async def create_database(server_url: str, name: str, *, template: str | None = None) -> str:
    """Create database ``name`` (optionally from ``template``); return its URL."""
    conn = await _admin(server_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name``, disconnecting anyone still in it."""
    conn = await _admin(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# --- the server --------------------------------------------------------------------------------


def server_candidates(
    environ: Mapping[str, str], ask_docker: Callable[[], bool]
) -> tuple[ServerKind, ...]:
    """Which servers to try, in order: the configured URL alone when ``TEST_URL_ENV`` is set (an
    explicit choice never falls back); else, where ``ask_docker()`` says a Docker daemon
    answers, a container and then the embedded server; else the embedded server. Docker is asked
    only when the URL is unset (``docker_answers`` is the real question)."""
    if environ.get(TEST_URL_ENV):
        return ("configured",)
    if ask_docker():
        return ("testcontainers", "embedded")
    return ("embedded",)


def docker_answers(environ: Mapping[str, str] = os.environ, *, timeout: float = 2.0) -> bool:
    """Whether a Docker daemon answers ``GET /_ping`` at ``DOCKER_HOST`` (``unix://`` or
    ``tcp://``; default ``unix:///var/run/docker.sock``) within ``timeout`` seconds. Asked
    directly, not through the ``docker`` package: that one leaks its socket when nothing
    listens, which a suite with warnings as errors reports."""
    where = urlsplit(environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock")
    try:
        if where.scheme == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            with sock:
                sock.settimeout(timeout)
                sock.connect(where.path)
                return _pong(sock)
        if where.scheme == "tcp" and where.hostname:
            with socket.create_connection((where.hostname, where.port or 2375), timeout) as sock:
                return _pong(sock)
    except OSError:  # no socket, refused, timed out
        return False
    return False  # ssh://, npipe://...: set JOBKEEPER_TEST_DATABASE_URL instead


def _pong(sock: socket.socket) -> bool:
    """Whether the Docker API behind ``sock`` answers its ping with ``200``."""
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    status = sock.recv(64).split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"200"


@contextmanager
def _configured() -> Iterator[str]:
    yield os.environ[TEST_URL_ENV]


@contextmanager
def _container() -> Iterator[str]:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError as exc:
        raise RuntimeError(
            "testcontainers is not installed: pip install 'jobkeeper[testing]'"
        ) from exc
    with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
        yield container.get_connection_url()


@contextmanager
def _embedded() -> Iterator[str]:
    server = EmbeddedPostgres(default_data_dir("test-pg"))
    try:
        yield server.url()
    finally:
        server.stop()


Starter: TypeAlias = Callable[[], AbstractContextManager[str]]
# each kind: what the stderr line calls it, and how to start it (a context manager of its URL)
_SERVERS: dict[ServerKind, tuple[str, Starter]] = {
    "configured": (TEST_URL_ENV, _configured),
    "testcontainers": (f"a Postgres container ({POSTGRES_IMAGE}, testcontainers)", _container),
    "embedded": ("an embedded Postgres (pgserver)", _embedded),
}


def start_first_server(
    kinds: Sequence[ServerKind],
    stack: ExitStack,
    say: Callable[[str], None],
    servers: Mapping[ServerKind, tuple[str, Starter]] = _SERVERS,
) -> str:
    """Start the first of ``kinds`` that starts (stopped when ``stack`` closes) and return its
    URL, ``say``ing which it is and why any before it was passed over; fail the session naming
    every failure when none starts."""
    failures: list[str] = []
    for kind in kinds:
        what, start = servers[kind]
        try:
            url = stack.enter_context(start())
        except Exception as exc:
            failures.append(f"{what} failed: {exc}")
            say(f"{what} failed ({exc}); trying the next")
            continue
        say(f"using {what}")
        return url
    pytest.fail(
        f"no test database ({TEST_URL_ENV} is unset; a container is tried only where a Docker"
        f" daemon answers): {'; '.join(failures)}",
        pytrace=False,
    )


def _stderr_line(config: pytest.Config) -> Callable[[str], None]:
    """A line on the session's real stderr: seen in every run, not captured into a test's
    output (what ``capsys.disabled()`` does, for a session fixture)."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled() if capture else nullcontext():
            sys.stderr.write(f"\njobkeeper.testing: {line}\n")

    return say


@pytest.fixture(scope="session")
def postgres_server_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of a server where the tests may create databases (see the module docstring)."""
    kinds = server_candidates(os.environ, docker_answers)
    with ExitStack() as stack:
        yield start_first_server(kinds, stack, _stderr_line(pytestconfig))


# --- the template ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migrations:
    """How the template database is built: ``upgrade(url)`` migrates the empty database at
    ``url`` (a ``postgresql://`` URL; ``jobkeeper.settings.sqlalchemy_url`` gives the
    ``postgresql+asyncpg://`` form). It runs in a thread, so it may call Alembic's command API,
    whose ``env.py`` may start its own event loop. ``version`` must change whenever what
    ``upgrade`` builds changes (``hash_files`` of the migration folder): it names the template
    together with a hash of jobkeeper's own migrations, which is always part of the name."""

    upgrade: Callable[[str], None]
    version: str


def hash_files(*folders: str | Traversable) -> str:
    """A short hash of every file under ``folders`` (their relative paths and contents; Python
    caches left out): a ``Migrations.version`` that changes whenever a migration does."""
    digest = hashlib.sha256()
    for folder in folders:
        root = Path(folder) if isinstance(folder, str) else folder
        for name, entry in sorted(_walk(root, "")):
            digest.update(name.encode() + b"\0" + entry.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _walk(folder: Traversable, prefix: str) -> Iterator[tuple[str, Traversable]]:
    for entry in folder.iterdir():
        if entry.name == "__pycache__" or entry.name.endswith(".pyc"):
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", entry


@pytest.fixture(scope="session")
def jobkeeper_migrations() -> Migrations:
    """The one hook an application overrides (in its conftest, session-scoped) to build the
    template with its own migrations as well as jobkeeper's; by default jobkeeper's alone."""
    return Migrations(upgrade=upgrade, version="")


@pytest.fixture(scope="session")
def database_prefix(pytestconfig: pytest.Config) -> str:
    """The ``jobkeeper_database_prefix`` ini option: the start of every database name here."""
    prefix = str(pytestconfig.getini(PREFIX_OPTION))
    if not _PREFIX.fullmatch(prefix):
        pytest.fail(
            f"{PREFIX_OPTION} = {prefix!r}: use 1 to 30 lowercase letters, digits and _,"
            " starting with a letter",
            pytrace=False,
        )
    return prefix


def _template_name(prefix: str, migrations: Migrations) -> str:
    own = hash_files(files("jobkeeper") / "migrations")  # the revisions and their env.py
    key = hashlib.sha256(f"{own}\0{migrations.version}".encode()).hexdigest()[:12]
    return f"{prefix}_tmpl_{key}"


async def _drop_stale_templates(conn: asyncpg.Connection, prefix: str, keep: str) -> None:
    """Drop the prefix's other templates that no running session holds: a session holds its
    template (a shared advisory lock) from before it looks for it until it ends, so a template
    another session clones from is never dropped under it."""
    template = re.compile(rf"{re.escape(prefix)}_tmpl_[0-9a-f]{{12}}")
    for row in await conn.fetch("SELECT datname FROM pg_database"):
        name = row["datname"]
        if name == keep or not template.fullmatch(name):
            continue
        if await conn.fetchval(
            "SELECT pg_try_advisory_lock($1, hashtext($2))", _TEMPLATE_LOCK_CLASS, name
        ):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, hashtext($2))", _TEMPLATE_LOCK_CLASS, name
                )


async def _build_template(
    conn: asyncpg.Connection, server_url: str, name: str, migrations: Migrations
) -> None:
    """Migrate a fresh database and rename it to ``name``: a template exists only complete."""
    building = f"{name}_{uuid.uuid4().hex[:8]}"
    url = await create_database(server_url, building)
    try:
        try:
            await asyncio.to_thread(migrations.upgrade, url)
        except BaseException as exc:
            exc.add_note(f"jobkeeper.testing: migrating the template {name} failed")
            raise
        # a rename (and every later clone) needs the database to itself: a pool the hook left
        # open would make both fail
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", building
        )
        with suppress(asyncpg.DuplicateDatabaseError):  # a concurrent session built it first
            await conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
    finally:
        await drop_database(server_url, building)


@pytest.fixture(scope="session")
async def template_database(
    postgres_server_url: str, database_prefix: str, jobkeeper_migrations: Migrations
) -> AsyncIterator[str]:
    """Name of the migrated template, built once per change of the migrations and held (so no
    other session drops it) until the session ends."""
    name = _template_name(database_prefix, jobkeeper_migrations)
    conn = await _admin(postgres_server_url)
    try:
        await conn.execute(
            "SELECT pg_advisory_lock_shared($1, hashtext($2))", _TEMPLATE_LOCK_CLASS, name
        )
        await _drop_stale_templates(conn, database_prefix, keep=name)
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await _build_template(conn, postgres_server_url, name, jobkeeper_migrations)
        yield name
    finally:
        await conn.close()  # releases the hold


@pytest.fixture(scope="module")
async def database_url(
    postgres_server_url: str, template_database: str, database_prefix: str
) -> AsyncIterator[str]:
    """A fresh, migrated database for this test module (a ``postgresql://`` URL), dropped
    afterwards."""
    name = f"{database_prefix}_test_{uuid.uuid4().hex[:12]}"
    url = await create_database(postgres_server_url, name, template=template_database)
    try:
        yield url
    finally:
        await drop_database(postgres_server_url, name)


@pytest.fixture
async def job_manager(database_url: str) -> AsyncIterator[JobManager]:
    """A connected ``JobManager`` on the module's database, closed after the test."""
    async with await JobManager.connect(database_url) as manager:
        yield manager


@pytest.fixture
def tenant() -> str:
    """A tenant name no other test uses, so tests sharing a database never see each other's jobs."""
    return f"tenant-{uuid.uuid4().hex[:12]}"


# --- HTTP --------------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan_client(
    app: Starlette, *, base_url: str = "http://test", **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client that calls ``app`` in-process, with the app's lifespan running: started
    on enter, shut down on exit. ``options`` go to ``httpx.AsyncClient`` (``headers``,
    ``timeout``...).

    ``httpx.ASGITransport`` alone runs no lifespan, so routes that read what the lifespan yielded
    (jobkeeper's do: ``KeyError: 'jobkeeper'``) fail. This runs it and hands each request a
    shallow copy of its state, as Starlette does under a server.
    """
    async with app.router.lifespan_context(app) as state:
        shared = dict(state or {})

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] in ("http", "websocket"):
                scope = {**scope, "state": {**shared, **scope.get("state", {})}}
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url=base_url, **options) as client:
            yield client
