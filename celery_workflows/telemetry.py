"""OpenTelemetry traces and metrics, when ``opentelemetry-api`` is installed
(``pip install celery-workflows[otel]``); without it every function here does nothing.

Traces: each attempt is a span named after its queue (``order.processPayment``), each emit a
span (``emit paymentProcessed``), and starting a workflow from outside a span
(``enqueue order.validateInventory``, ``emit orderPlaced``). The W3C ``traceparent`` of the
span that creates a job or event is stored in the job row and the event envelope
(``trace_id``), and an attempt's span takes it as its parent - so a whole workflow, across
worker processes, retries, compensation and approvals that wait for days, is one trace. A job
without a stored parent (created before tracing was on) takes the current span as its parent,
for instance ``opentelemetry-instrumentation-celery``'s ``run/...`` span, which then stays in
the same trace; the instrumentation's spans and ours have different names and never
duplicate each other.

Metrics (through whichever ``MeterProvider`` you configure): ``celery_workflows.attempts``
(counter; queue, outcome = succeeded / retried / dead), ``celery_workflows.attempt.duration``
(histogram, ms; queue), ``celery_workflows.hop.latency`` (histogram, ms, from a job's creation
to its first attempt's start; queue), ``celery_workflows.runs.settled_by_sweeper`` (counter;
status: runs the sweeper's backstop had to settle - each a bug). Ledger-wide gauges
(backlog, DLQ depth, oldest waiting job, runs by status) are registered by
:func:`django_app.telemetry.register_ledger_gauges` in the process you choose - they query the
database when collected.

An SDK is yours to configure, as with any OpenTelemetry library; this module only uses the
API.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from .records import ClaimedJob, JobStatus, Outcome

try:  # the optional extra
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised by installs without the extra
    otel_trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from opentelemetry.trace import Span

SCOPE = "celery_workflows"
OUTCOMES = {JobStatus.SUCCEEDED: "succeeded", JobStatus.QUEUED: "retried", JobStatus.DEAD: "dead"}


def enabled() -> bool:
    return otel_trace is not None


def _tracer() -> Any:
    return otel_trace.get_tracer(SCOPE)


def _tracing() -> bool:
    """Whether a span made now could be recorded: the API is installed and a tracer provider
    has been set. Until one is, every span is a no-op that still costs its making - on every
    attempt of every job, wherever some other package pulled the API in."""
    return otel_trace is not None and not isinstance(
        otel_trace.get_tracer_provider(), otel_trace.ProxyTracerProvider
    )


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, if one is recording."""
    if otel_trace is None:
        return None
    span = otel_trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def is_traceparent(value: str | None) -> bool:
    """Whether a stored trace id is a W3C traceparent (a job written outside any recording
    span stores its workflow's correlation id instead)."""
    return bool(value) and str(value).startswith("00-")


def _parent(traceparent: str | None) -> Any:
    """The context a span continues: ``traceparent`` if it is one, else the current one."""
    if is_traceparent(traceparent):
        assert traceparent is not None
        extracted = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
        if otel_trace.get_current_span(extracted).get_span_context().is_valid:
            return extracted
    return otel_context.get_current()


@contextmanager
def attempt_span(claimed: ClaimedJob) -> Iterator[Span | None]:
    """The span of one attempt, current while it runs (its handler, its emits, its write)."""
    if not _tracing():
        yield None
        return
    attributes = {
        "celery_workflows.queue": claimed.queue,
        "celery_workflows.job_id": claimed.id,
        "celery_workflows.attempt": claimed.attempt,
        "celery_workflows.workflow_id": claimed.correlation_id,
        "celery_workflows.business_key": claimed.business_key,
    }
    if claimed.compensates:
        attributes["celery_workflows.compensates"] = claimed.compensates
    with _tracer().start_as_current_span(
        claimed.queue,
        context=_parent(claimed.trace_id),
        kind=otel_trace.SpanKind.CONSUMER,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=True,
    ) as span:
        yield span


def end_attempt(span: Span | None, outcome: Outcome) -> None:
    """Mark the attempt's span with its outcome (an error for a failure)."""
    if span is None or otel_trace is None:
        return
    span.set_attribute("celery_workflows.outcome", OUTCOMES.get(outcome.status, "other"))
    if outcome.status != JobStatus.SUCCEEDED:
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, outcome.attempt.error))


@contextmanager
def producer_span(name: str, parent: str | None = None, **attributes: Any) -> Iterator[str | None]:
    """A short span around creating a job or an event; yields the traceparent to store with
    it (None without tracing). ``parent``: a stored traceparent to continue instead of the
    current span (an approval decided days later continues the step that asked)."""
    if not _tracing():
        yield None
        return
    with _tracer().start_as_current_span(
        name,
        context=_parent(parent) if parent else None,
        kind=otel_trace.SpanKind.PRODUCER,
        attributes={f"celery_workflows.{k}": v for k, v in attributes.items() if v},
    ):
        yield current_traceparent()


def new_traceparent(name: str, parent: str | None = None, **attributes: Any) -> str:
    """The traceparent of a fresh producer span ``name`` ("" without tracing)."""
    with producer_span(name, parent, **attributes) as traceparent:
        return traceparent or ""


class _Instruments:
    def __init__(self) -> None:
        meter = otel_metrics.get_meter(SCOPE)
        self.attempts = meter.create_counter(
            "celery_workflows.attempts", unit="{attempt}", description="attempts by outcome"
        )
        self.duration = meter.create_histogram(
            "celery_workflows.attempt.duration", unit="ms", description="attempt duration"
        )
        self.hop = meter.create_histogram(
            "celery_workflows.hop.latency",
            unit="ms",
            description="from a job's creation to the start of its first attempt",
        )
        self.settled_by_sweeper = meter.create_counter(
            "celery_workflows.runs.settled_by_sweeper",
            unit="{run}",
            description="runs left open with nothing pending, settled by the backstop (bugs)",
        )


_instruments: _Instruments | None = None


def _metrics() -> _Instruments | None:
    global _instruments
    if otel_trace is None:
        return None
    if _instruments is None:
        _instruments = _Instruments()
    return _instruments


def record_start(claimed: ClaimedJob) -> None:
    instruments = _metrics()
    if instruments is not None and claimed.attempt == 1:
        hop = (claimed.started_at - claimed.created_at).total_seconds() * 1000
        instruments.hop.record(max(0.0, hop), {"queue": claimed.queue})


def count_settled_by_sweeper(status: str) -> None:
    instruments = _metrics()
    if instruments is not None:
        instruments.settled_by_sweeper.add(1, {"status": str(status)})


def record_outcome(queue: str, outcome: Outcome) -> None:
    instruments = _metrics()
    if instruments is None:
        return
    labels = {"queue": queue, "outcome": OUTCOMES.get(outcome.status, "other")}
    instruments.attempts.add(1, labels)
    took = (outcome.attempt.finished_at - outcome.attempt.started_at).total_seconds() * 1000
    instruments.duration.record(took, {"queue": queue})
