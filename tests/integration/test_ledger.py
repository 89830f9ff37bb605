"""The ledger's fences and claims on the real database, without a worker."""

from __future__ import annotations

import time
import uuid

import pytest

from celery_workflows import get_job
from celery_workflows.clock import utcnow
from celery_workflows.records import (
    AttemptOutcome,
    AttemptRecord,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
)
from celery_workflows.store import get_store

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
