"""The ledger's fences and claims on the real database, without a worker."""

from __future__ import annotations

import dataclasses
import time
import uuid
from datetime import timedelta

import pytest
from django.test.utils import CaptureQueriesContext

from celery_workflows import get_job
from celery_workflows.clock import utcnow
from celery_workflows.ids import new_id
from celery_workflows.records import (
    AttemptOutcome,
    AttemptRecord,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
    RunStart,
)
from celery_workflows.store import get_store
from django_app.models import Job, WorkflowRun
from tests.helpers import postgres_only

pytestmark = pytest.mark.usefixtures("transactional_db")

#: no process declares this queue, so no running worker's sweeper touches these rows
QUEUE = "ledger.fencing"


def new_job(max_attempts: int = 3) -> str:
    job_id = uuid.uuid4().hex
    get_store().insert_job(
        NewJob(
            id=job_id,
            service="ledger",
            queue=QUEUE,
            payload={},
            max_attempts=max_attempts,
            available_at=utcnow(),
            correlation_id="wf",
            published=True,
        )
    )
    return job_id


def success(attempt: int, result: object = None) -> Outcome:
    now = utcnow()
    record = AttemptRecord(attempt, "test:1", now, now, AttemptOutcome.SUCCEEDED)
    return Outcome(JobStatus.SUCCEEDED, record, result=result)


def dead(attempt: int, reason: str) -> Outcome:
    now = utcnow()
    record = AttemptRecord(attempt, "test:1", now, now, AttemptOutcome.FATAL, reason)
    return Outcome(JobStatus.DEAD, record, reason=reason)


def test_only_one_claim_wins_an_attempt():
    job_id = new_job()
    store = get_store()
    assert store.claim(job_id, 1, "a" * 32, "w1", 30) is not None
    assert store.claim(job_id, 1, "b" * 32, "w2", 30) is None


def test_claim_for_a_stale_attempt_number_is_refused():
    job_id = new_job()
    assert get_store().claim(job_id, 2, "a" * 32, "w1", 30) is None


def test_expired_lease_cannot_complete_extend_or_fail():
    store = get_store()
    job_id = new_job()
    claimed = store.claim(job_id, 1, "a" * 32, "w1", 0.05)
    assert claimed is not None
    time.sleep(0.1)
    assert store.record_outcome(claimed, success(1, "late"), Outbox()) is None
    assert store.extend_lease(job_id, claimed.lease_token, 30) is None
    assert store.record_outcome(claimed, dead(1, "late"), Outbox()) is None
    assert get_job(job_id).status == "running"


def test_expired_lease_is_settled_once_as_a_failed_attempt_and_the_old_token_stays_fenced():
    store = get_store()
    job_id = new_job()
    claimed = store.claim(job_id, 1, "a" * 32, "w1", 0.05)
    assert claimed is not None
    time.sleep(0.1)
    (lease,) = store.expire_leases([QUEUE], utcnow(), 10)
    record = AttemptRecord(1, "w1", utcnow(), utcnow(), AttemptOutcome.LEASE_EXPIRED, "lost")
    retry = Outcome(JobStatus.QUEUED, record, available_at=utcnow(), published=False)
    assert store.settle_expired(lease, retry) == Recorded([])
    assert store.settle_expired(lease, retry) is None  # a second sweeper
    second = store.claim(job_id, 2, "b" * 32, "w2", 30)
    assert second is not None
    assert store.record_outcome(claimed, success(1, "zombie"), Outbox()) is None
    assert store.record_outcome(second, success(2, "fresh"), Outbox()) is not None
    record_after = get_job(job_id)
    assert record_after.result == "fresh"
    assert [a["outcome"] for a in record_after.attempt_log] == ["lease_expired", "succeeded"]


def fresh_job(correlation_id: str = "wf", starts: RunStart | None = None) -> NewJob:
    return NewJob(
        id=new_id(),
        service="ledger",
        queue=QUEUE,
        payload={"n": 1},
        max_attempts=3,
        available_at=utcnow(),
        correlation_id=correlation_id,
        published=False,
        starts=starts,
    )


def test_more_jobs_than_one_statement_can_carry_are_enqueued_together():
    # 10,000 jobs x 26 columns is past PostgreSQL's 65,535 parameters and SQLite's 250,000
    starts = RunStart(name="ledger", started_by="test", business_key="")
    jobs = [fresh_job(new_id(), starts) for _ in range(10_000)]
    results = get_store().insert_jobs(jobs)
    assert [r.job_id for r in results] == [j.id for j in jobs]
    assert all(r.created for r in results)
    assert Job.objects.filter(queue=QUEUE).count() == 10_000
    assert (
        WorkflowRun.objects.filter(
            correlation_id__in=[j.correlation_id for j in jobs], pending_jobs=1
        ).count()
        == 10_000
    )


def test_an_outcome_starting_more_jobs_than_one_statement_can_carry_is_written_whole():
    store = get_store()
    claimed = store.claim(new_job(), 1, "a" * 32, "w1", 30)
    assert claimed is not None
    fan_out = [fresh_job() for _ in range(3_000)]  # 78,000 parameters as one statement
    recorded = store.record_outcome(claimed, success(1), Outbox(jobs=fan_out))
    assert recorded is not None
    assert {j.id for j in recorded.created} == {j.id for j in fan_out}
    assert Job.objects.filter(queue=QUEUE, status=JobStatus.QUEUED).count() == 3_000
    assert get_job(claimed.id).status == "succeeded"


@pytest.mark.parametrize("jobs", [1, 40, 1_000])
def test_an_outcome_is_written_whole_whether_its_statement_is_kept_or_built_each_time(jobs):
    # one statement on PostgreSQL: a step's few jobs use a kept statement, a fan-out of
    # hundreds one built for it (kept, hundreds of such texts would hold megabytes)
    store = get_store()
    for _ in range(2):  # the second write of each shape finds the kept statement
        claimed = store.claim(new_job(), 1, new_id(), "w1", 30)
        assert claimed is not None
        fan_out = [fresh_job(claimed.correlation_id) for _ in range(jobs)]
        recorded = store.record_outcome(claimed, success(1), Outbox(jobs=fan_out))
        assert recorded is not None
        assert {j.id for j in recorded.created} == {j.id for j in fan_out}
        assert get_job(claimed.id).status == "succeeded"


@postgres_only("reads PostgreSQL's query plan")
def test_the_sweepers_search_for_lost_notices_reads_a_few_pages_not_the_backlog():
    # every worker runs this search each second; behind a backlog of jobs whose notices went
    # out just now, it must find the unsent and long-unclaimed ones without reading them all
    from django.db import connection

    sent = [dataclasses.replace(fresh_job(), published=True) for _ in range(3_000)]
    stale = dataclasses.replace(fresh_job(), published=True)
    get_store().insert_jobs([*sent, stale])
    Job.objects.filter(id=stale.id).update(published_at=utcnow() - timedelta(hours=1))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE celery_workflows_job")
    now = utcnow()
    with CaptureQueriesContext(connection) as queries:
        due = get_store().due_jobs([QUEUE], now, now - timedelta(minutes=5), 100)
    assert [d.job_id for d in due] == [stale.id]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + queries[-1]["sql"])
        plan = cursor.fetchone()[0][0]["Plan"]
    # the backlog spans dozens of pages (67 here without the index); the search reads a few
    assert plan["Shared Hit Blocks"] + plan["Shared Read Blocks"] < 20, plan
