"""A workflow run is named and keyed when it starts, however it was started."""

from __future__ import annotations

import time
import uuid

import pytest

from celery_workflows import emit, get_workflow
from tests.helpers import postgres_only
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


def test_parallel_branches_ending_together_settle_their_run_exactly_once():
    # the run's counters are updated by each outcome statement under the run row's lock, so
    # whichever branch ends last - even at the same instant - settles it, and only that one
    import threading

    from django.db import connection

    from celery_workflows.clock import utcnow
    from celery_workflows.records import AttemptOutcome, AttemptRecord, JobStatus, Outbox, Outcome
    from celery_workflows.store import get_store

    store = get_store()
    for round_ in range(10):
        key = f"o-{uuid.uuid4().hex[:8]}"
        placed = shop.emit("orderPlaced", {"orderId": key, "inStock": False})
        # orderPlaced starts validate; make it two parallel branches of the same run
        branch = shop.enqueue("audit", {"seen": key}, correlation_id=placed.correlation_id)
        from django_app.models import Job

        jobs = list(
            Job.objects.filter(correlation_id=placed.correlation_id).values_list("id", flat=True)
        )
        assert branch.job_id in jobs and len(jobs) == 2
        claims = [store.claim(job_id, 1, uuid.uuid4().hex, "w", 30) for job_id in jobs]
        start = threading.Barrier(2)
        settled = []

        def finish(claim, start=start, settled=settled):
            start.wait()
            now = utcnow()
            record = AttemptRecord(1, "w", now, now, AttemptOutcome.SUCCEEDED)
            recorded = store.record_outcome(claim, Outcome(JobStatus.SUCCEEDED, record), Outbox())
            settled.append(recorded.run_status)
            connection.close()

        threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(settled, key=str) == [None, "completed"], f"round {round_}: {settled}"
        assert get_workflow(key).status == "completed"


def waiting_for_a_lock(other_than: int) -> bool:
    """Whether a session besides ``other_than`` waits for a lock (read outside any
    transaction: pg_stat_activity is a snapshot taken once per transaction)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> %s",
            [other_than],
        )
        return cursor.fetchone() is not None


@postgres_only("row locks (SQLite locks the whole database)")
def test_stopping_a_run_takes_its_locks_in_the_order_an_outcome_write_does():
    # every write of a run locks the run first, then jobs: an outcome write holding the run
    # and about to update its job must find the job free, and stopping the run must wait for
    # the run without holding any of its jobs, or the two deadlock
    import threading

    import psycopg
    from django.db import connection

    from celery_workflows.records import Outbox
    from celery_workflows.store import get_store
    from django_app.models import Job

    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = shop.emit("orderPlaced", {"orderId": key, "inStock": False})
    job_id = Job.objects.get(correlation_id=placed.correlation_id).id
    assert get_store().claim(job_id, 1, uuid.uuid4().hex, "w", 30) is not None
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    outcome, probe = psycopg.connect(**params), psycopg.connect(**params)
    outcome.execute("SELECT set_config('lock_timeout', '5s', false)")
    # the outcome write has locked its run and is about to update its job
    outcome.execute(
        "SELECT 1 FROM celery_workflows_workflowrun WHERE correlation_id = %s FOR UPDATE",
        [placed.correlation_id],
    )
    stopped = []

    def stop():
        try:
            stopped.append(get_store().stop_run(placed.correlation_id, "test", "t", Outbox(), None))
        except BaseException as exc:
            stopped.append(exc)
            raise
        finally:
            connection.close()  # this thread's own connection

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        deadline = time.monotonic() + 10
        while not waiting_for_a_lock(outcome.info.backend_pid):
            assert time.monotonic() < deadline, f"stop_run did not wait for the run: {stopped}"
            time.sleep(0.01)
        # the job is free: stop_run waits for the run without holding any job
        probe.execute(
            "SELECT 1 FROM celery_workflows_job WHERE id = %s FOR UPDATE NOWAIT", [job_id]
        )
        probe.rollback()
        outcome.execute(
            "UPDATE celery_workflows_job SET attempt_log = attempt_log WHERE id = %s", [job_id]
        )
        outcome.commit()
    finally:
        outcome.close()
        probe.close()
        stopper.join(timeout=20)
    assert stopped == [[]]


def test_a_dead_letter_of_a_run_an_operator_stopped_is_not_redriven():
    from celery_workflows import NotRedrivableError, cancel_workflow, redrive
    from celery_workflows.clock import utcnow
    from celery_workflows.compensation import undo_planner
    from celery_workflows.events import new_event, plan, run_start_for
    from celery_workflows.lifecycle import after_failure
    from celery_workflows.records import AttemptOutcome, AttemptRecord
    from celery_workflows.store import get_store
    from django_app.models import Job
    from tests.proj.interleavings import LIFECYCLE

    store = get_store()
    event = new_event(
        "propStarted",
        {"key": "stopped-1"},
        source="prop",
        correlation_id=None,
        causation_id=None,
        trace_id=None,
    )
    store.write_outbox(plan([event], run_start_for(event)))
    job = Job.objects.get(correlation_id=event.correlation_id)
    claim = store.claim(job.id, 1, uuid.uuid4().hex, "w", 30)
    assert cancel_workflow(event.correlation_id, actor="ops")  # while the step runs
    record = AttemptRecord(1, "w", claim.started_at, utcnow(), AttemptOutcome.FAILED, "boom")
    dead = after_failure(record, 1, LIFECYCLE.retry, give_up=True)
    assert store.record_outcome(claim, dead, plan([]), undo_planner("prop")) is not None
    with pytest.raises(NotRedrivableError, match="was stopped"):
        redrive(job.id, actor="ops")
    assert get_workflow(event.correlation_id).status == "cancelled"
