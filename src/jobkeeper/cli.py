"""The ``jobkeeper`` command line (typer): thin commands over the manager, worker and migrations.

User mistakes (a bad target, an unreachable database) end with one clear line and exit code 1 or 2,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

import typer
from prometheus_client import start_http_server

from jobkeeper.api.auth import ApiKeys
from jobkeeper.errors import JobkeeperError
from jobkeeper.logs import configure_logging
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.models import validate_tenant
from jobkeeper.settings import Settings
from jobkeeper.sweeper import Retention
from jobkeeper.worker import TaskRegistry, Worker

T = TypeVar("T")
METRICS_REFRESH_SECONDS = 10.0

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


keys_app = typer.Typer(help="Create, revoke and list API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def _settings() -> Settings:
    settings = Settings()
    if not settings.database_url:
        raise _fail("set JOBKEEPER_DATABASE_URL")
    return settings


def _run(work: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a jobkeeper error (database down...) is one line, exit 1."""
    try:
        return asyncio.run(work)
    except JobkeeperError as exc:
        raise _fail(exc.message) from None


async def _with_keys(action: Callable[[ApiKeys], Awaitable[T]]) -> T:
    async with await JobManager.from_settings(_settings()) as jobs:
        return await action(ApiKeys(jobs.repository, cache_ttl=0))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="The tenant the key acts for.")],
    label: Annotated[str | None, typer.Option(help="A note to recognise the key by.")] = None,
) -> None:
    """Create a key for TENANT and print it once (only its hash is stored)."""
    validate_tenant(tenant)
    new = _run(_with_keys(lambda keys: keys.create(tenant, label)))
    typer.echo(new.key)
    typer.secho(
        f"key {new.prefix}... for tenant {tenant!r}: store it now, it is not shown again",
        err=True,
    )


@keys_app.command("revoke")
def keys_revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix (jk_...).")]) -> None:
    """Revoke a key by its prefix (replicas stop accepting it within JOBKEEPER_KEY_CACHE_TTL)."""
    if not _run(_with_keys(lambda keys: keys.revoke(prefix))):
        raise _fail(f"no live key with prefix {prefix!r}")
    typer.echo(f"revoked {prefix}")


@keys_app.command("list")
def keys_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """List keys (prefix, tenant, label, created, revoked); never the keys themselves."""

    async def rows(keys: ApiKeys) -> list[dict[str, Any]]:
        return await keys.list(tenant)

    for row in _run(_with_keys(rows)):
        revoked = f" revoked {row['revoked_at']:%Y-%m-%d %H:%M}" if row["revoked_at"] else ""
        typer.echo(
            f"{row['prefix']}  {row['tenant']}  {row['label'] or '-'}  "
            f"created {row['created_at']:%Y-%m-%d %H:%M}{revoked}"
        )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each its own cache).")] = 1,
) -> None:
    """Run the HTTP API with uvicorn."""
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    import uvicorn

    uvicorn.run(
        "jobkeeper.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # keep configure_logging's handler
    )


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:ATTR of a TaskRegistry.")],
    concurrency: Annotated[int | None, typer.Option(help="Jobs run at once.")] = None,
    kind: Annotated[
        list[str] | None, typer.Option(help="Only these kinds (repeatable); default: all.")
    ] = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
) -> None:
    """Run a worker for the tasks in TARGET until SIGTERM/SIGINT (twice: stop at once)."""
    registry = load_registry(target)
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    _run(_work(settings, registry, concurrency, kind, metrics_port))


async def _work(
    settings: Settings,
    registry: TaskRegistry,
    concurrency: int | None,
    kinds: list[str] | None,
    metrics_port: int | None,
) -> None:
    async with await JobManager.from_settings(settings) as jobs:
        refresher = None
        if metrics_port is not None:
            metrics = Metrics(jobs)
            start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
            refresher = asyncio.create_task(_refresh(metrics))
        runner = Worker(
            jobs,
            registry,
            concurrency=concurrency or settings.worker_concurrency,
            kinds=kinds or None,
            lease_seconds=settings.lease_seconds,
            backoff_base=settings.backoff_base,
            backoff_max=settings.backoff_max,
            shutdown_grace=settings.shutdown_grace,
            retention=Retention.from_settings(settings),
        )
        runner.install_signal_handlers()
        try:
            await runner.run()
        finally:
            if refresher is not None:
                refresher.cancel()


async def _refresh(metrics: Metrics) -> None:
    while True:
        with contextlib.suppress(JobkeeperError):
            await metrics.refresh()
        await asyncio.sleep(METRICS_REFRESH_SECONDS)


def main() -> None:
    app()
