"""The demo: ``python -m jobkeeper.demo`` (``make demo``) shows the job-state layer at work, and
``tasks``, the demo task registry (``jobkeeper worker jobkeeper.demo:tasks``).

With ``JOBKEEPER_DATABASE_URL`` set it uses that database; otherwise it starts an embedded Postgres
(kept under ``/var/tmp`` between runs, so jobs from an earlier run are still there: state survives
restarts) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import httpx
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.prompt import Confirm

from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.embedded import EmbeddedPostgres, default_data_dir
from jobkeeper.errors import PermanentFailure
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.settings import Settings, asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry, Worker

__all__ = ["main", "tasks"]

tasks = TaskRegistry()


@tasks.task("demo.sleep")
async def sleep(ctx: JobContext, payload: dict[str, Any] | None) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps`` steps, reporting progress; honours cancel at every step."""
    payload = payload or {}
    seconds = float(payload.get("seconds", 1.0))
    steps = max(1, int(payload.get("steps", 10)))
    for step in range(steps):
        ctx.raise_if_cancelled()
        await asyncio.sleep(seconds / steps)
        ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return {"slept": seconds, "steps": steps}


@tasks.task("demo.fail")
async def fail(ctx: JobContext, payload: dict[str, Any] | None) -> None:
    """Always fails (retried until ``max_attempts``); ``{"permanent": true}`` fails at once."""
    payload = payload or {}
    message = str(payload.get("message", "demo.fail failed, as it always does"))
    if payload.get("permanent"):
        raise PermanentFailure(message)
    raise RuntimeError(message)


APPROVAL = {
    "type": "object",
    "properties": {"approve": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approve"],
    "additionalProperties": False,
}


@tasks.task("demo.ask")
async def ask(ctx: JobContext, payload: dict[str, Any] | None) -> dict[str, Any]:
    """Ask a person to approve (``{"approve": bool, "comment": str?}``) and return the answer."""
    payload = payload or {}
    question = str(payload.get("question", "Approve this loan summary?"))
    timeout = payload.get("timeout")
    answer = await ctx.ask(question, schema=APPROVAL, timeout=timeout)
    return {"question": question, "answer": answer}


@tasks.task("demo.cpu")
def cpu(ctx: JobContext, payload: dict[str, Any] | None) -> dict[str, Any]:
    """A CPU-bound loop in a worker thread (a sync handler); checks for cancel between rounds."""
    payload = payload or {}
    rounds = max(1, int(payload.get("rounds", 50)))
    size = int(payload.get("size", 200_000))
    total = 0
    for done in range(rounds):
        ctx.raise_if_cancelled()
        total += sum(i * i for i in range(size)) % 1_000_003
        ctx.progress((done + 1) / rounds, f"round {done + 1} of {rounds}")
    return {"rounds": rounds, "checksum": total}


DEMO_DATABASE = "jobkeeper_demo"


@contextmanager
def demo_database() -> Iterator[str]:
    """The configured database, or an embedded server's ``jobkeeper_demo`` database."""
    configured = Settings().database_url
    if configured:
        print(f"using JOBKEEPER_DATABASE_URL ({configured.split('@')[-1]})")
        yield configured
        return
    print("no JOBKEEPER_DATABASE_URL: starting an embedded Postgres ...")
    server = EmbeddedPostgres(default_data_dir("demo-pg"))
    try:
        asyncio.run(_ensure_database(server.url(), DEMO_DATABASE))
        yield server.url(DEMO_DATABASE)
    finally:
        server.stop()
        print("embedded Postgres stopped")


async def _ensure_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


DEMO_TENANT = "demo"


async def _serve(app: Any, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.started:
            return server, task
        if task.done():
            task.result()  # raises what stopped it
        await asyncio.sleep(0.02)
    raise TimeoutError("the demo API did not start within 30 s")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Story:
    """The demo's story, told over the HTTP API while a worker runs the jobs."""

    def __init__(self, http: httpx.AsyncClient, base: str, key: str, console: Console) -> None:
        self.http = http
        self.base = base
        self.key = key
        self.console = console

    async def submit(self, kind: str, payload: dict[str, Any], **options: Any) -> str:
        response = await self.http.post("/jobs", json={"kind": kind, "payload": payload, **options})
        response.raise_for_status()
        return str(response.json()["id"])

    async def job(self, job_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/jobs/{job_id}", headers={"Cache-Control": "no-cache"})
        response.raise_for_status()
        found: dict[str, Any] = response.json()
        return found

    async def until(self, job_id: str, *statuses: str) -> dict[str, Any]:
        """Poll the job over HTTP (as a browser client would) until it reaches a status."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            await asyncio.sleep(0.1)
        raise TimeoutError(f"job {job_id} did not become {statuses} within 120 s")

    async def tell(self) -> None:
        say = self.console.print
        say("\n[bold]1. Three jobs with live progress[/] (a worker runs them; we watch over HTTP)")
        ids = [await self.submit("demo.sleep", {"seconds": 3 + i, "steps": 12}) for i in range(3)]
        await self.watch_progress(ids)

        say("\n[bold]2. A long job cancelled mid-run[/]")
        long_job = await self.submit("demo.sleep", {"seconds": 60, "steps": 600})
        await self.until(long_job, "running")
        await asyncio.sleep(1.0)
        started = time.monotonic()
        await self.http.post(f"/jobs/{long_job}/cancel")
        job = await self.until(long_job, "cancelled")
        say(f"   cancelled at {_percent(job)} after {time.monotonic() - started:.2f} s")

        say("\n[bold]3. A job that fails, is retried with backoff, and fails for good[/]")
        failing = await self.submit("demo.fail", {}, max_attempts=3)
        job = await self.until(failing, "failed")
        events = (await self.http.get(f"/jobs/{failing}/events?after=0")).text
        kinds = [line[7:] for line in events.splitlines() if line.startswith("event: ")]
        say(f"   attempts {job['attempts']}, error {job['error']['code']}: {' -> '.join(kinds)}")

        say("\n[bold]4. A job that stops to ask a person[/] (no worker slot is held meanwhile)")
        asking = await self.submit("demo.ask", {"question": "Approve the loan summary for #1234?"})
        job = await self.until(asking, "waiting_input")
        say(f"   it asks: [italic]{job['prompt']['text']}[/]  (schema: approve bool, comment str)")
        say(
            f"   answer it in the dashboard ({self.base}/ui/inbox) or from anywhere, e.g.:\n"
            f"   curl -X POST {self.base}/jobs/{asking}/input -H 'Authorization: Bearer {self.key}'"
            " -H 'content-type: application/json' -d '{\"answer\": {\"approve\": true}}'"
        )
        approve = True
        if sys.stdin.isatty():
            approve = Confirm.ask("   approve it now from here?", default=True)
        else:
            say("   (not a terminal: answering yes automatically)")
        await self.http.post(f"/jobs/{asking}/input", json={"answer": {"approve": approve}})
        job = await self.until(asking, "succeeded", "failed")
        say(f"   resumed on a worker and {job['status']}: {job['result']}")

    async def watch_progress(self, ids: list[str]) -> None:
        with Progress(
            TextColumn("   {task.description}"),
            BarColumn(),
            TextColumn("{task.fields[status]:<10}"),
            console=self.console,
        ) as bars:
            tasks = {i: bars.add_task(f"job {i[:13]}...", total=1.0, status="queued") for i in ids}
            while True:
                jobs = [await self.job(i) for i in ids]
                for job in jobs:
                    bars.update(
                        tasks[job["id"]],
                        completed=1.0 if job["status"] == "succeeded" else _fraction(job),
                        status=job["status"],
                    )
                if all(job["status"] in ("succeeded", "failed", "cancelled") for job in jobs):
                    return
                await asyncio.sleep(0.2)


def _fraction(job: dict[str, Any]) -> float:
    return float(job["progress"]["fraction"] or 0.0)


def _percent(job: dict[str, Any]) -> str:
    return f"{_fraction(job):.0%}"


async def run_story(url: str, *, linger: bool) -> None:
    """Start the API and a worker on ``url``, tell the story, then (``linger``) keep serving."""
    console = Console()
    settings = Settings(database_url=url, auth="keys", sweep_interval=1.0)
    port = _free_port()
    async with await JobManager.from_settings(settings) as jobs:
        key = (await ApiKeys(jobs, cache_ttl=0).create(DEMO_TENANT, "demo")).key
        worker = Worker(jobs, tasks, concurrency=4, backoff_base=0.5, backoff_max=2.0)
        working = asyncio.create_task(worker.run())
        server, serving = await _serve(create_app(settings), port)
        base = f"http://127.0.0.1:{port}"
        console.print(f"API at [bold]{base}[/] (OpenAPI docs at {base}/docs), worker running")
        console.print(f"Dashboard at [bold]{base}/ui[/] (sign in with the key {key})")
        headers = {"Authorization": f"Bearer {key}"}
        try:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
                await Story(http, base, key, console).tell()
                story = Story(http, base, key, console)
                open_question = await story.submit(
                    "demo.ask", {"question": "Approve the quarterly report?"}
                )
                await story.until(open_question, "waiting_input")  # asked: in the inbox now
            console.print(
                f"\n[bold]Done.[/] The API is at {base} (docs: {base}/docs), "
                f"tenant {DEMO_TENANT!r}, key {key}\n"
                f"Dashboard: {base}/ui; a question waits in its inbox ({base}/ui/inbox): "
                f"job {open_question}"
            )
            if linger:
                console.print("Press Ctrl-C to stop.")
                await asyncio.Event().wait()
        finally:
            server.should_exit = True
            worker.stop()
            await asyncio.gather(serving, working, return_exceptions=True)


def main() -> None:
    """``make demo``: the story on an embedded (or configured) Postgres; Ctrl-C stops it."""
    with demo_database() as url:
        upgrade(url)
        try:
            asyncio.run(run_story(url, linger=sys.stdin.isatty()))
        except KeyboardInterrupt:
            print("\nstopped")


if __name__ == "__main__":
    main()
