"""A workflow run is named and keyed when it starts, however it was started."""

from __future__ import annotations

import uuid

import pytest

from celery_workflows import emit, get_workflow
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
