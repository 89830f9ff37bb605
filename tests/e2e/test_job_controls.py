"""Handlers end attempts explicitly: finish, retry after a delay, fail, park, cancel."""

from __future__ import annotations

import time

import pytest

from celery_workflows import cancel, get_job, get_workflow
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("session_worker", "transactional_db")]


def outcomes(job_id: str) -> list[str]:
    return [a["outcome"] for a in get_job(job_id).attempt_log]


def test_finish_ends_the_attempt_with_a_result(wait_status):
    job = t.enqueue("controls", {"action": "finish"})
    wait_status(job.job_id, "succeeded")
    assert get_job(job.job_id).result == {"early": True}


def test_retry_with_an_explicit_delay_runs_again_after_that_delay(wait_status, recorder):
    job = t.enqueue("controls", {"action": "retry_once"})
    wait_status(job.job_id, "succeeded")
    assert outcomes(job.job_id) == ["retry_requested", "succeeded"]
    first, second = recorder.runs(job.job_id)
    assert 1.0 <= second["t"] - first["t"] <= 1.5


@pytest.mark.parametrize(
    ("action", "outcome", "reason"),
    [
        ("fail", "fatal", "customer closed the order"),
        ("park", "dead_lettered", "needs a human"),
        ("non_retryable", "fatal", "non-retryable NotOurCustomer: unknown customer"),
        ("bad_result", "fatal", "not JSON-serialisable"),
        ("nul_result", "fatal", "cannot record the handler result: payload contains a NUL"),
        ("nul_error", "fatal", "bad byte \\x00 in the input\\ud800"),
    ],
)
def test_fatal_outcomes_go_to_the_dlq_after_one_attempt(action, outcome, reason, wait_status):
    job = t.enqueue("controls", {"action": action})
    wait_status(job.job_id, "dead")
    record = get_job(job.job_id)
    assert record.attempts == 1
    assert outcomes(job.job_id) == [outcome]
    assert reason in record.dead_reason


def test_text_that_only_looks_like_an_escaped_nul_is_accepted_and_stored(wait_status):
    # a Windows path with a backslash before "u0000": JSON escapes the backslash, so the
    # encoded form contains the six characters \u0000 without being a NUL
    text = "C:\\u0000dir\\file"
    job = t.enqueue("controls", {"action": "echo_text", "text": text})
    wait_status(job.job_id, "succeeded")
    assert get_job(job.job_id).result == {"text": text}


def test_cancelling_is_audited_with_who_asked(wait_status):
    job = t.enqueue("controls", {"action": "plain"}, delay=30)
    assert cancel(job.job_id, actor="ops-bo") == "cancelled"
    (entry,) = get_workflow(job.correlation_id).audit
    assert (entry.action, entry.actor, entry.detail) == ("cancel", "ops-bo", {"was": "queued"})


def test_running_handler_sees_a_cancellation_request(wait_status, job_status):
    job = t.enqueue("controls", {"action": "wait_cancel"})
    wait_status(job.job_id, "running")
    assert cancel(job.job_id) == "running"
    wait_status(job.job_id, "succeeded")
    assert get_job(job.job_id).result == "stopped on request"


def test_cancelling_a_queued_job_means_it_never_runs(recorder, job_status):
    job = t.enqueue("controls", {"action": "plain"}, delay=2)
    assert cancel(job.job_id) == "cancelled"
    time.sleep(3)  # asserting an absence: past the delay, nothing may have run
    assert job_status(job.job_id) == "cancelled"
    assert recorder.runs(job.job_id) == []
    assert get_workflow(job.correlation_id).status == "cancelled"
