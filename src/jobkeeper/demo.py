"""The demo: ``python -m jobkeeper.demo`` (``make demo``) shows the job-state layer at work, and
``tasks``, the demo task registry (``jobkeeper worker jobkeeper.demo:tasks``).

With ``JOBKEEPER_DATABASE_URL`` set it uses that database; otherwise it starts an embedded Postgres
(kept under ``/var/tmp`` between runs, so jobs from an earlier run are still there: state survives
restarts) and stops it at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from jobkeeper.embedded import EmbeddedPostgres, default_data_dir
from jobkeeper.errors import IdempotencyConflict, JobNotFound, PermanentFailure
from jobkeeper.manager import JobManager
from jobkeeper.migrate import upgrade
from jobkeeper.settings import Settings, asyncpg_dsn
from jobkeeper.worker import JobContext, TaskRegistry

__all__ = ["main", "tasks"]

tasks = TaskRegistry()


@tasks.task("demo.sleep")
async def sleep(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleep ``seconds`` in ``steps`` steps, reporting progress; honours cancel at every step."""
    seconds = float(payload.get("seconds", 1.0))
    steps = max(1, int(payload.get("steps", 10)))
    for step in range(steps):
        ctx.raise_if_cancelled()
        await asyncio.sleep(seconds / steps)
        ctx.progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return {"slept": seconds, "steps": steps}


@tasks.task("demo.fail")
async def fail(ctx: JobContext, payload: dict[str, Any]) -> None:
    """Always fails (retried until ``max_attempts``); ``{"permanent": true}`` fails at once."""
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
async def ask(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Ask a person to approve (``{"approve": bool, "comment": str?}``) and return the answer."""
    question = str(payload.get("question", "Approve this loan summary?"))
    timeout = payload.get("timeout")
    answer = await ctx.ask(question, schema=APPROVAL, timeout=timeout)
    return {"question": question, "answer": answer}


@tasks.task("demo.cpu")
def cpu(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """A CPU-bound loop in a worker thread (a sync handler); checks for cancel between rounds."""
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


async def story(url: str) -> None:
    """Submit, replay, read (cache vs database), list, cancel and show a job's history."""
    async with await JobManager.connect(url, cache_size=1_000) as jobs:
        earlier = await jobs.list(tenant="demo", limit=500)
        print(f"\n1. jobs kept from earlier runs of the demo: {len(earlier.items)}")

        job = await jobs.submit("demo", "convert_pdf", {"file": "loan-1234.pdf"})
        print(f"2. submitted {job.kind} {job.id}: {job.status}, version {job.version}")

        key = f"upload-{int(time.time())}"
        first = await jobs.submit("demo", "analyse_loan", {"loan": 1234}, idempotency_key=key)
        again = await jobs.submit("demo", "analyse_loan", {"loan": 1234}, idempotency_key=key)
        print(
            f"3. a retried POST with idempotency key {key!r} returns the same job: "
            f"{first.id == again.id}"
        )
        try:
            await jobs.submit("demo", "analyse_loan", {"loan": 9999}, idempotency_key=key)
        except IdempotencyConflict as exc:
            print(f"   the same key with another payload is refused: {exc.code}")

        start = time.perf_counter()
        strong = await jobs.get(job.id, tenant="demo", consistency="strong")
        db_us = (time.perf_counter() - start) * 1e6
        start = time.perf_counter()
        cached = await jobs.get(job.id, tenant="demo")
        hit_us = (time.perf_counter() - start) * 1e6
        print(
            f"4. read from Postgres in {db_us:.0f} µs, from the hot cache in {hit_us:.1f} µs "
            f"(same version: {strong.version == cached.version})"
        )

        try:
            await jobs.get(job.id, tenant="someone-else")
        except JobNotFound as exc:
            print(f"5. another tenant asking for it gets {exc.code}, as if it did not exist")

        cancelled = await jobs.cancel(job.id, tenant="demo")
        print(f"6. cancelled a queued job: {cancelled.status}, version {cancelled.version}")

        history = await jobs.events(job.id, tenant="demo")
        print("7. its history: " + ", ".join(f"#{e.seq} {e.type}" for e in history))

        page = await jobs.list(tenant="demo", limit=5)
        print("8. newest jobs of tenant 'demo':")
        for item in page.items:
            print(f"   {item.created_at:%H:%M:%S} {item.kind:<13} {item.status:<10} {item.id}")
        stats = jobs.cache_stats()
        print(
            f"9. cache: {stats.size}/{stats.maxsize} entries, {stats.hits} hits, "
            f"{stats.misses} misses"
        )


def main() -> None:
    with demo_database() as url:
        upgrade(url)
        asyncio.run(story(url))


if __name__ == "__main__":
    main()
