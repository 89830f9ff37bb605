"""A workflow run is named and keyed when it starts, however it was started."""

from __future__ import annotations

import uuid

import pytest

from celery_workflows import emit, get_workflow
from celery_workflows.signals import workflow_finished
from celery_workflows.sweeper import Sweeper
from tests.proj.flows import shop

pytestmark = pytest.mark.usefixtures("transactional_db")


def test_run_started_by_a_services_emit_is_found_by_its_business_key():
    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = shop.emit("orderPlaced", {"orderId": key, "inStock": False})
    run = get_workflow(key)
    assert run.correlation_id == placed.correlation_id
    assert (run.name, run.business_key, run.started_by) == ("shop", key, "orderPlaced")


def test_run_started_by_plain_emit_belongs_to_the_service_its_event_feeds():
    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = emit("orderPlaced", {"orderId": key, "inStock": False})
    run = get_workflow(key)
    assert run.correlation_id == placed.correlation_id
    assert (run.name, run.business_key) == ("shop", key)


def test_the_sweeper_settles_a_run_whose_jobs_all_ended_but_was_left_open():
    # two branches that end at the same instant may each see the other still running
    from django_app.models import Job, WorkflowRun

    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = shop.emit("orderPlaced", {"orderId": key})
    Job.objects.filter(correlation_id=placed.correlation_id).update(status="succeeded")
    assert get_workflow(key).status == "running"
    finished = []

    def on_finished(sender, correlation_id, status, **kw):
        finished.append((correlation_id, status))

    workflow_finished.connect(on_finished)
    try:
        sweeper = Sweeper()
        while sweeper.sweep().settled == 0 or sweeper.runs_cursor is not None:
            if WorkflowRun.objects.get(correlation_id=placed.correlation_id).status != "running":
                break
    finally:
        workflow_finished.disconnect(on_finished)
    assert get_workflow(key).status == "completed"
    assert (placed.correlation_id, "completed") in finished
