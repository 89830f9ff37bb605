"""Queue workers on a real Celery worker, real Redis and the real test database."""

from __future__ import annotations

import itertools

import pytest

from celery_workflows import get_job, get_workflow, list_dead_letters, redrive
from celery_workflows.records import JobStatus
from tests.helpers import write_unvalidated
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("session_worker", "transactional_db")]


def test_job_succeeds_on_first_attempt(wait_status, recorder):
    job = t.enqueue("echo", {"hello": "world"}, correlation_id="wf-1")
    wait_status(job.job_id, "succeeded")
    record = get_job(job.job_id)
    assert record.result == {"echo": {"hello": "world"}, "correlation_id": "wf-1"}
    assert record.attempts == 1
    assert [a["outcome"] for a in record.attempt_log] == ["succeeded"]
    assert len(recorder.runs(job.job_id)) == 1


def test_flaky_handler_succeeds_on_third_attempt_after_backoff_delays(wait_status, recorder):
    job = t.enqueue("flaky", {})
    wait_status(job.job_id, "succeeded")
    record = get_job(job.job_id)
    assert record.attempts == 3
    assert [a["outcome"] for a in record.attempt_log] == ["failed", "failed", "succeeded"]
    runs = recorder.runs(job.job_id)
    gaps = [b["t"] - a["t"] for a, b in itertools.pairwise(runs)]
    # FAST_RETRY: 0.5s then 1.0s, each +/-20 %; allow 0.35s for delivery and the write
    for gap, base in zip(gaps, [0.5, 1.0], strict=True):
        assert base * 0.8 <= gap <= base * 1.2 + 0.35, (gap, base)


def test_always_failing_job_is_dead_lettered_after_max_attempts_with_every_error(
    wait_status, recorder
):
    job = t.enqueue("doomed", {"card": "4000"})
    wait_status(job.job_id, "dead")
    record = get_job(job.job_id)
    assert record.attempts == 3
    assert len(recorder.runs(job.job_id)) == 3
    assert [a["attempt"] for a in record.attempt_log] == [1, 2, 3]
    assert all("RuntimeError: card declined" in a["error"] for a in record.attempt_log)
    assert all("Traceback" in a["traceback"] for a in record.attempt_log)
    assert "gave up after 3 attempt(s)" in record.dead_reason
    assert job.job_id in [d.id for d in list_dead_letters("t.doomed")]


def test_invalid_payload_is_dead_lettered_after_one_attempt_with_the_validation_error(
    wait_status, recorder
):
    # a job written by an older deploy whose schema differed: enqueue() itself would refuse it
    job = write_unvalidated(t.queue("typed"), {"orderId": "o-1", "qty": "many"}, "wf-bad")
    wait_status(job.job_id, "dead")
    record = get_job(job.job_id)
    assert record.attempts == 1
    assert record.attempt_log[0]["outcome"] == "invalid_payload"
    assert "qty" in record.dead_reason and "valid integer" in record.dead_reason
    assert recorder.runs(job.job_id) == []


def test_handler_that_hangs_past_its_lease_is_stopped_and_retried(wait_status, recorder):
    job = t.enqueue("hangs", {})
    wait_status(job.job_id, "succeeded", timeout=20)
    record = get_job(job.job_id)
    assert record.result == "finished on attempt 2"
    first = record.attempt_log[0]
    assert first["outcome"] == "lease_expired"
    assert "visibility timeout" in first["error"]
    assert first["duration_ms"] < 2500  # stopped at its 2s lease, not after the 60s sleep


def test_handler_that_extends_its_lease_keeps_the_job(wait_status):
    job = t.enqueue("extends", {})
    wait_status(job.job_id, "succeeded", timeout=15)
    record = get_job(job.job_id)
    assert record.attempts == 1
    assert record.attempt_log[0]["duration_ms"] > 2000  # longer than the 1.5s lease


def test_redriving_a_dead_letter_runs_it_again_to_success(wait_status):
    dead = write_unvalidated(t.queue("typed"), {"orderId": "o-7", "qty": "seven"}, "wf-redrive")
    wait_status(dead.job_id, "dead")
    fresh = redrive(dead.job_id, payload={"orderId": "o-7", "qty": 7}, actor="ops-anna")
    wait_status(fresh.job_id, "succeeded")
    assert get_job(fresh.job_id).result == {"orderId": "o-7", "qty": 7}
    assert get_job(fresh.job_id).redriven_from == dead.job_id
    assert get_job(fresh.job_id).correlation_id == "wf-redrive"
    assert get_job(dead.job_id).status is JobStatus.REDRIVEN
    assert dead.job_id not in [d.id for d in list_dead_letters("t.typed")]
    (entry,) = get_workflow("wf-redrive").audit
    assert (entry.action, entry.actor, entry.job_id) == ("redrive", "ops-anna", dead.job_id)
    assert entry.detail["payload_after"] == {"orderId": "o-7", "qty": 7}


def test_enqueue_many_writes_every_job_in_one_go_and_all_of_them_run(wait_status):
    results = t.enqueue_many("echo", [{"n": n} for n in range(20)])
    assert [r.created for r in results] == [True] * 20
    assert len({r.correlation_id for r in results}) == 20  # each starts its own workflow
    for result in results:
        wait_status(result.job_id, "succeeded")
    assert get_job(results[7].job_id).result["echo"] == {"n": 7}
    assert get_workflow(results[7].correlation_id).status == "completed"


def test_enqueue_many_with_one_bad_payload_writes_nothing():
    from celery_workflows import PayloadValidationError
    from django_app.models import Job

    before = Job.objects.filter(queue="t.typed").count()
    with pytest.raises(PayloadValidationError, match="qty"):
        t.enqueue_many("typed", [{"orderId": "a", "qty": 1}, {"orderId": "b", "qty": "two"}])
    assert Job.objects.filter(queue="t.typed").count() == before


def test_enqueue_many_honours_idempotency_keys(wait_status):
    first = t.enqueue_many("echo", [{"n": 1}, {"n": 2}], idempotency_keys=["many-1", "many-2"])
    again = t.enqueue_many("echo", [{"n": 1}, {"n": 3}], idempotency_keys=["many-1", "many-3"])
    assert [r.created for r in again] == [False, True]
    assert again[0].job_id == first[0].job_id
    for result in [*first, again[1]]:
        wait_status(result.job_id, "succeeded")


@pytest.mark.parametrize("raised", ["SystemExit", "KeyboardInterrupt"])
def test_what_would_end_a_process_is_the_attempts_failure_and_the_worker_lives_on(
    raised, wait_status, session_worker
):
    job = t.enqueue("exits", {"raise": raised, "code": 3})
    wait_status(job.job_id, "dead", timeout=10)  # at once, not when a lease runs out
    (attempt,) = get_job(job.job_id).attempt_log
    assert attempt["outcome"] == "failed" and f"last error: {raised}" in attempt["error"]
    assert raised in attempt["traceback"]
    assert session_worker.alive()
    after = t.enqueue("echo", {"after": raised})
    wait_status(after.job_id, "succeeded")


def test_a_queue_whose_name_has_a_hyphen_runs_its_jobs(wait_status):
    job = t.enqueue("send-mail", {"to": "ann@example.com"})
    wait_status(job.job_id, "succeeded")
    assert get_job(job.job_id).result == "sent to ann@example.com"
