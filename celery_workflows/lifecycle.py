"""Per-queue lifecycle settings, the backoff math and the one retry-or-give-up rule.

A :class:`Lifecycle` is frozen and validated when the queue is declared, so a wrong number fails
at import time with the field named. :func:`compute_backoff` and :func:`after_failure` are pure
functions: a worker whose handler failed and the sweeper that found an expired lease both call
:func:`after_failure`, so a failed attempt is judged by one rule wherever it is noticed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import timedelta

from .errors import ConfigurationError
from .records import AttemptRecord, JobStatus, Outcome

#: retries due within this many seconds are published at once with a countdown; later ones stay
#: in the ledger and the sweeper publishes them when due (never parked in the broker for long,
#: which on Redis/SQS would outlive the broker's visibility timeout and run twice)
PUBLISH_HORIZON_SECONDS = 60.0


@dataclass(frozen=True)
class RetryStrategy:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) is
    ``min(max_delay, initial_delay * multiplier ** (n - 1))`` seconds, multiplied by a random
    factor in ``[1 - jitter_factor, 1 + jitter_factor]`` so that jobs failing together do not
    retry together.
    """

    #: seconds before the second attempt
    initial_delay: float = 5.0
    #: upper bound on any delay, in seconds, before jitter
    max_delay: float = 60.0
    #: growth of the delay per failed attempt
    multiplier: float = 2.0
    #: relative spread of each delay: 0.1 means +/-10 %
    jitter_factor: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_delay < 0:
            raise ConfigurationError(
                f"RetryStrategy.initial_delay must be >= 0, got {self.initial_delay}"
            )
        if self.max_delay < self.initial_delay:
            raise ConfigurationError(
                f"RetryStrategy.max_delay ({self.max_delay}) must be >= "
                f"initial_delay ({self.initial_delay})"
            )
        if self.multiplier < 1:
            raise ConfigurationError(
                f"RetryStrategy.multiplier must be >= 1, got {self.multiplier}"
            )
        if not 0 <= self.jitter_factor < 1:
            raise ConfigurationError(
                f"RetryStrategy.jitter_factor must be in [0, 1), got {self.jitter_factor}"
            )


@dataclass(frozen=True)
class Lifecycle:
    """How a queue owns, retries and dead-letters its jobs.

    ``visibility_timeout`` is the lease: how long one attempt may hold a job before it is
    considered lost and handed to another worker (extendable from the handler).
    ``max_attempts`` counts every attempt, including ones whose worker died or overran its
    lease, so a job that crashes its worker every time still reaches the DLQ.
    ``non_retryable`` lists exception classes that send a job to the DLQ at once.
    ``pause_after_failures`` pauses the queue when that many attempts in a row fail, across
    all workers (a poison threshold: a broken dependency should not burn every job's
    attempts); a success resets the count. None: never.
    """

    #: lease length in seconds
    visibility_timeout: float = 60.0
    #: attempts before the job is dead-lettered (1 = no retry)
    max_attempts: int = 5
    retry: RetryStrategy = field(default_factory=RetryStrategy)
    non_retryable: tuple[type[BaseException], ...] = ()
    pause_after_failures: int | None = None

    def __post_init__(self) -> None:
        threshold = self.pause_after_failures
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1
        ):
            raise ConfigurationError(
                f"Lifecycle.pause_after_failures must be None or an int >= 1, got {threshold!r}"
            )
        if self.visibility_timeout <= 0:
            raise ConfigurationError(
                f"Lifecycle.visibility_timeout must be > 0 seconds, got {self.visibility_timeout}"
            )
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigurationError(
                f"Lifecycle.max_attempts must be an int, got {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise ConfigurationError(
                f"Lifecycle.max_attempts must be >= 1, got {self.max_attempts}"
            )
        for cls in self.non_retryable:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise ConfigurationError(
                    f"Lifecycle.non_retryable must hold exception classes, got {cls!r}"
                )


def compute_backoff(
    failed_attempts: int, strategy: RetryStrategy, rng: random.Random | None = None
) -> float:
    """Seconds to wait before the next attempt, after ``failed_attempts`` failures (>= 1)."""
    if failed_attempts < 1:
        raise ValueError("failed_attempts must be >= 1")
    exponent = failed_attempts - 1
    try:
        base = strategy.initial_delay * strategy.multiplier**exponent
    except OverflowError:
        base = strategy.max_delay
    base = min(strategy.max_delay, base)
    spread = strategy.jitter_factor * base
    draw = (rng or random).uniform(-spread, spread)
    return max(0.0, base + draw)


def after_failure(
    record: AttemptRecord,
    max_attempts: int,
    retry: RetryStrategy,
    *,
    give_up: bool = False,
    delay_seconds: float | None = None,
    rng: random.Random | None = None,
) -> Outcome:
    """The outcome of a failed attempt: another attempt after the backoff, or the DLQ.

    ``give_up`` (a non-retryable error, ``ctx.fail()``, an invalid payload) dead-letters at
    once with ``record.error`` as the reason. Otherwise the job retries after ``delay_seconds``
    (what the handler asked for) or the backoff, while attempts remain; the last failure
    dead-letters with a reason that says so.
    """
    if give_up:
        return Outcome(JobStatus.DEAD, record, reason=record.error)
    if record.attempt >= max_attempts:
        reason = f"gave up after {record.attempt} attempt(s); last error: {record.error}"
        return Outcome(JobStatus.DEAD, replace(record, error=reason), reason=reason)
    delay = compute_backoff(record.attempt, retry, rng) if delay_seconds is None else delay_seconds
    return Outcome(
        JobStatus.QUEUED,
        record,
        available_at=record.finished_at + timedelta(seconds=delay),
        published=delay <= PUBLISH_HORIZON_SECONDS,
    )
