"""procrastinate as the throughput benchmark drives it: one ``App`` on a psycopg pool, deferring
from the parent and ``run_worker_async`` in each worker process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import procrastinate
from procrastinate.types import JSONValue

from systems import PEER_TASK, PRODUCERS, Config, Producer, Ready, System, WorkerArgs
from systems.jobkeeper import asyncpg_dsn

CONCURRENCY = 10


def app(url: str, pool_size: int) -> procrastinate.App:
    """An ``App`` on a psycopg pool of ``pool_size`` with the no-op task."""
    # it warns that an App defined in __main__ cannot be found by its CLI: we do not use the CLI
    logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
    made = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=asyncpg_dsn(url), min_size=1, max_size=pool_size
        )
    )

    @made.task(name=PEER_TASK)
    async def noop(n: int) -> None:
        return None

    return made


class Procrastinate(System):
    name = "procrastinate"
    done_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
    pending_sql = (
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status IN ('todo', 'doing'))"
    )
    reset_sql = (
        "TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_workers,"
        " procrastinate_periodic_defers CASCADE"
    )
    workers_method = (
        f"procrastinate: `run_worker_async(concurrency={CONCURRENCY}, wait=False)` on a psycopg "
        f"pool of {CONCURRENCY + 2}, `listen_notify` on."
    )
    configurations = (
        Config(
            "proc1",
            f"1 process, concurrency {CONCURRENCY}",
            1,
            WorkerArgs(concurrency=CONCURRENCY),
            share=10,
        ),
    )

    @asynccontextmanager
    async def installed(self) -> AsyncIterator[None]:
        """The schema, and the parent's ``App`` (pool of ``PRODUCERS``), open meanwhile."""
        self.app = app(self.url, PRODUCERS)
        async with self.app.open_async():
            await self.app.schema_manager.apply_schema_async()
            yield

    async def preload(self, n: int) -> None:
        task = self.app.tasks[PEER_TASK]
        for start in range(0, n, 1_000):
            jobs: list[dict[str, JSONValue]] = [
                {"n": start + i} for i in range(min(1_000, n - start))
            ]
            await task.batch_defer_async(*jobs)

    @asynccontextmanager
    async def producer(self, batch: int) -> AsyncIterator[Producer]:
        """``defer_async`` and ``batch_defer_async`` on the parent's ``App``."""
        task = self.app.tasks[PEER_TASK]

        def single(i: int) -> Awaitable[object]:
            return task.defer_async(n=i)

        def batched(i: int) -> Awaitable[object]:
            jobs: list[dict[str, JSONValue]] = [{"n": i * batch + k} for k in range(batch)]
            return task.batch_defer_async(*jobs)

        yield Producer(
            ("`defer_async`", single),
            (f"`batch_defer_async`, {batch} per call", batched),
        )

    @staticmethod
    async def run_worker(url: str, args: WorkerArgs, ready: Ready) -> None:
        """``procrastinate worker`` in-process: ``run_worker_async`` with ``args.concurrency``
        on a pool of two more connections; in a drain it stops once the queue is empty."""
        worker_app = app(url, args.concurrency + 2)
        async with worker_app.open_async():
            await ready()
            await worker_app.run_worker_async(concurrency=args.concurrency, wait=not args.drain)


ADAPTER = Procrastinate
