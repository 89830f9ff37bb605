"""The ledger-wide gauges report what the ledger holds."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from django_app.telemetry import register_ledger_gauges
from tests.proj.workflows import ops

pytestmark = pytest.mark.django_db(transaction=True)


def gauges(reader: InMemoryMetricReader) -> dict[tuple[str, tuple], float]:
    found = {}
    for resource in reader.get_metrics_data().resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = (metric.name, tuple(sorted(point.attributes.items())))
                    found[key] = point.value
    return found


def test_backlog_dead_letters_and_runs_come_from_the_ledger():
    from datetime import timedelta

    for n in range(3):
        ops.enqueue("steady", {"n": n})  # no worker consumes ops here: they wait
    ops.enqueue("steady", {"n": "later"}, delay=timedelta(hours=1))
    reader = InMemoryMetricReader()
    register_ledger_gauges(MeterProvider(metric_readers=[reader]))
    found = gauges(reader)
    steady = (("queue", "ops.steady"),)
    assert found[("celery_workflows.backlog", (*steady, ("state", "waiting")))] == 3
    assert found[("celery_workflows.backlog", (*steady, ("state", "delayed")))] == 1
    assert found[("celery_workflows.dead_letters", steady)] == 0
    assert found[("celery_workflows.oldest_waiting", steady)] >= 0
    assert found[("celery_workflows.runs", (("status", "running"),))] == 4
