"""The sweeper's queries: expired leases and due jobs.

Every write here is conditional on what was read, so any number of sweepers (one per worker)
may run them at once and each row is handled once.
"""

from __future__ import annotations

from datetime import datetime

from django.db.models import F, Q

from celery_workflows.records import (
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
from .outcomes import Attempted, write_outcome


class Maintenance:
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

    def due_jobs(
        self, queues: list[str], now: datetime, stale_before: datetime, limit: int
    ) -> list[DueJob]:
        rows = (
            Job.objects.filter(status=JobStatus.QUEUED, available_at__lte=now, queue__in=queues)
            .filter(Q(published_at__isnull=True) | Q(published_at__lt=stale_before))
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
