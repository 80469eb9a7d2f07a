"""Tracing (``jobkeeper.tracing``, docs/tracing.md) with the OpenTelemetry SDK's in-memory
exporter: a job stores the trace context it was submitted in, its runs continue that trace across
the worker, and every span carries the messaging conventions' attributes. Without a tracer provider
(or without the package) nothing is recorded or stored and everything still works.

The API allows one global tracer provider per process; each test that sets one resets it after, as
the SDK's own test utilities do, so no other test module runs with tracing on.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from jobkeeper import tracing
from jobkeeper.api.app import create_app
from jobkeeper.api.auth import ApiKeys
from jobkeeper.domain.status import JobStatus
from jobkeeper.domain.values import Job
from jobkeeper.errors import PermanentFailure
from jobkeeper.manager import JobManager
from jobkeeper.settings import Settings
from jobkeeper.testing import lifespan_client
from jobkeeper.worker import JobContext, TaskRegistry, Worker
from support import eventually, make_worker

DEADLINE = 15.0


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    """A tracer provider for this test, its finished spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    try:
        yield exporter
    finally:
        provider.shutdown()
        # set_tracer_provider works once per process; opentelemetry's test utilities undo it so
        trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
        trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[None]:
    task = asyncio.create_task(worker.run())
    try:
        yield
    finally:
        worker.stop()
        worker.stop()
        await asyncio.wait_for(task, DEADLINE)


async def reach(jobs: JobManager, job: Job, *statuses: JobStatus) -> Job:
    async def check() -> Job | None:
        now = await jobs.get(job.id, tenant=job.tenant, consistency="strong")
        return now if now.status in statuses else None

    return await eventually(check, timeout=DEADLINE, what=f"job {job.id} to reach {statuses}")


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


async def one_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    """The span ``name`` once it ended (a completion's settle span ends after the job's write)."""
    found = await eventually(
        lambda: spans_named(exporter, name) or None, timeout=DEADLINE, what=f"span {name!r}"
    )
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def messaging(span: ReadableSpan, operation_type: str, operation: str, kind: str | None) -> None:
    """The messaging conventions' attributes every jobkeeper span has."""
    attributes = span.attributes or {}
    assert attributes["messaging.system"] == "jobkeeper"
    assert attributes["messaging.operation.type"] == operation_type
    assert attributes["messaging.operation.name"] == operation
    assert attributes.get("messaging.destination.name") == kind


def parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def traceparent_of(span: ReadableSpan) -> str:
    """The W3C ``traceparent`` of ``span`` up to its flags."""
    return f"00-{trace_of(span):032x}-{span_id(span):016x}-"


def new_kind(name: str) -> str:
    return f"traced-{uuid4().hex[:8]}.{name}"


# --- submit, claim, run, complete ----------------------------------------------------------------


async def test_a_job_submitted_in_a_span_runs_in_its_trace(
    exporter: InMemorySpanExporter, job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("report")
    tasks = TaskRegistry()
    tracer = trace.get_tracer("test")

    @tasks.task(kind)
    def report(ctx: JobContext, payload: Any) -> int:  # a sync handler, in a thread
        with tracer.start_as_current_span("render"):
            return int(payload["n"]) * 2

    with tracer.start_as_current_span("request") as request:
        job = await job_manager.submit(tenant, kind, {"n": 21})
    stored = (await job_manager.get(job.id, tenant=tenant, consistency="strong")).trace_context
    assert stored is not None
    submit = await one_span(exporter, f"submit {kind}")
    assert stored["traceparent"].startswith(traceparent_of(submit))
    assert submit.kind is SpanKind.PRODUCER
    assert parent_of(submit) == request.get_span_context().span_id
    messaging(submit, "send", "submit", kind)
    assert (submit.attributes or {})["messaging.message.id"] == str(job.id)

    async with running(make_worker(job_manager, tasks, kinds=[kind])):
        done = await reach(job_manager, job, JobStatus.SUCCEEDED)
    assert done.result == 42

    run = await one_span(exporter, f"run {kind}")
    assert run.kind is SpanKind.CONSUMER
    assert (trace_of(run), parent_of(run)) == (trace_of(submit), span_id(submit))
    messaging(run, "process", "run", kind)
    assert [link.context.span_id for link in run.links] == [span_id(submit)]
    assert (run.attributes or {})["messaging.message.id"] == str(job.id)
    assert (run.attributes or {})["jobkeeper.job.attempt"] == 1
    render = await one_span(exporter, "render")  # the handler's own span, from its thread
    assert parent_of(render) == span_id(run)

    complete = await one_span(exporter, f"complete {kind}")
    assert parent_of(complete) == span_id(run)
    messaging(complete, "settle", "complete", kind)
    assert (complete.attributes or {})["jobkeeper.job.status"] == "succeeded"
    assert complete.status.status_code is not StatusCode.ERROR

    claim = await one_span(exporter, f"claim {kind}")
    messaging(claim, "receive", "claim", kind)
    assert claim.kind is SpanKind.CONSUMER
    assert claim.parent is None  # the worker's own trace, linked to the job's
    assert (claim.attributes or {})["messaging.batch.message_count"] == 1
    assert [link.context.span_id for link in claim.links] == [span_id(submit)]


async def test_ask_answer_and_a_failure_are_spans_of_the_jobs_trace(
    exporter: InMemorySpanExporter, job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("approve")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def approve(ctx: JobContext, payload: Any) -> None:
        answer = await ctx.ask("Approve?", choices=["yes", "no"])
        raise PermanentFailure(f"refused: {answer}")

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request"):
        job = await job_manager.submit(tenant, kind, {})
    submit = await one_span(exporter, f"submit {kind}")
    async with running(make_worker(job_manager, tasks, kinds=[kind])):
        await reach(job_manager, job, JobStatus.WAITING_INPUT)
        with tracer.start_as_current_span("person") as person:
            await job_manager.answer(job.id, tenant=tenant, answer="no", answered_by="user:ann")
        failed = await reach(job_manager, job, JobStatus.FAILED)
    assert failed.error["type"] == "PermanentFailure"

    runs = await eventually(
        lambda: (
            spans_named(exporter, f"run {kind}")
            if len(spans_named(exporter, f"run {kind}")) == 2
            else None
        ),
        timeout=DEADLINE,
        what="two runs",
    )
    first, second = sorted(runs, key=lambda span: span.start_time or 0)
    for run in runs:  # the answer's resumption stays in the submitter's trace
        assert (trace_of(run), parent_of(run)) == (trace_of(submit), span_id(submit))

    ask = await one_span(exporter, f"ask {kind}")
    assert parent_of(ask) == span_id(first)
    messaging(ask, "settle", "ask", kind)
    assert (ask.attributes or {})["jobkeeper.job.status"] == "waiting_input"
    assert first.status.status_code is not StatusCode.ERROR  # waiting is not failing

    answer = await one_span(exporter, f"answer {kind}")
    assert parent_of(answer) == person.get_span_context().span_id  # the person's request
    assert [link.context.span_id for link in answer.links] == [span_id(submit)]
    messaging(answer, "settle", "answer", kind)
    assert (answer.attributes or {})["messaging.message.id"] == str(job.id)
    assert (answer.attributes or {})["jobkeeper.job.status"] == "queued"

    fail = await one_span(exporter, f"fail {kind}")
    assert parent_of(fail) == span_id(second)
    messaging(fail, "settle", "fail", kind)
    assert (fail.attributes or {})["error.type"] == "PermanentFailure"
    assert (fail.attributes or {})["jobkeeper.job.status"] == "failed"
    assert fail.status.status_code is StatusCode.ERROR
    assert second.status.status_code is StatusCode.ERROR
    assert (second.attributes or {})["error.type"] == "PermanentFailure"


async def test_a_batch_is_one_send_span_whose_context_every_job_stores(
    exporter: InMemorySpanExporter, job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("thumb")
    with trace.get_tracer("test").start_as_current_span("upload"):
        submitted = await job_manager.submit_many(
            tenant, [{"kind": kind, "payload": n} for n in range(3)]
        )
    batch = await one_span(exporter, f"submit_many {kind}")
    assert batch.kind is SpanKind.PRODUCER
    messaging(batch, "send", "submit_many", kind)
    assert (batch.attributes or {})["messaging.batch.message_count"] == 3
    for job, _created in submitted:
        stored = await job_manager.get(job.id, tenant=tenant, consistency="strong")
        assert stored.trace_context == job.trace_context  # as returned, so stored
        assert stored.trace_context["traceparent"].startswith(traceparent_of(batch))


async def test_a_cancel_is_a_settle_span(
    exporter: InMemorySpanExporter, job_manager: JobManager, tenant: str
) -> None:
    job = await job_manager.submit(tenant, new_kind("idle"), {})
    await job_manager.cancel(job.id, tenant=tenant, cancelled_by="user:ann")
    cancel = await one_span(exporter, "cancel")
    messaging(cancel, "settle", "cancel", None)
    assert (cancel.attributes or {})["messaging.message.id"] == str(job.id)
    assert (cancel.attributes or {})["jobkeeper.job.status"] == "cancelled"


# --- over HTTP -----------------------------------------------------------------------------------


async def test_a_request_with_a_traceparent_yields_a_job_run_in_the_callers_trace(
    exporter: InMemorySpanExporter, database_url: str, job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("http")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def noop(ctx: JobContext, payload: Any) -> str:
        return "ok"

    caller_trace, caller_span = uuid4().int, uuid4().int >> 64
    headers = {
        "Authorization": f"Bearer {(await ApiKeys(job_manager).create(tenant)).key}",
        "traceparent": f"00-{caller_trace:032x}-{caller_span:016x}-01",
    }
    settings = Settings(_env_file=None, database_url=database_url, auth="keys", pool_size=2)  # type: ignore[call-arg]
    async with lifespan_client(create_app(settings), headers=headers, timeout=DEADLINE) as client:
        response = await client.post("/jobs", json={"kind": kind, "payload": {}})
    assert response.status_code == 201, response.text
    job = await job_manager.get(UUID(response.json()["id"]), tenant=tenant)

    submit = await one_span(exporter, f"submit {kind}")
    assert trace_of(submit) == caller_trace
    # under the caller's span: directly, or through the request's server span (FastAPI makes
    # one when a tracer provider is set)
    by_id = {span_id(span): span for span in exporter.get_finished_spans()}
    parent = parent_of(submit)
    while parent in by_id:
        parent = parent_of(by_id[parent])
    assert parent == caller_span
    async with running(make_worker(job_manager, tasks, kinds=[kind])):
        await reach(job_manager, job, JobStatus.SUCCEEDED)
    run = await one_span(exporter, f"run {kind}")
    assert (trace_of(run), parent_of(run)) == (caller_trace, span_id(submit))


def test_trace_headers_are_made_current_unless_a_span_is(
    exporter: InMemorySpanExporter,
) -> None:
    """What RequestContext does for an application whose FastAPI makes no request spans (one
    before FastAPI's own telemetry, or with it turned off)."""
    caller_trace, caller_span = uuid4().int, uuid4().int >> 64
    headers = [(b"traceparent", f"00-{caller_trace:032x}-{caller_span:016x}-01".encode())]
    with tracing.extracted(headers):
        current = trace.get_current_span().get_span_context()
        assert (current.trace_id, current.span_id) == (caller_trace, caller_span)
    assert not trace.get_current_span().get_span_context().is_valid  # detached after
    with (
        trace.get_tracer("test").start_as_current_span("server") as server,
        tracing.extracted(headers),
    ):  # the application's instrumentation already made the request's span
        assert trace.get_current_span() is server


# --- off -----------------------------------------------------------------------------------------


async def test_without_a_tracer_provider_nothing_is_stored_and_jobs_run(
    job_manager: JobManager, tenant: str
) -> None:
    kind = new_kind("plain")
    tasks = TaskRegistry()

    @tasks.task(kind)
    async def plain(ctx: JobContext, payload: Any) -> int:
        return 1

    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    # a valid span is current (propagated from somewhere), yet no provider records anything
    context = trace.SpanContext(uuid4().int, uuid4().int >> 64, is_remote=True)
    with trace.use_span(trace.NonRecordingSpan(context)):
        job = await job_manager.submit(tenant, kind, {})
        [(batched, _)] = await job_manager.submit_many(tenant, [{"kind": kind}])
    for each in (job, batched):
        assert each.trace_context is None
        stored = await job_manager.get(each.id, tenant=tenant, consistency="strong")
        assert stored.trace_context is None
    async with running(make_worker(job_manager, tasks, kinds=[kind])):
        await reach(job_manager, job, JobStatus.SUCCEEDED)
        await reach(job_manager, batched, JobStatus.SUCCEEDED)


def test_without_the_package_every_call_is_a_no_op() -> None:
    script = textwrap.dedent(
        """
        import sys, uuid
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        from jobkeeper import tracing
        assert not tracing.enabled()
        with tracing.submitting(["k"], batch=2) as span:
            assert span is tracing.OFF and span.carrier() is None
        with tracing.settling("cancel", uuid.uuid4(), "k") as span:
            span.outcome("cancelled", "Boom")
        with tracing.extracted([(b"traceparent", b"00-1-2-01")]):
            pass
        tracing.failed("Boom")
        tracing.claimed([], 0)
        print("off")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "off"), done.stderr
