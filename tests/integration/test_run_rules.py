"""The rules of a run are written once, in ``celery_workflows/rules.py``; the ledger's SQL
renders them. Generated cases check that the SQL's answer is the model's, on the database the
suite runs against (PostgreSQL and SQLite)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_workflows import rules
from celery_workflows.clock import utcnow
from celery_workflows.records import RunStatus
from django_app.models import WorkflowRun
from django_app.runcounters import RunDelta, change_run

pytestmark = pytest.mark.usefixtures("transactional_db")

runs = st.builds(
    rules.RunCounters,
    status=st.sampled_from(list(RunStatus)),
    pending_jobs=st.integers(0, 3),
    dead_jobs=st.integers(0, 2),
    cancelled_jobs=st.integers(0, 2),
    compensation_jobs=st.integers(0, 2),
    failed_compensations=st.integers(0, 1),
    ended_by=st.sampled_from(["", "cancelled by ops"]),
)
deltas = st.fixed_dictionaries(
    {
        "pending": st.integers(-3, 3),
        "dead": st.integers(0, 1),
        "cancelled": st.integers(0, 2),
        "compensation": st.integers(0, 2),
        "failed_compensation": st.integers(0, 1),
        "compensating": st.booleans(),
    }
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(run=runs, delta=deltas)
def test_the_sql_of_a_runs_counters_settles_it_as_the_model_does(run, delta):
    correlation_id = uuid.uuid4().hex
    WorkflowRun.objects.create(
        correlation_id=correlation_id,
        name="model",
        status=run.status,
        started_at=utcnow(),
        pending_jobs=run.pending_jobs,
        dead_jobs=run.dead_jobs,
        cancelled_jobs=run.cancelled_jobs,
        compensation_jobs=run.compensation_jobs,
        failed_compensations=run.failed_compensations,
        ended_by=run.ended_by,
    )
    settled = change_run(correlation_id, "job-1", utcnow(), RunDelta(**delta))
    row = WorkflowRun.objects.get(correlation_id=correlation_id)
    expected = rules.changed(run, **delta)
    assert (
        row.status,
        row.pending_jobs,
        row.dead_jobs,
        row.cancelled_jobs,
        row.compensation_jobs,
        row.failed_compensations,
    ) == (
        expected.status,
        expected.pending_jobs,
        expected.dead_jobs,
        expected.cancelled_jobs,
        expected.compensation_jobs,
        expected.failed_compensations,
    )
    # the write that settles it is told so, and it alone
    settles = not run.status.is_final and expected.status.is_final
    assert settled == (expected.status if settles else None)
    assert (row.finished_at is not None) == settles
