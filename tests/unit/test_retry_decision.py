"""The one rule that judges a failed attempt - used by workers and by the sweeper alike."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from celery_workflows import RetryStrategy
from celery_workflows.lifecycle import PUBLISH_HORIZON_SECONDS, after_failure
from celery_workflows.records import AttemptOutcome, AttemptRecord, JobStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EXACT = RetryStrategy(initial_delay=5, max_delay=120, multiplier=2, jitter_factor=0)


def failed(attempt: int, kind: AttemptOutcome = AttemptOutcome.FAILED) -> AttemptRecord:
    return AttemptRecord(attempt, "w:1", T0, T0 + timedelta(seconds=1), kind, "boom")


@pytest.mark.parametrize(
    "kind",
    [AttemptOutcome.FAILED, AttemptOutcome.LEASE_EXPIRED, AttemptOutcome.RETRY_REQUESTED],
)
@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 2), (1, 5), (4, 5)])
def test_a_failure_with_attempts_left_retries_after_the_backoff(kind, attempt, max_attempts):
    outcome = after_failure(failed(attempt, kind), max_attempts, EXACT)
    assert outcome.status == JobStatus.QUEUED
    delay = min(120, 5 * 2 ** (attempt - 1))
    assert outcome.available_at == T0 + timedelta(seconds=1 + delay)
    assert outcome.retry_in_seconds == delay
    assert outcome.attempt.error == "boom" and outcome.reason == ""


@pytest.mark.parametrize(
    "kind", [AttemptOutcome.FAILED, AttemptOutcome.LEASE_EXPIRED, AttemptOutcome.RETRY_REQUESTED]
)
@pytest.mark.parametrize(("attempt", "max_attempts"), [(1, 1), (5, 5), (7, 5)])
def test_the_last_failure_dead_letters_saying_it_gave_up(kind, attempt, max_attempts):
    outcome = after_failure(failed(attempt, kind), max_attempts, EXACT)
    assert outcome.status == JobStatus.DEAD
    assert outcome.reason == f"gave up after {attempt} attempt(s); last error: boom"
    assert outcome.attempt.error == outcome.reason
    assert outcome.attempt.outcome == kind


@pytest.mark.parametrize(
    "kind", [AttemptOutcome.FATAL, AttemptOutcome.DEAD_LETTERED, AttemptOutcome.INVALID_PAYLOAD]
)
@pytest.mark.parametrize("attempt", [1, 3])
def test_giving_up_dead_letters_at_once_with_the_error_as_reason(kind, attempt):
    outcome = after_failure(failed(attempt, kind), 5, EXACT, give_up=True)
    assert outcome.status == JobStatus.DEAD
    assert outcome.reason == "boom" and outcome.attempt.error == "boom"


def test_a_requested_delay_replaces_the_backoff():
    outcome = after_failure(failed(1), 5, EXACT, delay_seconds=0.25)
    assert outcome.retry_in_seconds == 0.25 and outcome.published


def test_a_requested_delay_does_not_outlive_the_last_attempt():
    assert after_failure(failed(3), 3, EXACT, delay_seconds=1).status == JobStatus.DEAD


def test_retries_due_soon_are_published_now_and_later_ones_wait_in_the_ledger():
    soon = after_failure(failed(1), 5, EXACT, delay_seconds=PUBLISH_HORIZON_SECONDS)
    later = after_failure(failed(1), 5, EXACT, delay_seconds=PUBLISH_HORIZON_SECONDS + 1)
    assert soon.published and not later.published


def test_jitter_spreads_retries_within_the_band():
    strategy = RetryStrategy(initial_delay=10, max_delay=60, multiplier=2, jitter_factor=0.2)
    rng = random.Random(3)
    delays = [after_failure(failed(1), 5, strategy, rng=rng).retry_in_seconds for _ in range(50)]
    assert all(8 <= d <= 12 for d in delays)
    assert len({round(d, 6) for d in delays}) == 50


def test_worker_and_sweeper_agree_on_a_jobs_decorrelated_delays():
    # both call after_failure with the job id as seed; the third retry grows from the second
    strategy = RetryStrategy(initial_delay=5, max_delay=600, jitter="decorrelated")
    first = [after_failure(failed(n), 9, strategy, seed="j-7").retry_in_seconds for n in (1, 2, 3)]
    again = [after_failure(failed(n), 9, strategy, seed="j-7").retry_in_seconds for n in (1, 2, 3)]
    assert first == again
    assert 5 <= first[0] <= 15 and 5 <= first[1] <= first[0] * 3 and 5 <= first[2] <= first[1] * 3
