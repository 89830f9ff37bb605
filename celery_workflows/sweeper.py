"""The sweeper: settles expired leases and publishes jobs that are due.

It is what makes the ledger, not the broker, the source of truth. Each pass:

1. finds attempts whose lease expired (worker SIGKILLed, OOM-killed, hung, partitioned) and
   records them as failed attempts, then retries or dead-letters the job by the same rule a
   worker applies (:func:`~celery_workflows.lifecycle.after_failure`) - so a poison job that
   kills its worker every time still ends in the DLQ after ``max_attempts``;
2. publishes jobs that are due but have no live notice in the broker: delayed jobs whose time
   has come, and jobs whose notice was lost (publish failed after commit, broker lost it) -
   only as many as the broker's queue cannot still be holding;
3. stops runs past their deadline and closes approval gates past their expiry; tells waiting
   parents of child runs that ended and stops the children of stopped parents;
4. the backstop: settles runs left open with nothing pending - which no correct write leaves,
   so each is logged and counted as a bug.

Every write is conditional, so any number of sweepers (one per worker) may run at once. Celery
workers run it on their consumer's timer, in the main thread (see
:mod:`celery_workflows.celery_integration`) - never in a thread of its own, because prefork
children forked while another thread holds a lock (logging, the database driver) deadlock.
Other deployments can call :func:`sweep_once` or ``manage.py workflows sweep``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import control, holding, registry, signals, telemetry
from .approvals import expire_gate
from .children import report_ends
from .clock import utcnow
from .compensation import stop_workflow, undo_planner
from .control import running_queues
from .errors import ConfigurationError
from .lifecycle import after_failure
from .middleware import AttemptInfo
from .queues import QueueSpec
from .records import AttemptOutcome, AttemptRecord, DueJob, ExpiredLease
from .store import Store, get_store
from .worker import follow_up

logger = logging.getLogger("celery_workflows.sweeper")

#: seconds between two passes of a worker's sweeper
DEFAULT_INTERVAL_SECONDS = 1.0
#: a queued, due job whose notice is older than this is published again (lost-message rescue)
DEFAULT_REPUBLISH_AFTER_SECONDS = 300.0
#: rows handled per pass and kind, so one pass stays short
BATCH_SIZE = 500
#: default of ``workflows_idle_run_grace``: how long a run may look idle (open, nothing
#: pending) before the backstop settles it - no correct write leaves one so, but it is only
#: settled well after anything that could still be writing it
DEFAULT_IDLE_RUN_GRACE_SECONDS = 10.0


def idle_run_grace(conf: Any) -> float:
    """``workflows_idle_run_grace`` (seconds > 0), validated."""
    value = conf.get("workflows_idle_run_grace")
    if value is None:
        return DEFAULT_IDLE_RUN_GRACE_SECONDS
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(
            f"workflows_idle_run_grace must be a number of seconds > 0, got {value!r}"
        )
    return float(value)


@dataclass(frozen=True)
class SweepReport:
    expired: int
    published: int
    #: runs the backstop settled: open with nothing pending (each means a bug; logged)
    settled_idle: int = 0


class Sweeper:
    """Runs passes over the queues this process declares."""

    def __init__(
        self,
        republish_after: float = DEFAULT_REPUBLISH_AFTER_SECONDS,
        idle_run_grace: float | None = None,
    ) -> None:
        self.republish_after = republish_after
        #: ``workflows_idle_run_grace``; None: read from the services' Celery app
        self.idle_run_grace = idle_run_grace

    def sweep(self, store: Store) -> SweepReport:
        """One pass over the queues this process declares (it knows their lifecycles)."""
        now = utcnow()
        known = registry.queues()
        names = sorted(known)
        expired = sum(
            settle_expired(store, lease) for lease in store.expire_leases(names, now, BATCH_SIZE)
        )
        self._stop_overdue(store, now)
        settled = self._settle_idle(store, now, self._idle_grace())
        stale_before = now - timedelta(seconds=self.republish_after)
        # a paused queue's jobs wait in the ledger until it is resumed; a capped queue's
        # unsent jobs wait for a slot, and are sent on as slots free
        running = running_queues(names, store)
        capped = [q for q in running if (limits := known[q].limits) is not None and limits.caps]
        due = store.due_jobs(running, now, stale_before, BATCH_SIZE, capped)
        published = 0
        for job in [d for d in due if d.published_at is None] + self._lost(due, known):
            if store.mark_published(job, now):
                known[job.queue].publish(job.dispatch)
                published += 1
        published += holding.release_all(store, [known[q] for q in capped], now)
        if expired:
            control.flush(store)  # what the expired leases counted (no timer thread here)
        return SweepReport(expired, published, settled)

    @staticmethod
    def _stop_overdue(store: Store, now: datetime) -> None:
        """Runs past their deadline are stopped (timeout event, compensation); approval
        gates past their expiry close with their timeout event. Each happens once."""
        for correlation_id in store.runs_past_deadline(now, BATCH_SIZE):
            owner = registry.services().get(store.get_workflow(correlation_id).name)
            event = owner.timeout_event if owner is not None else None
            if stop_workflow(correlation_id, "deadline exceeded", "deadline", event):
                logger.warning("workflow %s passed its deadline: stopped", correlation_id)
        for correlation_id in store.expired_gates(now, BATCH_SIZE):
            if expire_gate(correlation_id) is not None:
                logger.info("approval gate of workflow %s expired unanswered", correlation_id)
        report_ends(store, BATCH_SIZE)

    def _idle_grace(self) -> float:
        if self.idle_run_grace is None:
            owners = list(registry.services().values())
            conf = owners[0].celery_app.conf if owners else {}
            self.idle_run_grace = idle_run_grace(conf)
        return self.idle_run_grace

    @staticmethod
    def _settle_idle(store: Store, now: datetime, grace: float) -> int:
        """The backstop for a run left open with nothing pending (see
        :meth:`~celery_workflows.store.Maintenance.settle_idle_runs`): settled, logged,
        counted in ``celery_workflows.runs.settled_by_sweeper`` - it means a bug."""
        settled = store.settle_idle_runs(now, now - timedelta(seconds=grace), BATCH_SIZE)
        for correlation_id, status in settled:
            logger.warning(
                "workflow %s was left open with nothing pending (a bug; please report it): "
                "settled %s by the sweeper",
                correlation_id,
                status,
            )
            telemetry.count_settled_by_sweeper(status)
            signals.workflow_finished.send(
                sender="sweeper", correlation_id=correlation_id, status=str(status), last_job_id=""
            )
        return len(settled)

    @staticmethod
    def _lost(due: list[DueJob], known: dict[str, QueueSpec]) -> list[DueJob]:
        """Of the jobs whose notice went out long ago and was never claimed, the ones whose
        notice is really gone: a queue holding N messages may still hold N of those notices
        (behind a backlog), so only the oldest ``stale - N`` are sent again. Re-sending every
        stale job would grow the queue exactly when the workers are already behind."""
        stale: dict[str, list[DueJob]] = {}
        for job in due:
            if job.published_at is not None:
                stale.setdefault(job.queue, []).append(job)
        lost: list[DueJob] = []
        for queue, jobs in stale.items():
            depth = known[queue].broker_depth()
            lost += jobs if depth is None else jobs[: max(0, len(jobs) - depth)]
        return lost

    def safe_sweep(self) -> None:
        """One pass that never raises: a DB or broker outage is logged and retried next time."""
        try:
            self.sweep(get_store())
        except Exception:
            logger.exception("sweeper pass failed; it runs again at the next interval")


def sweep_once(
    republish_after: float = DEFAULT_REPUBLISH_AFTER_SECONDS, store: Store | None = None
) -> SweepReport:
    """One full pass (``manage.py workflows sweep``, cron): leases, due jobs, open runs."""
    return Sweeper(republish_after).sweep(store or get_store())


def settle_expired(store: Store, lease: ExpiredLease) -> bool:
    """Record an expired lease as a failed attempt, once; False if another sweeper did. A job
    written claimed by local continuation whose attempt never got as far as its outcome (the
    process died first - most likely right after the previous step's outcome) is not charged:
    it is queued for attempt 1 again."""
    if lease.attempt == 0:
        released = store.release_unstarted(lease)
        if released:
            logger.warning(
                "job %s (%s) was handed to %s by the step before it, which stopped before "
                "recording it: queued again, no attempt charged",
                lease.job_id,
                lease.queue,
                lease.worker,
            )
        return released
    spec = registry.get_queue(lease.queue)
    now = utcnow()
    record = AttemptRecord(
        attempt=lease.attempt,
        worker=lease.worker,
        started_at=lease.started_at or now,
        finished_at=now,
        outcome=AttemptOutcome.LEASE_EXPIRED,
        error=(
            f"lease expired: worker {lease.worker} stopped renewing it within "
            f"{spec.lifecycle.visibility_timeout:g}s (killed, crashed, hung or partitioned)"
        ),
    )
    outcome = after_failure(record, lease.max_attempts, spec.lifecycle.retry, seed=lease.job_id)
    recorded = store.settle_expired(lease, outcome, undo_planner(spec.service))
    if recorded is None:
        return False
    info = AttemptInfo(
        job_id=lease.job_id,
        queue=lease.queue,
        attempt=lease.attempt,
        max_attempts=lease.max_attempts,
        correlation_id=lease.correlation_id,
        trace_id="",
        started_at=record.started_at,
        worker=lease.worker,
        ran_here=False,
    )
    follow_up(store, spec, info, outcome, recorded, lease.priority, logger, in_sweeper=True)
    return True
