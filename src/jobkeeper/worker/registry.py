"""The task registry: the handler for each job kind, and the kinds' ``on_expire`` hooks."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, TypeAlias

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


class TaskRegistry:
    """Maps job kinds to handlers. ``@tasks.task("kind")`` registers a function.

    ``lifespan``: an async context manager factory (``@asynccontextmanager``) that each worker
    runs once around its work, as FastAPI runs an application's: the application opens its
    engine or clients there, and every handler gets what it yields as ``ctx.resources``.
    """

    def __init__(self, *, lifespan: Lifespan | None = None) -> None:
        self._tasks: dict[str, Task] = {}
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
