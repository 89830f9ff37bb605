"""The sweeper: settles expired leases and publishes jobs that are due.

It is what makes the ledger, not the broker, the source of truth. Each pass:

1. finds attempts whose lease expired (worker SIGKILLed, OOM-killed, hung, partitioned) and
   records them as failed attempts, then retries or dead-letters the job - so a poison job that
   kills its worker every time still ends in the DLQ after ``max_attempts``;
2. publishes jobs that are due but have no live notice in the broker: delayed jobs whose time
   has come, and jobs whose notice was lost (publish failed after commit, broker lost it).

Every write is conditional, so any number of sweepers (one per worker) may run at once. Celery
workers run it on their consumer's timer, in the main thread (see
:mod:`celery_workflows.celery_integration`) - never in a thread of its own, because prefork
children forked while another thread holds a lock (logging, the database driver) deadlock.
Other deployments can call :func:`sweep_once` or ``manage.py workflows sweep``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from . import registry, signals
from .clock import utcnow
from .lease import worker_name
from .lifecycle import compute_backoff
from .store import AttemptOutcome, AttemptRecord, Dispatch, ExpiredLease, get_store
from .worker import PUBLISH_HORIZON_SECONDS, finish_if_done

logger = logging.getLogger("celery_workflows.sweeper")

#: seconds between two passes of a worker's sweeper
DEFAULT_INTERVAL_SECONDS = 1.0
#: a queued, due job whose notice is older than this is published again (lost-message rescue)
DEFAULT_REPUBLISH_AFTER_SECONDS = 300.0
#: rows handled per pass and kind, so one pass stays short
BATCH_SIZE = 500


@dataclass(frozen=True)
class SweepReport:
    expired: int
    published: int


def sweep_once(republish_after: float = DEFAULT_REPUBLISH_AFTER_SECONDS) -> SweepReport:
    """Run one pass over the queues this process declares (it knows their lifecycles).

    Returns how many leases were settled and notices published.
    """
    store = get_store()
    now = utcnow()
    known = registry.queues()
    expired = 0
    names = sorted(known)
    for lease in store.expire_leases(names, now, BATCH_SIZE):
        if _settle(lease):
            expired += 1
    published = 0
    for dispatch in store.take_due(
        names, now, now - timedelta(seconds=republish_after), BATCH_SIZE
    ):
        known[dispatch.queue].publish(dispatch)
        published += 1
    return SweepReport(expired=expired, published=published)


def _settle(lease: ExpiredLease) -> bool:
    store = get_store()
    worker = registry.get_queue(lease.queue)
    now = utcnow()
    error = (
        f"lease expired: worker {lease.worker} stopped renewing it within "
        f"{worker.lifecycle.visibility_timeout:g}s (killed, crashed, hung or partitioned)"
    )
    final = lease.attempt >= lease.max_attempts
    record = AttemptRecord(
        attempt=lease.attempt,
        worker=lease.worker,
        started_at=lease.started_at or now,
        finished_at=now,
        outcome=AttemptOutcome.LEASE_EXPIRED,
        error=error
        if not final
        else f"gave up after {lease.attempt} attempt(s); last error: {error}",
    )
    if final:
        if not store.settle_expired(lease, record, None, False):
            return False
        logger.error("job %s dead-lettered by %s: %s", lease.job_id, worker_name(), record.error)
        signals.job_dead_lettered.send(
            sender=worker,
            job_id=lease.job_id,
            queue=lease.queue,
            attempt=lease.attempt,
            reason=record.error,
        )
        finish_if_done(worker, lease.correlation_id, lease.job_id)
        return True
    delay = compute_backoff(lease.attempt, worker.lifecycle.retry)
    publish = delay <= PUBLISH_HORIZON_SECONDS
    if not store.settle_expired(lease, record, now + timedelta(seconds=delay), publish):
        return False
    logger.warning(
        "job %s attempt %s: %s; retrying in %.2fs", lease.job_id, lease.attempt, error, delay
    )
    if publish:
        worker.publish(
            Dispatch(lease.job_id, lease.queue, lease.attempt + 1, lease.priority, delay)
        )
    signals.job_failed.send(
        sender=worker,
        job_id=lease.job_id,
        queue=lease.queue,
        attempt=lease.attempt,
        error=error,
        retry_in=delay,
    )
    return True


def safe_sweep(republish_after: float = DEFAULT_REPUBLISH_AFTER_SECONDS) -> None:
    """One pass that never raises: a DB or broker outage is logged and retried next time."""
    try:
        sweep_once(republish_after)
    except Exception:
        logger.exception("sweeper pass failed; it runs again at the next interval")
