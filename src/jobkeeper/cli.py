"""The ``jobkeeper`` command line (typer): thin commands over the manager, worker and migrations.

User mistakes (a bad target, an unreachable database) end with one clear line and exit code 1 or 2,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import importlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from prometheus_client import start_http_server
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from jobkeeper.api.auth import ApiKeys
from jobkeeper.api.inbox import question_json
from jobkeeper.api.schedules import schedule_json
from jobkeeper.api.schemas import iso, job_json
from jobkeeper.domain.questions import question_of
from jobkeeper.domain.schedules import Schedule
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.validate import validate_tenant
from jobkeeper.domain.values import Job
from jobkeeper.errors import InvalidRequest, JobkeeperError
from jobkeeper.logs import configure_logging
from jobkeeper.maintenance import Sweeper, SweepReport
from jobkeeper.manager import JobManager
from jobkeeper.metrics import Metrics
from jobkeeper.migrate import upgrade
from jobkeeper.settings import Settings, parse_duration
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
jobs_app = typer.Typer(help="Look at and act on jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
schedules_app = typer.Typer(help="Create and manage periodic schedules.", no_args_is_help=True)
app.add_typer(schedules_app, name="schedules")


def _read_settings() -> Settings:
    """``Settings()``, with a bad value reported in one line (exit 2)."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"JOBKEEPER_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise _fail(f"invalid setting: {problems}", 2) from None


def _settings() -> Settings:
    settings = _read_settings()
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
    async with await JobManager.from_settings(_settings(), wait=0) as jobs:
        return await action(ApiKeys(jobs, cache_ttl=0))


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
def migrate(
    sql: Annotated[
        bool, typer.Option("--sql", help="Print the SQL instead of running it.")
    ] = False,
    schema: Annotated[
        str | None,
        typer.Option(
            "--schema",
            help="The Postgres schema of jobkeeper's tables (default: JOBKEEPER_SCHEMA).",
        ),
    ] = None,
) -> None:
    """Create or upgrade jobkeeper's tables in their schema (Alembic upgrade head)."""
    settings = _read_settings()
    url = settings.database_url or ("postgresql://offline/jobkeeper" if sql else None)
    if url is None:
        raise _fail("set JOBKEEPER_DATABASE_URL")
    target = schema or settings.pg_schema
    try:
        upgrade(url, schema=target, sql=sql)
    except InvalidRequest as exc:
        raise _fail(exc.message) from None
    except (OSError, SQLAlchemyError) as exc:
        raise _fail(f"migration failed: {str(exc).splitlines()[0]}") from None
    if not sql:
        typer.echo(f"schema {target} is up to date")


@app.command()
def sweep() -> None:
    """Run one sweeper pass now (leases, deadlines, retention) and print what it did."""
    settings = _settings()

    async def once() -> SweepReport:
        async with await JobManager.from_settings(settings, wait=0) as jobs:
            return await Sweeper.from_settings(jobs, settings).sweep()

    report = _run(once())
    if not report.swept:
        typer.echo("another process is sweeping right now; nothing done")
        return
    for name, value in asdict(report).items():
        if name != "swept":
            typer.echo(f"{name.replace('_', ' ')}: {value}")


async def _reachable(settings: Settings) -> None:
    """Return once Postgres answers with jobkeeper's schema (``JobkeeperError`` if it does not)."""
    await (await JobManager.from_settings(settings, role="worker")).close()


async def _with_jobs(action: Callable[[JobManager], Awaitable[T]]) -> T:
    async with await JobManager.from_settings(_settings(), wait=0) as jobs:
        return await action(jobs)


def _show(job: Job) -> None:
    typer.echo(json.dumps(job_json(job), indent=2, default=str))


TenantOption = Annotated[str, typer.Option(help="The tenant that owns the jobs.")]
PrincipalOption = Annotated[
    str | None,
    typer.Option(
        help="Who you are: user:<name> (a bare name is a user), or any principal;"
        " cli:<os user> if not given."
    ),
]


@jobs_app.command("list")
def jobs_list(
    tenant: TenantOption,
    status: Annotated[JobStatus | None, typer.Option(help="Only this status.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
) -> None:
    """The tenant's newest jobs."""
    page = _run(
        _with_jobs(lambda jobs: jobs.list(tenant=tenant, status=status, kind=kind, limit=limit))
    )
    for job in page.items:
        typer.echo(
            f"{job.id}  {job.status.value:<13} {job.kind:<24} {job.created_at:%Y-%m-%d %H:%M:%S}"
        )
    if page.next_cursor:
        typer.echo(f"(more: --limit or the API's cursor {page.next_cursor})")


@jobs_app.command("show")
def jobs_show(job_id: str, tenant: TenantOption) -> None:
    """One job as JSON, with its open question (who holds it) and its history: the audit trail
    of who claimed, released, took over, answered or escalated it, when, from which replica."""

    async def read(jobs: JobManager) -> dict[str, Any]:
        job = await jobs.get(job_id, tenant=tenant, consistency="strong")
        history = await jobs.events(job.id, tenant=tenant)
        question = None
        if job.status is JobStatus.WAITING_INPUT:
            question = question_json(question_of(job, now=datetime.now(UTC)))
        return {
            **job_json(job),
            "question": question,
            "history": [
                {"seq": e.seq, "type": e.type, "at": iso(e.at), "data": e.data} for e in history
            ],
        }

    typer.echo(json.dumps(_run(_with_jobs(read)), indent=2, default=str))


def _operator() -> str:
    """Who acts from this command line, as the job's history records it: ``cli:<os user>``."""
    return f"cli:{getpass.getuser()}"


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, tenant: TenantOption) -> None:
    """Cancel a job (a running one is asked to stop)."""
    _show(
        _run(_with_jobs(lambda jobs: jobs.cancel(job_id, tenant=tenant, cancelled_by=_operator())))
    )


@jobs_app.command("answer")
def jobs_answer(
    job_id: str,
    answer: Annotated[str, typer.Argument(help="The answer as JSON, e.g. '{\"approve\": true}'.")],
    tenant: TenantOption,
    question_key: Annotated[str | None, typer.Option()] = None,
    principal: PrincipalOption = None,
    if_version: Annotated[
        int | None, typer.Option(min=1, help="Refuse if the question is no longer this version.")
    ] = None,
) -> None:
    """Answer a job's open question (refused while someone else holds it)."""
    try:
        value = json.loads(answer)
    except json.JSONDecodeError as exc:
        raise _fail(f"the answer is not JSON: {exc}", 2) from None
    _show(
        _run(
            _with_jobs(
                lambda jobs: jobs.answer(
                    job_id,
                    tenant=tenant,
                    answer=value,
                    answered_by=principal or _operator(),
                    question_key=question_key,
                    expected_version=if_version,
                )
            )
        )
    )


ScheduleArgument = Annotated[str, typer.Argument(help="The schedule's id.")]


def _show_schedule(schedule: Schedule) -> None:
    typer.echo(json.dumps(schedule_json(schedule), indent=2))


def _json_option(name: str, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"{name} is not JSON: {exc}", 2) from None


@schedules_app.command("create")
def schedules_create(
    name: Annotated[str, typer.Argument(help="The schedule's name (unique per tenant).")],
    tenant: TenantOption,
    kind: Annotated[str, typer.Option(help="The kind of job each tick submits.")],
    cron: Annotated[str | None, typer.Option(help="Five cron fields, e.g. '*/5 * * * *'.")] = None,
    every: Annotated[str | None, typer.Option(help="An interval instead: 30s, 15m, 1h.")] = None,
    timezone: Annotated[str, typer.Option(help="Whose wall clock cron reads.")] = "UTC",
    payload: Annotated[str, typer.Option(help="Each job's payload as JSON.")] = "null",
    misfire: Annotated[str, typer.Option(help="After downtime: latest, all or none.")] = "latest",
    max_catch_up: Annotated[int, typer.Option(help="Most missed ticks run with 'all'.")] = 100,
    priority: Annotated[int, typer.Option()] = 0,
    max_attempts: Annotated[int, typer.Option()] = 3,
    paused: Annotated[bool, typer.Option(help="Create it paused.")] = False,
) -> None:
    """Submit a KIND job at each tick (workers of that kind fire it); prints the schedule."""
    value = _json_option("the payload", payload)
    interval = None
    if every is not None:
        try:
            interval = timedelta(seconds=float(parse_duration(every)))  # type: ignore[arg-type]
        except ValueError as exc:
            raise _fail(f"--every: {exc}", 2) from None
    created = _run(
        _with_jobs(
            lambda jobs: jobs.create_schedule(
                tenant,
                name,
                kind,
                cron=cron,
                every=interval,
                timezone=timezone,
                payload=value,
                misfire=misfire,
                max_catch_up=max_catch_up,
                priority=priority,
                max_attempts=max_attempts,
                paused=paused,
            )
        )
    )
    _show_schedule(created)


@schedules_app.command("list")
def schedules_list(tenant: TenantOption) -> None:
    """The tenant's schedules by name."""
    for schedule in _run(_with_jobs(lambda jobs: jobs.list_schedules(tenant=tenant))):
        spec = schedule.spec
        timing = spec.cron or f"every {int(spec.every.total_seconds())}s"  # type: ignore[union-attr]
        state = "paused" if schedule.paused else f"next {schedule.next_tick:%Y-%m-%d %H:%M:%S}Z"
        typer.echo(
            f"{schedule.id}  {schedule.name:<20} {schedule.kind:<20} {timing} ({spec.timezone})"
            f"  {state}"
        )


@schedules_app.command("pause")
def schedules_pause(schedule_id: ScheduleArgument, tenant: TenantOption) -> None:
    """Stop submitting jobs until resumed."""
    paused = _run(_with_jobs(lambda jobs: jobs.pause_schedule(schedule_id, tenant=tenant)))
    _show_schedule(paused)


@schedules_app.command("resume")
def schedules_resume(schedule_id: ScheduleArgument, tenant: TenantOption) -> None:
    """Submit jobs again from the next tick."""
    resumed = _run(_with_jobs(lambda jobs: jobs.resume_schedule(schedule_id, tenant=tenant)))
    _show_schedule(resumed)


@schedules_app.command("delete")
def schedules_delete(schedule_id: ScheduleArgument, tenant: TenantOption) -> None:
    """Delete a schedule (the jobs it submitted stay)."""
    _run(_with_jobs(lambda jobs: jobs.delete_schedule(schedule_id, tenant=tenant)))
    typer.echo(f"deleted {schedule_id}")


@jobs_app.command("claim")
def jobs_claim(
    job_id: str,
    tenant: TenantOption,
    principal: PrincipalOption = None,
    takeover: Annotated[bool, typer.Option(help="Take it from whoever holds it.")] = False,
    ttl: Annotated[float, typer.Option(help="Seconds to hold it.")] = 300.0,
) -> None:
    """Hold a job's question so that only you may answer it (again: renew)."""
    held = _run(
        _with_jobs(
            lambda jobs: jobs.claim_question(
                job_id, tenant, principal or _operator(), takeover=takeover, ttl=ttl
            )
        )
    )
    typer.echo(json.dumps(question_json(held), indent=2))


@jobs_app.command("release")
def jobs_release(job_id: str, tenant: TenantOption, principal: PrincipalOption = None) -> None:
    """Give back a job's question you hold."""
    released = _run(
        _with_jobs(lambda jobs: jobs.release_question(job_id, tenant, principal or _operator()))
    )
    typer.echo(json.dumps(question_json(released), indent=2))


@app.command()
def inbox(
    tenant: TenantOption,
    principal: PrincipalOption = None,
    role: Annotated[list[str] | None, typer.Option(help="Your roles (repeatable).")] = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    assignee: Annotated[str | None, typer.Option(help="Only for this assignee.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
) -> None:
    """The open questions you may answer, oldest deadline first: job, kind, assignee, deadline,
    who holds it, version, and the question."""
    page = _run(
        _with_jobs(
            lambda jobs: jobs.inbox(
                tenant,
                principal=principal or _operator(),
                roles=role or (),
                kind=kind,
                assignee=assignee,
                limit=limit,
            )
        )
    )
    for q in page.items:
        deadline = "-" if q.deadline is None else f"{q.deadline:%Y-%m-%d %H:%M:%S}"
        held = "-" if q.claimed_by is None else f"held by {q.claimed_by}"
        text = (q.text or q.key).splitlines()[0][:60]
        typer.echo(
            f"{q.job_id}  {q.kind:<24} {q.assignee or 'anyone':<18} {deadline:<19}  "
            f"v{q.version}  {held}  {text}"
        )
    if page.next_cursor:
        typer.echo(f"(more: --limit, or the cursor {page.next_cursor})")


@app.command()
def demo() -> None:
    """The demo: an embedded Postgres (or JOBKEEPER_DATABASE_URL), the API, a worker and a story."""
    from jobkeeper.demo import main as run_demo

    run_demo()


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Short runs (a smoke test).")] = False,
    write: Annotated[bool, typer.Option(help="Write the results into docs/benchmarks.md.")] = False,
) -> None:
    """Run the benchmark suite (benchmarks/ of a source checkout)."""
    folder = Path.cwd() / "benchmarks"
    scripts = sorted(folder.glob("bench_*.py"))
    if not scripts:
        raise _fail("no benchmarks/ here: run from a jobkeeper source checkout", 2)
    flags = [flag for flag, on in (("--quick", quick), ("--write", write)) if on]
    for script in scripts:
        typer.secho(f"== {script.name}", bold=True)
        if subprocess.run([sys.executable, str(script), *flags], check=False).returncode:
            raise _fail(f"{script.name} failed")


# the event loop and HTTP parser of ``jobkeeper serve``: uvloop and httptools (dependencies of
# jobkeeper; uvloop has no Windows build, where asyncio's own loop serves)
SERVE_LOOP = "asyncio" if sys.platform == "win32" else "uvloop"
SERVE_HTTP = "httptools"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes (each its own cache).")] = 1,
) -> None:
    """Run the HTTP API with uvicorn (once Postgres answers: up to JOBKEEPER_STARTUP_WAIT s)."""
    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    # wait for Postgres here, where giving up is one line; a failing app lifespan is a traceback
    _run(_reachable(settings))
    import uvicorn

    uvicorn.run(
        "jobkeeper.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,  # keep configure_logging's handler
        loop=SERVE_LOOP,
        http=SERVE_HTTP,
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
    async with await JobManager.from_settings(settings, role="worker") as jobs:
        refresher = None
        if metrics_port is not None:
            metrics = Metrics(jobs)
            start_http_server(metrics_port, addr="127.0.0.1", registry=metrics.registry)
            refresher = asyncio.create_task(_refresh(metrics))
        runner = Worker.from_settings(
            settings,
            registry,
            jobs=jobs,
            concurrency=concurrency or settings.worker_concurrency,
            kinds=kinds or None,
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
