"""Lifecycle settings and the backoff formula, without a worker."""

from __future__ import annotations

import random

import pytest

from celery_workflows import ConfigurationError, Jitter, Lifecycle, RetryStrategy
from celery_workflows.lifecycle import compute_backoff


def test_backoff_grows_by_the_multiplier_and_is_capped_by_max_delay():
    strategy = RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter_factor=0)
    assert [compute_backoff(n, strategy) for n in range(1, 7)] == [5, 10, 20, 40, 60, 60]


def test_backoff_stays_inside_the_jitter_band_and_spreads_simultaneous_failures():
    strategy = RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter_factor=0.1)
    rng = random.Random(7)
    delays = [compute_backoff(2, strategy, rng) for _ in range(10)]
    assert all(9.0 <= d <= 11.0 for d in delays)
    assert len({round(d, 6) for d in delays}) == 10  # ten jobs failing together do not align


def test_backoff_never_overflows_on_huge_attempt_numbers():
    strategy = RetryStrategy(initial_delay=1, max_delay=30, multiplier=10, jitter_factor=0)
    assert compute_backoff(10_000, strategy) == 30


def test_full_jitter_draws_anywhere_between_zero_and_the_capped_exponential():
    strategy = RetryStrategy(initial_delay=5, max_delay=60, multiplier=2, jitter="full")
    assert strategy.jitter is Jitter.FULL
    rng = random.Random(11)
    for failures, cap in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)]:
        delays = [compute_backoff(failures, strategy, rng) for _ in range(400)]
        assert all(0 <= d <= cap for d in delays)
        # the whole range is used: some near zero, some near the cap
        assert min(delays) < cap * 0.05 and max(delays) > cap * 0.95


def test_decorrelated_jitter_grows_each_delay_from_the_one_before():
    strategy = RetryStrategy(initial_delay=2, max_delay=300, jitter=Jitter.DECORRELATED)
    # the same seed replays the same sequence, so worker and sweeper agree on a job's delays
    sequence = [compute_backoff(n, strategy, seed="job-1") for n in range(1, 9)]
    assert sequence == [compute_backoff(n, strategy, seed="job-1") for n in range(1, 9)]
    previous = strategy.initial_delay
    for delay in sequence:
        assert strategy.initial_delay <= delay <= min(300, previous * 3)
        previous = delay
    # another job spreads differently
    assert sequence != [compute_backoff(n, strategy, seed="job-2") for n in range(1, 9)]


def test_decorrelated_jitter_is_capped_and_never_below_the_initial_delay():
    strategy = RetryStrategy(initial_delay=1, max_delay=30, jitter="decorrelated")
    rng = random.Random(3)
    delays = [compute_backoff(n, strategy, rng) for n in range(1, 40) for _ in range(20)]
    assert all(1 <= d <= 30 for d in delays)
    assert max(delays) > 25  # long failure streaks do reach the cap


def test_an_unknown_jitter_is_refused_with_the_choices():
    with pytest.raises(ConfigurationError, match="'band', 'full', 'decorrelated'"):
        RetryStrategy(jitter="exponential")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"initial_delay": -1}, "initial_delay"),
        ({"initial_delay": 10, "max_delay": 5}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter_factor": 1.0}, "jitter_factor"),
    ],
)
def test_retry_strategy_rejects_bad_numbers_naming_the_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=field):
        RetryStrategy(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"visibility_timeout": 0}, "visibility_timeout"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"non_retryable": ("ValueError",)}, "non_retryable"),
    ],
)
def test_lifecycle_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigurationError, match=field):
        Lifecycle(**kwargs)


def test_lifecycle_is_frozen():
    with pytest.raises(AttributeError):
        Lifecycle().max_attempts = 3  # type: ignore[misc]
