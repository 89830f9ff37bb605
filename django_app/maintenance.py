"""The sweeper's queries: expired leases, due jobs and runs to settle.

Every write here is conditional on what was read, so any number of sweepers (one per worker)
may run them at once and each row is handled once.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from celery_workflows.records import (
    PENDING_JOB_STATUSES,
    DueJob,
    ExpiredLease,
    JobStatus,
    Outcome,
    Recorded,
    RunCursor,
    RunStatus,
)

from . import rows, sql
from .models import Job, WorkflowRun

#: runs that end by themselves when their last job ends (not ``waiting`` for a person)
SETTLEABLE = (RunStatus.RUNNING, RunStatus.COMPENSATING)


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
            )
        ]

    def settle_expired(self, lease: ExpiredLease, outcome: Outcome) -> Recorded | None:
        changes = rows.outcome_changes(outcome)
        assignments = ", ".join(f"{column} = %s" for column in changes)
        append = sql.dialect().json_append("attempt_log")
        now = timezone.now()
        with transaction.atomic():
            changed = sql.update(
                f"UPDATE {sql.JOB} SET {assignments}, lease_token = NULL, "
                f"lease_expires_at = NULL, attempt_log = {append} WHERE id = %s "
                f"AND status = '{JobStatus.RUNNING}' AND lease_token = %s",
                [
                    *changes.values(),
                    rows.js(outcome.attempt.to_json()),
                    lease.job_id,
                    lease.lease_token,
                ],
            )
            if not changed:
                return None
            settled = (
                sql.finish_run(lease.correlation_id, lease.job_id, now)
                if outcome.status == JobStatus.DEAD
                else None
            )
        return Recorded([], settled)

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

    def finish_workflow(self, correlation_id: str, last_job_id: str) -> RunStatus | None:
        return sql.finish_run(correlation_id, last_job_id, timezone.now())

    def idle_runs(self, after: RunCursor | None, limit: int) -> tuple[list[str], RunCursor | None]:
        runs = WorkflowRun.objects.filter(status__in=SETTLEABLE).order_by(
            "started_at", "correlation_id"
        )
        if after is not None:
            runs = runs.filter(
                Q(started_at__gt=after.started_at)
                | Q(started_at=after.started_at, correlation_id__gt=after.correlation_id)
            )
        page = list(runs.values_list("started_at", "correlation_id")[:limit])
        ids = [cid for _, cid in page]
        busy = set(
            Job.objects.filter(correlation_id__in=ids, status__in=PENDING_JOB_STATUSES)
            .values_list("correlation_id", flat=True)
            .distinct()
        )
        cursor = RunCursor(*page[-1]) if len(page) == limit else None
        return [cid for cid in ids if cid not in busy], cursor
