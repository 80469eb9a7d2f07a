"""The ``jobkeeper`` command line (typer): thin commands over the manager, worker and migrations.

User mistakes (a bad target, an unreachable database) end with one clear line and exit code 1 or 2,
never a traceback.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Annotated

import typer

from jobkeeper.errors import JobkeeperError
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.worker import TaskRegistry, Worker

__all__ = ["app"]

app = typer.Typer(help="jobkeeper: durable job state for FastAPI services.", no_args_is_help=True)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


def load_registry(target: str) -> TaskRegistry:
    """Import ``module:attribute`` and check it is a ``TaskRegistry``."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise _fail(f"expected MODULE:ATTR, got {target!r}", 2)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _fail(f"cannot import {module_name!r}: {exc}", 2) from None
    registry = getattr(module, attribute, None)
    if not isinstance(registry, TaskRegistry):
        raise _fail(f"{target} is not a TaskRegistry", 2)
    return registry


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:ATTR of a TaskRegistry.")],
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="Only these kinds (repeatable); default: all.")
    ] = None,
) -> None:
    """Run a worker for the tasks in TARGET until SIGTERM/SIGINT (twice: stop at once)."""
    registry = load_registry(target)
    settings = Settings()
    if not settings.database_url:
        raise _fail("set JOBKEEPER_DATABASE_URL")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(_work(settings, registry, concurrency, kind))
    except JobkeeperError as exc:
        raise _fail(exc.message) from None


async def _work(
    settings: Settings, registry: TaskRegistry, concurrency: int | None, kinds: list[str] | None
) -> None:
    async with await JobManager.from_settings(settings) as jobs:
        runner = Worker(
            jobs,
            registry,
            concurrency=concurrency or settings.worker_concurrency,
            kinds=kinds or None,
            lease_seconds=settings.lease_seconds,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            shutdown_grace=settings.shutdown_grace,
        )
        runner.install_signal_handlers()
        await runner.run()


def main() -> None:
    app()
