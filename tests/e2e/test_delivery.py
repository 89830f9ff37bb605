"""The ledger, not the broker, decides what runs: duplicates, lost notices, odd messages."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from celery_workflows import get_job
from celery_workflows.clock import utcnow
from celery_workflows.records import Dispatch, NewJob
from celery_workflows.store import get_store
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("session_worker", "transactional_db")]

ECHO = t.queue("echo")


def test_duplicated_notice_runs_the_job_once(wait_status, recorder):
    job = t.enqueue("echo", {"n": 1})
    for _ in range(3):  # the broker redelivers the same notice
        ECHO.publish(Dispatch(job.job_id, ECHO.qualified_name, 1, None))
    wait_status(job.job_id, "succeeded")
    time.sleep(1)  # asserting an absence: the copies must have been dropped
    assert len(recorder.runs(job.job_id)) == 1
    assert get_job(job.job_id).attempts == 1


def test_stale_notice_after_success_does_not_run_the_job_again(wait_status, recorder):
    job = t.enqueue("echo", {"n": 2})
    wait_status(job.job_id, "succeeded")
    ECHO.publish(Dispatch(job.job_id, ECHO.qualified_name, 1, None))
    ECHO.publish(Dispatch(job.job_id, ECHO.qualified_name, 2, None))
    time.sleep(1)
    assert len(recorder.runs(job.job_id)) == 1


def test_same_idempotency_key_creates_one_job(wait_status, recorder):
    first = t.enqueue("echo", {"order": "o-9"}, idempotency_key="place-order-o-9")
    second = t.enqueue("echo", {"order": "o-9"}, idempotency_key="place-order-o-9")
    assert first.created and not second.created
    assert second.job_id == first.job_id
    wait_status(first.job_id, "succeeded")
    time.sleep(0.5)
    assert len(recorder.runs(first.job_id)) == 1


def _unpublished_job(published: bool) -> str:
    job_id = uuid.uuid4().hex
    get_store().insert_job(
        NewJob(
            id=job_id,
            service="t",
            queue=ECHO.qualified_name,
            payload={"lost": True},
            max_attempts=3,
            available_at=utcnow(),
            correlation_id="wf-lost",
            published=published,
        )
    )
    return job_id


def test_job_committed_but_never_published_is_published_by_the_sweeper(wait_status):
    # the enqueueing process died between COMMIT and publish
    job_id = _unpublished_job(published=False)
    wait_status(job_id, "succeeded", timeout=5)


def test_job_whose_notice_the_broker_lost_is_published_again(wait_status):
    # published_at is set but no message exists: after workflows_republish_after (3s here)
    job_id = _unpublished_job(published=True)
    wait_status(job_id, "succeeded", timeout=10)


def test_long_delayed_job_waits_in_the_ledger_and_runs_once_when_due(
    wait_status, recorder, redis_client
):
    from django_app.models import Job

    job = t.enqueue("echo", {"later": True}, delay=timedelta(hours=3))
    row = Job.objects.get(id=job.job_id)
    assert row.published_at is None  # not parked in the broker for three hours
    time.sleep(0.5)
    assert row.status == "queued" and recorder.runs(job.job_id) == []
    Job.objects.filter(id=job.job_id).update(available_at=utcnow() - timedelta(seconds=1))
    wait_status(job.job_id, "succeeded", timeout=5)
    time.sleep(1)
    assert len(recorder.runs(job.job_id)) == 1


def test_a_backlog_is_not_amplified_by_re_publishing(start_worker, worker_env, wait_status):
    # notices wait behind a backlog for longer than workflows_republish_after (1 s here); the
    # sweeper must see that the broker still holds them and not send copies
    from tests.proj.workflows import crash

    slow = crash.queue("slow").qualified_name
    worker = start_worker([slow], concurrency=1, name="backlog", republish_after=1)
    jobs = [crash.enqueue("slow", {"seconds": 0.03}).job_id for _ in range(150)]
    for job_id in jobs:
        wait_status(job_id, "succeeded", timeout=60)
    attempts = sum(get_job(job_id).attempts for job_id in jobs)
    received = Path(worker.log_path).read_text().count(f"{crash.queue('slow').task_name}[")
    worker.stop()
    # "received" and "succeeded" lines both name the task: two per message. A notice still in
    # the broker is never sent twice; one the worker had prefetched (Celery's default
    # multiplier 4 x 1 process) is not in the queue's depth and may be: at most that many
    assert attempts == len(jobs)
    assert received // 2 - attempts <= 4


def test_a_notice_the_broker_refuses_after_commit_is_sent_by_the_sweeper_at_once(
    wait_status, monkeypatch
):
    # the job is committed; the broker refuses the notice (down, full, a network blip):
    # enqueue() must not fail a committed write, and the job must not wait for the
    # re-publish delay either
    from kombu.exceptions import OperationalError

    from celery_workflows.queues import QueueSpec
    from django_app.models import Job

    def refused(self, dispatches):
        raise OperationalError("broker unreachable")

    monkeypatch.setattr(QueueSpec, "publish_many", refused)
    job = t.enqueue("echo", {"n": "refused"})
    monkeypatch.undo()
    # the sweeper's to send: parked (no notice) - or, on a loaded machine, already sent again
    # by the session worker's sweeper (a later stamp than the one the insert wrote)
    row = Job.objects.get(id=job.job_id)
    assert row.published_at is None or row.published_at > row.available_at
    started = time.monotonic()
    wait_status(job.job_id, "succeeded", timeout=10)
    assert time.monotonic() - started < 2.5  # a sweep interval or so, not republish_after
