"""pgqueuer as the throughput benchmark drives it: ``Queries`` to enqueue, a ``QueueManager`` on
one asyncpg connection per worker process (its documented setup)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer.models import Job
from pgqueuer.qm import QueueManager
from pgqueuer.queries import Queries

from systems import PEER_TASK, PRODUCERS, Config, Producer, Ready, System, WorkerArgs
from systems.jobkeeper import asyncpg_dsn

DEFAULT_BATCH = 10  # QueueManager.run's own default
BEST_BATCH = 100
_DEFAULT = WorkerArgs(batch=DEFAULT_BATCH)
_BEST = WorkerArgs(batch=BEST_BATCH)
_B = BEST_BATCH


class Pgqueuer(System):
    name = "pgqueuer"
    done_sql = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'"
    pending_sql = "SELECT EXISTS (SELECT 1 FROM pgqueuer)"
    reset_sql = "TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics"
    workers_method = (
        "pgqueuer: `QueueManager` on one asyncpg connection, `run(batch_size=...)`, no task cap, "
        f"on uvloop as `pgq run` runs it (one row on asyncio); batch {DEFAULT_BATCH} is its "
        "default."
    )
    configurations = (
        Config(
            "pgq10",
            f"1 process, batch {DEFAULT_BATCH} (default), uvloop",
            1,
            _DEFAULT,
            uvloop=True,
            share=4,
        ),
        Config("pgq1", f"1 process, batch {_B}, uvloop", 1, _BEST, uvloop=True),
        Config("pgq1aio", f"1 process, batch {_B}, asyncio loop", 1, _BEST),
        Config("pgq2", f"2 processes, batch {_B}, uvloop", 2, _BEST, uvloop=True),
        Config("pgq4", f"4 processes, batch {_B}, uvloop", 4, _BEST, uvloop=True),
    )

    @asynccontextmanager
    async def installed(self) -> AsyncIterator[None]:
        await Queries.from_asyncpg_connection(self.admin).install()
        yield

    async def preload(self, n: int) -> None:
        queries = Queries.from_asyncpg_connection(self.admin)
        for start in range(0, n, 5_000):
            count = min(5_000, n - start)
            await queries.enqueue(
                [PEER_TASK] * count,
                [json.dumps({"n": start + i}).encode() for i in range(count)],
                [0] * count,
            )

    @asynccontextmanager
    async def producer(self, batch: int) -> AsyncIterator[Producer]:
        """``Queries.enqueue`` on an asyncpg pool of ``PRODUCERS``, one job or lists."""
        pool = await asyncpg.create_pool(
            asyncpg_dsn(self.url), min_size=PRODUCERS, max_size=PRODUCERS
        )
        assert pool is not None
        try:
            queries = Queries.from_asyncpg_pool(pool)

            def single(i: int) -> Awaitable[object]:
                return queries.enqueue(PEER_TASK, json.dumps({"n": i}).encode())

            def batched(i: int) -> Awaitable[object]:
                return queries.enqueue(
                    [PEER_TASK] * batch,
                    [json.dumps({"n": i * batch + k}).encode() for k in range(batch)],
                    [0] * batch,
                )

            yield Producer(
                ("`Queries.enqueue`, one job", single),
                (f"`Queries.enqueue`, lists of {batch}", batched),
            )
        finally:
            await pool.close()

    @staticmethod
    async def run_worker(url: str, args: WorkerArgs, ready: Ready) -> None:
        """A ``QueueManager`` on one asyncpg connection, ``run(batch_size=args.batch)``."""
        conn = await asyncpg.connect(asyncpg_dsn(url))
        try:
            qm = QueueManager(Queries.from_asyncpg_connection(conn))

            @qm.entrypoint(PEER_TASK)
            async def noop(job: Job) -> None:
                return None

            await ready()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
            await qm.run(batch_size=args.batch)
        finally:
            await conn.close()


ADAPTER = Pgqueuer
