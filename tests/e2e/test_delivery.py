"""The ledger, not the broker, decides what runs: duplicates, lost notices, odd messages."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest

from celery_workflows import get_job, list_dead_letters
from celery_workflows.clock import utcnow
from celery_workflows.records import Dispatch, NewJob
from celery_workflows.store import get_store
from celery_workflows.testing import wait_for
from tests.proj.celery_app import app
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


def test_message_for_an_unregistered_task_is_dead_lettered_with_the_reason():
    app.send_task("celery_workflows.t.renamedQueue", args=["x", 1], queue=ECHO.qualified_name)
    dead = wait_for(lambda: list_dead_letters(ECHO.qualified_name), timeout=10)
    assert "unknown task 'celery_workflows.t.renamedQueue'" in dead[0].dead_reason
    assert dead[0].payload["headers"]["task"] == "celery_workflows.t.renamedQueue"


def test_malformed_message_is_dead_lettered_with_the_reason():
    app.send_task(ECHO.task_name, args=["only-one-arg"], queue=ECHO.qualified_name)
    dead = wait_for(lambda: list_dead_letters(ECHO.qualified_name), timeout=10)
    assert "malformed message" in dead[0].dead_reason
    assert dead[0].payload == {"args": ["only-one-arg"], "kwargs": {}}


def test_message_whose_body_cannot_be_decoded_is_dead_lettered_with_the_reason():
    from kombu import Exchange, Queue

    queue = Queue(
        ECHO.qualified_name, Exchange(ECHO.qualified_name), routing_key=ECHO.qualified_name
    )
    with app.connection_for_write() as conn:
        conn.Producer().publish(
            b"{not json",
            exchange=queue.exchange,
            routing_key=queue.routing_key,
            declare=[queue],
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": ECHO.task_name, "id": uuid.uuid4().hex},
        )
    dead = wait_for(lambda: list_dead_letters(ECHO.qualified_name), timeout=10)
    assert "message body could not be decoded" in dead[0].dead_reason
    assert dead[0].payload["body"] == "{not json"
