"""The browser suite's harness: a real HTTP server (uvicorn on a free loopback port, in the test's
event loop), Debian's chromium driven by Playwright (never a downloaded browser), worker
processes, and a guard that fails the test if a page tries to reach any other host.

Two ways in, as in production: ``served`` is ``jobkeeper serve``'s app (API-key sign-in; two
keys of one tenant are two people, ``api-key:<key id>``, without roles), and ``team`` mounts the
dashboard in an application of its own whose ``Caller`` dependency reads a cookie naming one of
``PEOPLE`` (a principal ``user:<name>`` and roles), which assignees such as ``role:manager``
need."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import uvicorn
from fastapi import FastAPI, Request
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright
from starlette.exceptions import HTTPException

from faults.support import Workers
from jobkeeper.api import Caller, create_app, lifespan, ui_router
from jobkeeper.api.auth import ApiKeys, NewKey
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TENANT = "acme"
# the team application's people: who the cookie ``PERSON_COOKIE`` names
PEOPLE = {
    "alice": Caller(TENANT, "user:alice", frozenset({"underwriter"})),
    "carol": Caller(TENANT, "user:carol", frozenset({"manager"})),
}
PERSON_COOKIE = "team_person"
# the wait of every browser expectation; the expected times are well under a second
EXPECT_MS = 15_000
LOCAL_HOSTS = {"127.0.0.1", "localhost"}


@dataclass
class Served:
    base: str
    jobs: JobManager
    key: str
    screenshots: Path
    tasks: Workers | None = None
    gates: Path = field(default_factory=Path)
    second: NewKey | None = None  # another key of TENANT: another person
    first_id: str = ""  # the id of ``key`` (its principal is api-key:<id>)

    def url(self, path: str) -> str:
        return self.base + path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """``app`` served by uvicorn on a free loopback port: its base URL."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    running = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if running.done():
                    running.result()  # raises why it could not start
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(running, 30)


@pytest.fixture(scope="module")
async def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Served]:
    """The whole service (API and dashboard) on a free port, with two API keys of ``TENANT``."""
    settings = Settings(database_url=database_url, ui_secret="test-secret", sweep_interval=0.5)
    async with (
        serving(create_app(settings)) as base,
        await JobManager.from_settings(settings) as jobs,
    ):
        first = await ApiKeys(jobs).create(TENANT, "browser tests")
        second = await ApiKeys(jobs).create(TENANT, "a second reviewer")
        shots = Path(os.environ.get("JOBKEEPER_UI_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
        shots.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, at setup)
        gates = tmp_path_factory.mktemp("gates")
        yield Served(
            base, jobs, first.key, shots, gates=gates, second=second, first_id=str(first.id)
        )


async def person(request: Request) -> Caller:
    """The team application's sign-in: the person its cookie names (401 for anyone else)."""
    found = PEOPLE.get(request.cookies.get(PERSON_COOKIE, ""))
    if found is None:
        raise HTTPException(401, "who are you?")
    return found


@pytest.fixture(scope="module")
async def team(database_url: str) -> AsyncIterator[str]:
    """An application of its own with the dashboard at ``/team`` and its people (``PEOPLE``):
    the base URL."""
    app = FastAPI(lifespan=lifespan(Settings(database_url=database_url, sweep_interval=0.5)))
    app.include_router(ui_router(caller=person, prefix="/team"))
    async with serving(app) as base:
        yield base


async def as_person(browser: Browser, offline: Offline, base: str, name: str) -> Page:
    """A page of the team application, signed in as ``name`` (its cookie)."""
    context = await new_context(browser, offline, viewport={"width": 1280, "height": 800})
    await context.add_cookies([{"name": PERSON_COOKIE, "value": name, "url": base}])
    return await context.new_page()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 (once, at setup)
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    async with async_playwright() as playwright:
        found = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield found
        finally:
            await found.close()


class Offline:
    """Aborts and remembers every request of a context to a host other than this machine."""

    def __init__(self) -> None:
        self.attempted: list[str] = []

    async def route(self, route: Route) -> None:
        host = urlsplit(route.request.url).hostname or ""
        if route.request.url.startswith(("data:", "blob:")) or host in LOCAL_HOSTS:
            await route.continue_()
        else:
            self.attempted.append(route.request.url)
            await route.abort()


@pytest.fixture
async def offline() -> AsyncIterator[Offline]:
    guard = Offline()
    yield guard
    assert not guard.attempted, f"a page tried to reach the internet: {guard.attempted}"


async def new_context(browser: Browser, offline: Offline, **options: object) -> BrowserContext:
    context = await browser.new_context(**options)  # type: ignore[arg-type]
    context.set_default_timeout(EXPECT_MS)
    await context.route("**/*", offline.route)
    return context


async def sign_in(page: Page, served: Served, path: str = "/ui", key: str | None = None) -> None:
    """Through the sign-in page, as a person does: the key (``served.key``) typed once."""
    await page.goto(served.url(path))
    await page.get_by_label("API key").fill(key or served.key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"**{path}")


@pytest.fixture
async def page(browser: Browser, served: Served, offline: Offline) -> AsyncIterator[Page]:
    """A signed-in page on a laptop-sized screen."""
    context = await new_context(browser, offline, viewport={"width": 1280, "height": 800})
    try:
        found = await context.new_page()
        await sign_in(found, served)
        yield found
    finally:
        await context.close()


@pytest.fixture(scope="module")
async def workers(
    served: Served, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Workers]:
    """One ``jobkeeper worker`` process running ``tests/ui/ui_tasks.py``."""
    found = Workers(
        database_url,
        tmp_path_factory.mktemp("workers"),
        tasks="tests.ui.ui_tasks:tasks",
        prefix_var="UI_KIND_PREFIX",
    )
    try:
        await found.start(grace=1.0)
        yield found
    finally:
        await found.close()
