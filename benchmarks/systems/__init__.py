"""The systems ``bench_throughput.py`` compares: one adapter module each, behind ``System``.

An adapter says how its system is installed in a scratch database, how one producer enqueues (one
job per call, and in batches where the system has a batch call), how a queue is pre-loaded for a
drain, which statements tell the parent how far the workers are, how its worker processes may be
configured, and how one worker process runs (``run_worker``, in the child). The harness
(``benchmarks/throughput/``) times all of it the same way for every system.

This module imports no system's library and ``load`` imports one adapter on demand, so a worker
process loads its own system only. ``systems/jobkeeper.py`` is also the one place where the
benchmarks reach past jobkeeper's public API.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import ClassVar

import asyncpg

TENANT = "bench"
PEER_TASK = "bench_noop"  # the peers' no-op task
PRODUCERS = 16  # concurrent enqueueing tasks, and the connections they share
NAMES = ("jobkeeper", "pgqueuer", "procrastinate")

Call = Callable[[int], Awaitable[object]]  # call ``i`` enqueues job ``i`` (or batch ``i``)
Ready = Callable[[], Awaitable[None]]  # a worker process: "set up", then wait for the parent's go


@dataclass(frozen=True, slots=True)
class Producer:
    """A system's enqueue calls, each with the name the report gives it."""

    single: tuple[str, Call]  # one job per call
    batched: tuple[str, Call] | None = None  # ``batch`` jobs per call, where the system can


@dataclass(frozen=True, slots=True)
class WorkerArgs:
    """What one worker process is told; each system reads the knobs it has."""

    concurrency: int = 0  # jobkeeper, procrastinate: jobs run at once
    batch: int = 0  # pgqueuer: jobs fetched per query
    drain: bool = False  # the queue was pre-loaded and nothing more comes


@dataclass(frozen=True, slots=True)
class Config:
    """One way of running a system's worker processes."""

    key: str  # the harness picks configurations by it
    label: str  # the report's "Workers" column
    processes: int
    args: WorkerArgs
    uvloop: bool = False
    share: int = 1  # slow configurations drain the plan's jobs // share per round


class System(ABC):
    """One system in its own scratch database, seen from the parent through ``admin``."""

    name: ClassVar[str]
    done_sql: ClassVar[str]  # count of jobs finished successfully
    pending_sql: ClassVar[str]  # whether any job is still queued or running
    reset_sql: ClassVar[str]
    configurations: ClassVar[tuple[Config, ...]]  # in the order the drain table lists them
    workers_method: ClassVar[str]  # how its worker processes run, for the report's method

    def __init__(self, url: str, admin: asyncpg.Connection) -> None:
        self.url = url
        self.admin = admin

    async def done(self) -> int:
        return int(await self.admin.fetchval(self.done_sql))

    async def pending(self) -> bool:
        return bool(await self.admin.fetchval(self.pending_sql))

    async def reset(self) -> None:
        await self.admin.execute(self.reset_sql)

    async def analyze(self) -> None:
        await self.admin.execute("ANALYZE")

    @abstractmethod
    def installed(self) -> AbstractAsyncContextManager[None]:
        """The system's tables created in the (empty) scratch database, and whatever the parent
        holds open for the run (closed on exit)."""

    @abstractmethod
    async def preload(self, n: int) -> None:
        """``n`` queued no-op jobs, payload ``{"n": i}``: a drain's setup, not measured."""

    @abstractmethod
    def producer(self, batch: int) -> AbstractAsyncContextManager[Producer]:
        """Enqueue calls for ``PRODUCERS`` tasks at once (their connections opened on entry and
        closed on exit); a batched call enqueues ``batch`` jobs."""

    @staticmethod
    @abstractmethod
    async def run_worker(url: str, args: WorkerArgs, ready: Ready) -> None:
        """One worker process: set up, ``await ready()``, then run jobs until SIGTERM (or, for
        a system that can, until a drained queue is empty)."""


def load(name: str) -> type[System]:
    """The adapter of system ``name`` (one of ``NAMES``), importing its module."""
    adapter: type[System] = importlib.import_module(f"systems.{name}").ADAPTER
    return adapter
