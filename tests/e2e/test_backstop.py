"""A run is never left open with nothing pending: an event that starts nothing settles its run
at once, and the sweeper's backstop settles whatever a bug would leave open - counted in a
metric and logged, because it means a bug."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

import pytest

from celery_workflows import emit, get_workflow
from celery_workflows.clock import utcnow
from celery_workflows.testing import wait_for
from django_app.models import WorkflowRun
from tests.helpers import manage, shell_environment

pytestmark = [pytest.mark.usefixtures("transactional_db")]


#: the grace these tests give their own sweepers; the session's other workers keep the
#: default 10 s, so for the 8.5 s after it was left open a run is these sweepers' alone
GRACE = {"WORKFLOWS_IDLE_RUN_GRACE": "1"}


def left_open(correlation_id: str) -> None:
    """What a bug would leave: the run's row says running, with nothing of it pending."""
    WorkflowRun.objects.filter(correlation_id=correlation_id).update(
        status="running", finished_at=None, started_at=utcnow() - timedelta(seconds=1.5)
    )


def test_an_event_that_starts_no_job_settles_the_run_it_starts():
    event = emit("verShipped", {"orderId": "v-nobody"})  # terminal: nobody subscribes
    run = get_workflow(event.correlation_id)
    assert run.status == "completed" and run.finished_at is not None


def test_a_workers_sweeper_settles_a_run_left_open_and_says_it_is_a_bug(start_worker):
    from pathlib import Path

    event = emit("verShipped", {"orderId": "v-left-open"})
    left_open(event.correlation_id)
    worker = start_worker(["ver.ship"], concurrency=1, name="backstop", extra_env=GRACE)
    wait_for(lambda: get_workflow(event.correlation_id).status == "completed", timeout=6)
    log = Path(worker.log_path).read_text()
    assert f"workflow {event.correlation_id} was left open with nothing pending" in log
    worker.stop()


def test_manage_py_sweep_reports_the_runs_it_settled(worker_env):
    event = emit("verShipped", {"orderId": "v-sweep"})
    left_open(event.correlation_id)
    done = manage({**worker_env, **GRACE}, "workflows", "sweep")
    assert done.returncode == 0, done.stderr
    assert "settled 1 run(s) left open" in done.stdout
    assert get_workflow(event.correlation_id).status == "completed"


def test_the_backstop_is_counted_in_a_metric(worker_env):
    # in a fresh interpreter: the OpenTelemetry meter provider can be set once per process
    event = emit("verShipped", {"orderId": "v-metric"})
    left_open(event.correlation_id)
    script = """
import json, django
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
django.setup()
from celery_workflows.sweeper import sweep_once
sweep_once()
points = {
    m.name: [(dict(p.attributes), p.value) for p in m.data.data_points]
    for rm in reader.get_metrics_data().resource_metrics
    for sm in rm.scope_metrics
    for m in sm.metrics
}
print(json.dumps(points))
"""
    env = shell_environment(
        {**worker_env, **GRACE, "DJANGO_SETTINGS_MODULE": "tests.proj.settings"}
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    points = json.loads(done.stdout.strip().splitlines()[-1])
    assert points["celery_workflows.runs.settled_by_sweeper"] == [[{"status": "completed"}, 1]]
