"""The task registry: the handler for each job kind, the kinds' ``on_expire`` hooks, and the
periodic schedules declared on handlers (``@tasks.periodic``)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeAlias

from jobkeeper.domain.schedules import (
    NewSchedule,
    PayloadFunction,
    validate_schedule,
    validate_spec,
)
from jobkeeper.domain.validate import validate_kind
from jobkeeper.errors import InvalidRequest
from jobkeeper.maintenance import ExpiryHook, ExpiryHooks
from jobkeeper.worker.context import JobContext

AsyncHandler: TypeAlias = Callable[[JobContext, Any], Awaitable[Any]]
SyncHandler: TypeAlias = Callable[[JobContext, Any], Any]
# called once per worker process: an async context manager whose value handlers read from
# ``ctx.resources`` (the application's engine, clients, ...)
Lifespan: TypeAlias = Callable[[], AbstractAsyncContextManager[Any]]


@dataclass(frozen=True, slots=True)
class Task:
    """A registered handler: ``is_async`` handlers run on the event loop, others in a thread."""

    kind: str
    handler: AsyncHandler | SyncHandler
    is_async: bool


@dataclass(frozen=True, slots=True)
class Periodic:
    """A schedule declared on a handler; every worker that runs its kind writes it to Postgres
    when it starts, and ``payload`` (if any) computes each tick's payload there."""

    schedule: NewSchedule
    payload: PayloadFunction | None


class TaskRegistry:
    """Maps job kinds to handlers. ``@tasks.task("kind")`` registers a function.

    ``lifespan``: an async context manager factory (``@asynccontextmanager``) that each worker
    runs once around its work, as FastAPI runs an application's: the application opens its
    engine or clients there, and every handler gets what it yields as ``ctx.resources``.
    """

    def __init__(self, *, lifespan: Lifespan | None = None) -> None:
        self._tasks: dict[str, Task] = {}
        self._periodic: dict[tuple[str, str], Periodic] = {}
        self.expiry_hooks = ExpiryHooks()
        self.lifespan = lifespan

    def on_expire(self, kind: str) -> Callable[[ExpiryHook], ExpiryHook]:
        """Register an async ``hook(job)`` run before retention deletes a job of ``kind``."""
        return self.expiry_hooks.on_expire(kind)

    def task(self, kind: str) -> Callable[[Any], Any]:
        """Register the decorated function for ``kind`` (async: on the loop; sync: in a thread)."""

        def register(handler: Any) -> Any:
            self.register(kind, handler)
            return handler

        return register

    def periodic(
        self,
        cron: str | None = None,
        *,
        every: timedelta | None = None,
        timezone: str = "UTC",
        payload: Any = None,
        name: str | None = None,
        tenant: str = "default",
        kind: str | None = None,
        misfire: str = "latest",
        max_catch_up: int = 100,
        priority: int = 0,
        max_attempts: int = 3,
        concurrency_key: str | None = None,
    ) -> Callable[[Any], Any]:
        """Submit a job of the decorated handler's kind at each tick of ``cron`` (read on the
        wall clock of ``timezone``) or of ``every``, for ``tenant``; put it above
        ``@tasks.task(kind)``, or pass ``kind`` to register the handler too. ``payload`` is a
        JSON value, or a function of the tick (an aware datetime in ``timezone``) that the
        worker calls per tick. ``name`` (default: the kind) identifies the schedule within the
        tenant. Bad values raise ``InvalidRequest`` here, at import."""
        spec = validate_spec(
            cron=cron, every=every, timezone=timezone, misfire=misfire, max_catch_up=max_catch_up
        )

        def declare(handler: Any) -> Any:
            of = kind or next((t.kind for t in self._tasks.values() if t.handler is handler), None)
            if of is None:
                raise InvalidRequest("kind", "put @tasks.periodic above @tasks.task, or pass kind")
            if self.get(of) is None:
                self.register(of, handler)
            new = validate_schedule(
                tenant=tenant,
                name=name or of,
                kind=of,
                spec=spec,
                payload=payload,
                priority=priority,
                max_attempts=max_attempts,
                concurrency_key=concurrency_key,
            )
            if (new.tenant, new.name) in self._periodic:
                raise InvalidRequest("name", f"a schedule {new.name!r} is declared already")
            computed = payload if new.computed_payload else None
            self._periodic[new.tenant, new.name] = Periodic(new, computed)
            return handler

        return declare

    def periodic_schedules(self, kinds: Sequence[str]) -> tuple[Periodic, ...]:
        """The declared schedules of ``kinds``."""
        return tuple(p for p in self._periodic.values() if p.schedule.job.kind in kinds)

    def register(self, kind: str, handler: AsyncHandler | SyncHandler) -> None:
        kind = validate_kind(kind)
        if kind in self._tasks:
            raise InvalidRequest("kind", f"{kind!r} is already registered")
        self._tasks[kind] = Task(kind, handler, inspect.iscoroutinefunction(handler))

    def get(self, kind: str) -> Task | None:
        return self._tasks.get(kind)

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self._tasks)
