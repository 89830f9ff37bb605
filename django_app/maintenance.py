"""The sweeper's queries: expired leases and due jobs.

Every write here is conditional on what was read, so any number of sweepers (one per worker)
may run them at once and each row is handled once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import F, Q

from celery_workflows.records import (
    PENDING_JOB_STATUSES,
    DueJob,
    ExpiredLease,
    JobStatus,
    Outbox,
    Outcome,
    Recorded,
    RunStatus,
)
from celery_workflows.store import UndoPlanner

from .models import Job, WorkflowRun
from .outcomes import Attempted, lock_run, write_outcome
from .runcounters import RunDelta, change_run

logger = logging.getLogger("celery_workflows.sweeper")


class SweeperQueries:
    """:class:`celery_workflows.store.Maintenance` for the Django ledger."""

    def expire_leases(self, queues: list[str], now: datetime, limit: int) -> list[ExpiredLease]:
        rows = Job.objects.filter(
            status=JobStatus.RUNNING, lease_expires_at__lte=now, queue__in=queues
        )[:limit]
        return [
            ExpiredLease(
                job_id=row.id,
                queue=row.queue,
                attempt=row.attempts,
                max_attempts=row.max_attempts,
                lease_token=row.lease_token or "",
                worker=row.worker,
                started_at=row.started_at,
                priority=row.priority,
                correlation_id=row.correlation_id,
                compensates=row.compensates,
                gather_id=row.gather_id,
            )
            for row in rows.only(
                "id",
                "queue",
                "attempts",
                "max_attempts",
                "lease_token",
                "worker",
                "started_at",
                "priority",
                "correlation_id",
                "compensates",
                "gather_id",
            )
        ]

    def settle_expired(
        self, lease: ExpiredLease, outcome: Outcome, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        attempted = Attempted(
            lease.job_id,
            lease.correlation_id,
            lease.attempt,
            lease.lease_token,
            lease.compensates,
            held=False,
            gather_id=lease.gather_id,
        )
        return write_outcome(attempted, outcome, Outbox(), undo)

    def runs_past_deadline(self, now: datetime, limit: int) -> list[str]:
        return list(
            WorkflowRun.objects.filter(
                deadline_at__lte=now, finished_at__isnull=True, ended_by=""
            ).values_list("correlation_id", flat=True)[:limit]
        )

    def expired_gates(self, now: datetime, limit: int) -> list[str]:
        return list(
            WorkflowRun.objects.filter(
                status=RunStatus.WAITING, gate_expires_at__lte=now
            ).values_list("correlation_id", flat=True)[:limit]
        )

    def release_unstarted(self, lease: ExpiredLease) -> bool:
        return bool(
            Job.objects.filter(
                id=lease.job_id,
                status=JobStatus.RUNNING,
                lease_token=lease.lease_token,
                attempts=0,
            ).update(
                status=JobStatus.QUEUED,
                lease_token=None,
                lease_expires_at=None,
                worker="",
                started_at=None,
                published_at=None,
            )
        )

    def expire_held_by(self, worker: str, now: datetime) -> int:
        return Job.objects.filter(
            status=JobStatus.RUNNING, worker=worker, lease_expires_at__gt=now
        ).update(lease_expires_at=now)

    def settle_idle_runs(
        self, now: datetime, started_before: datetime, limit: int
    ) -> list[tuple[str, RunStatus]]:
        idle = WorkflowRun.objects.filter(
            status__in=[RunStatus.RUNNING, RunStatus.COMPENSATING],
            pending_jobs=0,
            started_at__lt=started_before,
        ).values_list("correlation_id", flat=True)[:limit]
        settled = []
        for correlation_id in idle:
            with transaction.atomic():
                run = lock_run(correlation_id)
                if run.status not in (RunStatus.RUNNING, RunStatus.COMPENSATING):
                    continue
                pending = Job.objects.filter(
                    correlation_id=correlation_id, status__in=PENDING_JOB_STATUSES
                ).count()
                if pending:
                    logger.error(
                        "run %s counted no pending job but has %d: counter corrected",
                        correlation_id,
                        pending,
                    )
                    WorkflowRun.objects.filter(correlation_id=correlation_id).update(
                        pending_jobs=pending
                    )
                    continue
                status = change_run(correlation_id, "", now, RunDelta())
            if status is not None:
                settled.append((correlation_id, status))
        return settled

    def due_jobs(
        self,
        queues: list[str],
        now: datetime,
        stale_before: datetime,
        limit: int,
        capped: Sequence[str] = (),
    ) -> list[DueJob]:
        unsent = Q(published_at__isnull=True)
        if capped:
            unsent &= ~Q(queue__in=capped)
        rows = (
            Job.objects.filter(status=JobStatus.QUEUED, available_at__lte=now, queue__in=queues)
            .filter(unsent | Q(published_at__lt=stale_before))
            .order_by(F("published_at").asc(nulls_first=True))
            .values_list("id", "queue", "attempts", "priority", "published_at")[:limit]
        )
        return [
            DueJob(job_id, queue, n + 1, priority, at) for job_id, queue, n, priority, at in rows
        ]

    def mark_published(self, due: DueJob, now: datetime) -> bool:
        # conditional on the value read, so two sweepers never both publish one job
        return bool(
            Job.objects.filter(
                id=due.job_id,
                status=JobStatus.QUEUED,
                attempts=due.attempt - 1,
                published_at=due.published_at,
            ).update(published_at=now)
        )
