"""Helpers of the HTTP API tests: the app served in-process (lifespan running), problem and
job assertions, polling, Server-Sent Events, in-process workers and server subprocesses.

httpx's ``ASGITransport`` does not run the lifespan, and the routes read their services from the
request state the lifespan yields: ``serve()`` runs the app through ``jobkeeper.testing``'s
``lifespan_client``, which does, and notes when each path's response starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import jobkeeper.demo
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.testing import lifespan_client
from jobkeeper.worker import Worker
from support import eventually, make_worker

PROBLEM_JSON = "application/problem+json"
DEADLINE = 30.0  # generous bound for anything we wait for
JOB_FIELDS = {
    "id",
    "kind",
    "status",
    "progress",
    "payload",
    "result",
    "error",
    "prompt",
    "attempts",
    "max_attempts",
    "priority",
    "concurrency_key",
    "cancel_requested",
    "pinned",
    "version",
    "run_after",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "schedule_id",
    "scheduled_for",
    "parent_id",
    "waiting_for",
    "sleeping_until",
}
TIMESTAMP_FIELDS = (
    "run_after",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "sleeping_until",
)
# a kind no worker of these tests handles: such jobs stay queued
IDLE_KIND = "report.build"
BIN = Path(sys.executable).parent


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: nothing from the environment or a ``.env`` file."""
    values: dict[str, Any] = {"database_url": database_url, "auth": "keys", "pool_size": 4}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class Served:
    """A running app: a client for it, and the paths whose responses have started."""

    client: httpx.AsyncClient
    app: FastAPI
    started: dict[str, asyncio.Event] = field(default_factory=dict)

    def response_started(self, path: str) -> asyncio.Event:
        return self.started.setdefault(path, asyncio.Event())

    @asynccontextmanager
    async def as_caller(self, headers: dict[str, str]) -> AsyncIterator[Served]:
        """The same running app, reached by a client that sends ``headers``."""
        async with httpx.AsyncClient(
            transport=self.client._transport,
            base_url=self.client.base_url,
            headers=headers,
            timeout=DEADLINE,
        ) as client:
            yield Served(client=client, app=self.app, started=self.started)


@asynccontextmanager
async def serve(app: FastAPI, headers: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """Run ``app``'s lifespan and yield an httpx client that reaches the app in-process."""
    started: dict[str, asyncio.Event] = {}

    def noticing(inner: ASGIApp) -> ASGIApp:
        async def notice_starts(scope: Scope, receive: Receive, send: Send) -> None:
            async def noticed(message: Message) -> None:
                if message["type"] == "http.response.start":
                    started.setdefault(scope["path"], asyncio.Event()).set()
                await send(message)

            await inner(scope, receive, noticed)

        return notice_starts

    # around the built stack, not as middleware of the app's: create_app's app answers the polled
    # read in front of its stack only when the application added no middleware of its own
    app.middleware_stack = noticing(app.build_middleware_stack())
    async with lifespan_client(app, headers=headers, timeout=DEADLINE) as client:
        yield Served(client=client, app=app, started=started)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- assertions --------------------------------------------------------------------------------


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """An RFC 9457 problem with ``code``, and the request id header on it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    assert response.headers.get("x-request-id"), "every error carries X-Request-ID"
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["type"] == f"urn:jobkeeper:problem:{code}"
    # one id per response (a duplicated header is checked on its own where it happens)
    assert set(response.headers.get_list("x-request-id")) == {body["request_id"]}
    assert isinstance(body["title"], str) and isinstance(body["detail"], str)
    return body


def assert_utc(value: object) -> None:
    assert isinstance(value, str) and value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


def assert_job(body: Any) -> dict[str, Any]:
    """A job as the API shows it: exactly the documented fields, UTC timestamps ending in Z."""
    assert isinstance(body, dict)
    assert set(body) == JOB_FIELDS, set(body) ^ JOB_FIELDS
    assert set(body["progress"]) == {"fraction", "message"}
    for name in TIMESTAMP_FIELDS:
        if body[name] is not None or name in ("run_after", "created_at", "updated_at"):
            assert_utc(body[name])
    return body


# --- polling -----------------------------------------------------------------------------------


async def job_status(
    client: httpx.AsyncClient, job_id: str, statuses: Sequence[str], **headers: str
) -> dict[str, Any]:
    """Poll ``GET /jobs/{id}`` until the job is in one of ``statuses``."""

    async def probe() -> dict[str, Any] | None:
        response = await client.get(f"/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["status"] in statuses else None

    found: dict[str, Any] = await eventually(
        probe, timeout=DEADLINE, what=f"job {job_id} to be {statuses}"
    )
    return found


# --- Server-Sent Events ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sse:
    id: str | None
    event: str | None
    data: Any


def parse_sse(text: str) -> list[Sse]:
    """Parse a ``text/event-stream`` body into its events (comments and pings skipped)."""
    events: list[Sse] = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, list[str]] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)
        if "data" not in fields:
            continue
        data = "\n".join(fields["data"])
        events.append(
            Sse(
                id=fields.get("id", [None])[-1],
                event=fields.get("event", [None])[-1],
                data=json.loads(data),
            )
        )
    return events


class SseReader:
    """Reads events from a streaming httpx response as they arrive."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()
        self._block: list[str] = []

    async def next(self) -> Sse | None:
        """The next event, or ``None`` when the stream ends."""
        async for line in self._lines:
            if line:
                self._block.append(line)
                continue
            events = parse_sse("\n".join(self._block) + "\n\n")
            self._block = []
            if events:
                return events[0]
        return None


def assert_event_stream(events: Sequence[Sse], first_seq: int = 1) -> None:
    """Ids are consecutive sequence numbers from ``first_seq``; id, event and data agree."""
    assert [int(e.id or 0) for e in events] == list(range(first_seq, first_seq + len(events)))
    for event in events:
        assert event.data["seq"] == int(event.id or 0)
        assert event.data["type"] == event.event
        assert set(event.data) == {"seq", "type", "at", "data"}


# --- workers -----------------------------------------------------------------------------------


@asynccontextmanager
async def running_worker(manager: JobManager, kinds: Sequence[str]) -> AsyncIterator[Worker]:
    """An in-process worker for the demo tasks, stopped (at once) afterwards."""
    worker = make_worker(
        manager,
        jobkeeper.demo.tasks,
        kinds=list(kinds),
        lease_seconds=5.0,
        shutdown_grace=0.5,
        progress_interval=0.05,
    )
    task = asyncio.create_task(worker.run(), name="api-test-worker")
    try:
        yield worker
    finally:
        worker.stop()
        worker.stop()
        done, _ = await asyncio.wait([task], timeout=DEADLINE)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            pytest.fail("the in-process worker did not stop")
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


# --- subprocesses ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


class Processes:
    """Subprocesses of one test: started with logs in files, always killed at the end."""

    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.env = {
            **os.environ,
            "JOBKEEPER_DATABASE_URL": database_url,
            "JOBKEEPER_FEED_INTERVAL": "0.5",
            "JOBKEEPER_LEASE_SECONDS": "5",
            "JOBKEEPER_SHUTDOWN_GRACE": "0.5",
        }
        self.started: list[Process] = []

    def start(self, name: str, *args: str) -> Process:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [str(BIN / "jobkeeper"), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.tmp,  # no stray .env file
            )
        process = Process(name, popen, log)
        self.started.append(process)
        return process

    async def serve(self, name: str, port: int | None = None) -> str:
        """Start ``jobkeeper serve`` on 127.0.0.1 (on ``port``, else a free one); return its base
        URL once healthy."""
        port = port or free_port()
        process = self.start(name, "serve", "--host", "127.0.0.1", "--port", str(port))
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=2.0) as client:

            async def healthy() -> bool:
                if process.popen.poll() is not None:
                    pytest.fail(f"{name} exited early:\n{process.output()}")
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(healthy, timeout=DEADLINE, what=f"{name} to be ready")
        return base

    def alive(self, process: Process) -> None:
        if process.popen.poll() is not None:
            pytest.fail(f"{process.name} exited:\n{process.output()}")

    def stop_all(self) -> None:
        for process in self.started:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.started:
            try:
                process.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.popen.kill()
                process.popen.wait(timeout=10)
