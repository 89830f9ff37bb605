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
from enum import StrEnum

from .errors import ConfigurationError
from .records import AttemptRecord, JobStatus, Outcome

#: retries due within this many seconds are published at once with a countdown; later ones stay
#: in the ledger and the sweeper publishes them when due (never parked in the broker for long,
#: which on Redis/SQS would outlive the broker's visibility timeout and run twice)
PUBLISH_HORIZON_SECONDS = 60.0


class Jitter(StrEnum):
    """How a retry's delay is randomised, so that jobs failing together do not retry together.

    With ``cap = min(max_delay, initial_delay * multiplier ** (n - 1))`` after ``n`` failures:

    - ``BAND`` (the default): ``cap * uniform(1 - jitter_factor, 1 + jitter_factor)``. Delays
      stay close to the exponential curve - predictable for operators, a light spread.
    - ``FULL``: ``uniform(0, cap)``. The widest spread for a given cap, so the least contention
      when many jobs fail at once (a dependency that comes back), at the price of some retries
      coming almost at once.
    - ``DECORRELATED``: ``min(max_delay, uniform(initial_delay, previous * 3))``, starting from
      ``previous = initial_delay``. Each delay grows from the one before rather than from the
      attempt number, so retries of one job spread out while staying within a band of growth.
      ``multiplier`` and ``jitter_factor`` play no part.

    The three variants are the ones the AWS Architecture Blog compares in "Exponential Backoff
    And Jitter". A job's decorrelated sequence is replayed from a seed (the job id) rather than
    stored, so the sweeper and the worker agree on it without a column for the last delay.
    """

    BAND = "band"
    FULL = "full"
    DECORRELATED = "decorrelated"


#: growth bound of decorrelated jitter (each delay is at most this times the previous one)
DECORRELATED_GROWTH = 3.0


@dataclass(frozen=True)
class RetryStrategy:
    """Exponential backoff with jitter.

    The delay before attempt ``n + 1`` (after ``n`` failed attempts) grows from
    ``initial_delay`` by ``multiplier`` per failure up to ``max_delay``, then is spread by the
    chosen :class:`Jitter` (``±jitter_factor`` by default) so that jobs failing together do not
    retry together.
    """

    #: seconds before the second attempt
    initial_delay: float = 5.0
    #: upper bound on any delay, in seconds (the band variant may exceed it by jitter_factor)
    max_delay: float = 60.0
    #: growth of the delay per failed attempt
    multiplier: float = 2.0
    #: relative spread of each delay with Jitter.BAND: 0.1 means +/-10 %
    jitter_factor: float = 0.1
    #: how the delay is randomised: "band", "full" or "decorrelated" (see Jitter)
    jitter: Jitter = Jitter.BAND

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
        try:
            object.__setattr__(self, "jitter", Jitter(self.jitter))
        except ValueError:
            choices = ", ".join(repr(j.value) for j in Jitter)
            raise ConfigurationError(
                f"RetryStrategy.jitter must be one of {choices}, got {self.jitter!r}"
            ) from None


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
    failed_attempts: int,
    strategy: RetryStrategy,
    rng: random.Random | None = None,
    *,
    seed: str | None = None,
) -> float:
    """Seconds to wait before the next attempt, after ``failed_attempts`` failures (>= 1).

    ``rng`` draws the jitter (tests pass a seeded one). For :attr:`Jitter.DECORRELATED`,
    ``seed`` (the job id) replays the job's earlier delays so each one grows from the last;
    without it the earlier delays are drawn afresh, which keeps the distribution but not the
    link to what the job actually waited.
    """
    if failed_attempts < 1:
        raise ValueError("failed_attempts must be >= 1")
    if strategy.jitter is Jitter.DECORRELATED:
        draw = rng or (random.Random(seed) if seed is not None else random.Random())
        delay = strategy.initial_delay
        for _ in range(failed_attempts):
            high = max(strategy.initial_delay, delay * DECORRELATED_GROWTH)
            delay = min(strategy.max_delay, draw.uniform(strategy.initial_delay, high))
        return delay
    try:
        cap = strategy.initial_delay * strategy.multiplier ** (failed_attempts - 1)
    except OverflowError:
        cap = strategy.max_delay
    cap = min(strategy.max_delay, cap)
    if strategy.jitter is Jitter.FULL:
        return (rng or random).uniform(0.0, cap)
    spread = strategy.jitter_factor * cap
    return max(0.0, cap + (rng or random).uniform(-spread, spread))


def after_failure(
    record: AttemptRecord,
    max_attempts: int,
    retry: RetryStrategy,
    *,
    give_up: bool = False,
    delay_seconds: float | None = None,
    rng: random.Random | None = None,
    seed: str | None = None,
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
    if delay_seconds is None:
        delay = compute_backoff(record.attempt, retry, rng, seed=seed)
    else:
        delay = delay_seconds
    return Outcome(
        JobStatus.QUEUED,
        record,
        available_at=record.finished_at + timedelta(seconds=delay),
        published=delay <= PUBLISH_HORIZON_SECONDS,
    )
