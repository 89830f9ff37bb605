"""OpenTelemetry for the tracing tests: when ``OTEL_TEST_DIR`` is set (in a worker's
environment), spans go to one JSON-lines file per process there, metrics to an in-memory
reader, and with ``OTEL_TEST_CELERY=1`` Celery's own instrumentation runs beside ours."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

reader: Any = None

if os.environ.get("OTEL_TEST_DIR"):
    from celery.signals import worker_process_init
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class JsonLinesExporter(SpanExporter):
        """Writes each finished span as one JSON line to ``spans-<pid>.jsonl``."""

        def __init__(self, directory: str) -> None:
            self.directory = Path(directory)

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            path = self.directory / f"spans-{os.getpid()}.jsonl"
            with path.open("a") as out:
                for span in spans:
                    context = span.get_span_context()
                    out.write(
                        json.dumps(
                            {
                                "name": span.name,
                                "trace_id": f"{context.trace_id:032x}",
                                "span_id": f"{context.span_id:016x}",
                                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                                "kind": span.kind.name,
                                "status": span.status.status_code.name,
                                "attributes": dict(span.attributes or {}),
                                "pid": os.getpid(),
                            }
                        )
                        + "\n"
                    )
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(os.environ["OTEL_TEST_DIR"])))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))

    if os.environ.get("OTEL_TEST_CELERY"):

        @worker_process_init.connect(weak=False)
        def _instrument_celery(**kwargs: Any) -> None:
            from opentelemetry.instrumentation.celery import CeleryInstrumentor

            CeleryInstrumentor().instrument()


def metric_points() -> list[dict[str, Any]]:
    """Every data point the in-memory reader holds, flattened (empty without a reader)."""
    if reader is None:
        return []
    points = []
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points.append(
                        {
                            "name": metric.name,
                            "attributes": dict(point.attributes),
                            "value": getattr(point, "value", None),
                            "count": getattr(point, "count", None),
                            "sum": getattr(point, "sum", None),
                        }
                    )
    return points
