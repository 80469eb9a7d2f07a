"""Tracing with OpenTelemetry (the ``jobkeeper[otel]`` extra): the one module that imports it.

A job carries the trace of the request that submitted it: ``submit`` opens a producer span and
stores its W3C context (``traceparent``, ``tracestate``) on the job's row, and every run of the job
is a consumer span whose parent is that context, so the handler's work (and its own spans) lands in
the caller's trace, across processes, restarts, retries and days of waiting for a person. Spans
follow the OpenTelemetry semantic conventions for messaging (docs/tracing.md lists them):
``messaging.system`` ``jobkeeper``, the job's kind as ``messaging.destination.name``, its id as
``messaging.message.id``, and ``messaging.operation.type`` ``send`` (submit), ``receive`` (claim),
``process`` (run) or ``settle`` (complete, fail, cancel, ask, answer).

Off costs nothing but a check: without the package, or without a tracer provider configured (the
API's default provider records nothing), every function here returns ``OFF``, a span that does
nothing, and nothing is stored with jobs.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Any, Final
from uuid import UUID

from jobkeeper.domain.values import Job, Lease

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate as otel_propagate
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _INSTALLED = True
    # what the API hands out while no provider is set: spans are not recorded
    _NO_PROVIDER: frozenset[type] = frozenset(
        {otel_trace.ProxyTracerProvider, otel_trace.NoOpTracerProvider}
    )
except ImportError:  # the extra is not installed: tracing is off
    _INSTALLED = False
    _NO_PROVIDER = frozenset()

__all__ = [
    "OFF",
    "Span",
    "claimed",
    "enabled",
    "extracted",
    "failed",
    "running",
    "settle_later",
    "settling",
    "submitting",
]

SYSTEM: Final = "jobkeeper"
# the messaging semantic conventions' attribute names (opentelemetry-semantic-conventions)
_SYSTEM: Final = "messaging.system"
_OPERATION_TYPE: Final = "messaging.operation.type"
_OPERATION_NAME: Final = "messaging.operation.name"
_DESTINATION: Final = "messaging.destination.name"
_MESSAGE_ID: Final = "messaging.message.id"
_BATCH_COUNT: Final = "messaging.batch.message_count"
_ERROR_TYPE: Final = "error.type"
# jobkeeper's own
_TENANT: Final = "jobkeeper.tenant"
_ATTEMPT: Final = "jobkeeper.job.attempt"
_STATUS: Final = "jobkeeper.job.status"


def enabled() -> bool:
    """Whether spans are recorded: the API is installed and a tracer provider is set. Checked at
    every call (a provider may be set after jobkeeper is imported); a global read or two."""
    # the exact type: TracerProvider is an ABC, and isinstance with it costs more than the rest
    # of the check (it runs twice for every job a worker runs)
    return _INSTALLED and type(otel_trace.get_tracer_provider()) not in _NO_PROVIDER


class Span:
    """A span jobkeeper opened, or ``OFF``. As a context manager it is the current span for the
    block (an ``Exception`` leaving the block marks it failed) and ends with it."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: otel_trace.Span | None) -> None:
        self._span = span
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> Span:
        if self._span is not None:
            self._token = otel_context.attach(otel_trace.set_span_in_context(self._span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._span is None:
            return
        # an Exception is a failure; a BaseException (a task cancelled, a handler unwound to
        # wait for a person) is how a job stops, not an error
        if isinstance(exc, Exception):
            self._span.record_exception(exc)
            self.outcome(None, type(exc).__qualname__)
        if self._token is not None:
            otel_context.detach(self._token)
        self._span.end()

    def carrier(self) -> str | None:
        """This span's W3C trace context as JSON text, as a job stores it."""
        if self._span is None:
            return None
        carrier: dict[str, str] = {}
        _W3C.inject(carrier, otel_trace.set_span_in_context(self._span))
        return json.dumps(carrier, separators=(",", ":"))

    def message(self, job: Job) -> None:
        """Name the job this span is about (a submit knows its id only once written)."""
        if self._span is not None:
            self._span.set_attribute(_MESSAGE_ID, str(job.id))

    def outcome(self, status: str | None, error_type: str | None = None) -> None:
        """The status the job was left in, and what went wrong (the span is then an error)."""
        if self._span is None:
            return
        if status is not None:
            self._span.set_attribute(_STATUS, status)
        if error_type is not None:
            self._span.set_attribute(_ERROR_TYPE, error_type)
            self._span.set_status(otel_trace.StatusCode.ERROR)

    def end(self) -> None:
        """End a span opened by ``settle_later``."""
        if self._span is not None:
            self._span.end()


OFF: Final = Span(None)
"""The span that does nothing: what every function here returns while tracing is off."""

if _INSTALLED:
    # what is stored with a job is W3C trace context whatever the application propagates with
    _W3C = TraceContextTextMapPropagator()
    _KIND = {
        "send": otel_trace.SpanKind.PRODUCER,
        "receive": otel_trace.SpanKind.CONSUMER,
        "process": otel_trace.SpanKind.CONSUMER,
        "settle": otel_trace.SpanKind.CLIENT,
    }


@functools.lru_cache(maxsize=4)
def _tracer(provider: otel_trace.TracerProvider) -> otel_trace.Tracer:
    return provider.get_tracer(SYSTEM)


def _start(
    operation_type: str,
    operation_name: str,
    kind: str | None,
    *,
    parent: otel_context.Context | None = None,
    links: Sequence[otel_trace.Link] = (),
    attributes: Mapping[str, Any] | None = None,
    start_time: int | None = None,
) -> otel_trace.Span:
    """A started span named ``<operation> <kind>`` (the conventions' ``{operation} {destination}``),
    a child of ``parent`` (default: the current context)."""
    attrs = {_SYSTEM: SYSTEM, _OPERATION_TYPE: operation_type, _OPERATION_NAME: operation_name}
    if kind is not None:
        attrs[_DESTINATION] = kind
    if attributes:
        attrs.update(attributes)
    return _tracer(otel_trace.get_tracer_provider()).start_span(
        operation_name if kind is None else f"{operation_name} {kind}",
        context=parent,
        kind=_KIND[operation_type],
        attributes=attrs,
        links=links,
        start_time=start_time,
    )


def _creation(job: Job) -> otel_context.Context:
    """The context stored with the job, on top of an empty one (a job without one: a new trace,
    not whatever span happens to be current in the worker)."""
    return _W3C.extract(job.trace_context or {}, context=otel_context.Context())


def _links(jobs: Iterable[Job]) -> list[otel_trace.Link]:
    """Links to the creation contexts of those of ``jobs`` that have one."""
    return [
        otel_trace.Link(otel_trace.get_current_span(_creation(job)).get_span_context())
        for job in jobs
        if job.trace_context
    ]


def submitting(kinds: Iterable[str], *, batch: int | None = None) -> Span:
    """The producer span of a submit (``batch``: of ``submit_many``, that many jobs): every job
    it writes stores its ``carrier()``. The conventions' "send": with no "create" span per
    message, the send span's context is each message's creation context. ``kinds`` is read only
    while tracing is on (the destination, if the jobs have one kind)."""
    if not enabled():
        return OFF
    distinct = set(kinds)
    kind = next(iter(distinct)) if len(distinct) == 1 else None
    attributes = None if batch is None else {_BATCH_COUNT: batch}
    name = "submit" if batch is None else "submit_many"
    return Span(_start("send", name, kind, attributes=attributes))


def running(job: Job) -> Span:
    """The consumer span of one run of ``job``: a child of the context it was submitted in (the
    job's work is in the submitter's trace), and linked to it, as the conventions ask of every
    process span."""
    if not enabled():
        return OFF
    attributes = {_MESSAGE_ID: str(job.id), _TENANT: job.tenant, _ATTEMPT: job.attempts}
    return Span(
        _start(
            "process",
            "run",
            job.kind,
            parent=_creation(job),
            links=_links((job,)),
            attributes=attributes,
        )
    )


def settling(
    operation: str, job_id: UUID, kind: str | None = None, *, link: Job | None = None
) -> Span:
    """A settle span (``complete``, ``fail``, ``cancel``, ``ask``, ``answer``) for a write that
    decides the job's fate, a child of the current span (a run's, or a request's); ``link``: a
    job whose submitting context it links to (a person answering in a trace of their own)."""
    if not enabled():
        return OFF
    links = _links(() if link is None else (link,))
    attributes = {_MESSAGE_ID: str(job_id)}
    return Span(_start("settle", operation, kind, links=links, attributes=attributes))


def failed(error_type: str) -> None:
    """Mark the current span (a run's) failed with ``error_type``."""
    if enabled():
        Span(otel_trace.get_current_span()).outcome(None, error_type)


def settle_later(job: Job, operation: str) -> Span:
    """A settle span started now (a child of the current span) and ended by whoever writes the
    outcome later, in another task (the completer's batch): ``outcome(...)``, then ``end()``."""
    if not enabled():
        return OFF
    return Span(_start("settle", operation, job.kind, attributes={_MESSAGE_ID: str(job.id)}))


def claimed(leases: Sequence[Lease], since: int) -> None:
    """The receive span of a claim that returned ``leases`` (started at ``since``, ns since the
    epoch), linked to each job's creation context as the conventions ask of a batch receive. A
    claim that found nothing records nothing (idle workers poll)."""
    if not leases or not enabled():
        return
    links = _links(lease.job for lease in leases)
    kinds = {lease.job.kind for lease in leases}
    span = _start(
        "receive",
        "claim",
        next(iter(kinds)) if len(kinds) == 1 else None,
        parent=otel_context.Context(),
        links=links,
        attributes={_BATCH_COUNT: len(leases)},
        start_time=since,
    )
    span.end()


class _Attached:
    """The context of an incoming request's trace headers, current for a block."""

    __slots__ = ("_carrier", "_token")

    def __init__(self, carrier: Mapping[str, str]) -> None:
        self._carrier = carrier
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_propagate.extract(self._carrier))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            otel_context.detach(self._token)


def extracted(headers: Iterable[tuple[bytes, bytes]]) -> _Attached | Span:
    """For an HTTP request: make the trace its headers carry (``traceparent``, with the
    application's propagators) current for the block, so a job submitted by it joins the
    caller's trace. Nothing to do with tracing off or when a span is current already (the
    application's own instrumentation, such as opentelemetry-instrumentation-fastapi, made one
    from the same headers)."""
    if not enabled() or otel_trace.get_current_span().get_span_context().is_valid:
        return OFF
    return _Attached({name.decode("latin-1"): value.decode("latin-1") for name, value in headers})
