"""The Django ORM implementation of :class:`celery_workflows.store.JobStore`.

Each method is one short transaction on the project's default database. Fenced writes are
``UPDATE ... WHERE id = %s AND lease_token = %s AND lease_expires_at > now`` and report success
by their row count, so a worker whose lease has gone changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, close_old_connections, transaction
from django.db.models import Q as Where
from django.utils import timezone

from celery_workflows.errors import JobNotFoundError, NotDeadLetteredError
from celery_workflows.events import Event
from celery_workflows.store import (
    AttemptRecord,
    ClaimedJob,
    Dispatch,
    EnqueueResult,
    ExpiredLease,
    JobRecord,
    JobStatus,
    NewJob,
    Outbox,
)

from . import hotpath
from .models import Job, WorkflowRun
from .run_store import RunStore

Q = JobStatus


class DjangoJobStore(RunStore):
    def on_commit(self, callback: Callable[[], None]) -> None:
        transaction.on_commit(callback)

    # -- enqueue ----------------------------------------------------------------------------

    def insert_job(self, job: NewJob) -> EnqueueResult:
        now = timezone.now()
        run = (
            None if job.starts is None else hotpath.run_values(job.correlation_id, job.starts, now)
        )
        if job.idempotency_key is None:
            hotpath.insert(_insert_values(job, now), run)
            return EnqueueResult(job.id, True, job.correlation_id)
        try:
            with transaction.atomic():
                hotpath.insert(_insert_values(job, now), run)
        except IntegrityError:
            existing = (
                Job.objects.filter(queue=job.queue, idempotency_key=job.idempotency_key)
                .values_list("id", "correlation_id")
                .first()
            )
            if existing is None:
                raise
            return EnqueueResult(existing[0], False, existing[1])
        return EnqueueResult(job.id, True, job.correlation_id)

    def mark_redriven(self, job_id: str, new_job: NewJob) -> EnqueueResult:
        with transaction.atomic():
            changed = Job.objects.filter(id=job_id, status=Q.DEAD).update(status=Q.REDRIVEN)
            if not changed:
                raise NotDeadLetteredError(f"job {job_id} is no longer dead-lettered")
            WorkflowRun.objects.filter(correlation_id=new_job.correlation_id).update(
                status=WorkflowRun.Status.RUNNING, finished_at=None
            )
            hotpath.insert(_insert_values(new_job, timezone.now()))
        return EnqueueResult(new_job.id, True, new_job.correlation_id)

    # -- attempts ---------------------------------------------------------------------------

    def claim(
        self, job_id: str, attempt: int, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None:
        now = timezone.now()
        expires = now + timedelta(seconds=lease_seconds)
        row = hotpath.claim(job_id, attempt, lease_token, worker, now, expires)
        if row is None:
            return None
        return ClaimedJob(
            id=job_id,
            attempt=attempt,
            lease_token=lease_token,
            lease_expires_at=expires,
            started_at=now,
            **row,
        )

    def extend_lease(self, job_id: str, lease_token: str, lease_seconds: float) -> datetime | None:
        now = timezone.now()
        expires = now + timedelta(seconds=lease_seconds)
        changes = {"lease_expires_at": hotpath.dt(expires)}
        return expires if hotpath.fenced_update(job_id, lease_token, now, changes) else None

    def complete(
        self, job: ClaimedJob, result: Any, attempt: AttemptRecord, outbox: Outbox
    ) -> list[NewJob] | None:
        return self._settle(
            job,
            attempt,
            outbox,
            status=Q.SUCCEEDED,
            result=hotpath.js(result),
            finished_at=hotpath.dt(attempt.finished_at),
        )

    def retry_later(
        self,
        job: ClaimedJob,
        attempt: AttemptRecord,
        available_at: datetime,
        published: bool,
        outbox: Outbox,
    ) -> list[NewJob] | None:
        return self._settle(
            job,
            attempt,
            outbox,
            status=Q.QUEUED,
            available_at=hotpath.dt(available_at),
            published_at=hotpath.dt(available_at if published else None),
        )

    def dead_letter(
        self, job: ClaimedJob, attempt: AttemptRecord, reason: str, outbox: Outbox
    ) -> list[NewJob] | None:
        return self._settle(
            job,
            attempt,
            outbox,
            status=Q.DEAD,
            dead_reason=reason,
            finished_at=hotpath.dt(attempt.finished_at),
        )

    def _settle(
        self, job: ClaimedJob, attempt: AttemptRecord, outbox: Outbox, **changes: Any
    ) -> list[NewJob] | None:
        """The one fenced write that ends an attempt: outcome, lease release, attempt log -
        and, in the same transaction, the events the attempt emitted and the jobs they start."""
        changes.update(
            lease_token=None,
            lease_expires_at=None,
            attempt_log=hotpath.js([*job.attempt_log, attempt.to_json()]),
        )
        now = timezone.now()
        if not outbox:
            return [] if hotpath.fenced_update(job.id, job.lease_token, now, changes) else None
        if hotpath.connection.vendor == "postgresql" and outbox.starts is None:
            created = hotpath.fenced_update_with_outbox(
                job.id,
                job.lease_token,
                now,
                changes,
                [_event_values(e) for e in outbox.events],
                [_insert_values(j, now) for j in outbox.jobs],
            )
            return None if created is None else [j for j in outbox.jobs if j.id in created]
        with transaction.atomic():
            if not hotpath.fenced_update(job.id, job.lease_token, now, changes):
                return None
            return self.write_outbox(outbox)

    def write_outbox(self, outbox: Outbox) -> list[NewJob]:
        with transaction.atomic(savepoint=False):
            if outbox.starts is not None:
                hotpath.insert_new(
                    hotpath.RUN_TABLE,
                    hotpath.RUN_COLUMNS,
                    [
                        hotpath.run_values(e.correlation_id, outbox.starts, timezone.now())
                        for e in outbox.events
                    ],
                    key="correlation_id",
                )
            hotpath.insert_new(
                hotpath.EVENT_TABLE,
                hotpath.EVENT_COLUMNS,
                [_event_values(e) for e in outbox.events],
            )
            now = timezone.now()
            created = hotpath.insert_new(
                hotpath.TABLE, hotpath.COLUMNS, [_insert_values(j, now) for j in outbox.jobs]
            )
        return [j for j in outbox.jobs if j.id in created]

    def record_unroutable(self, queue: str, body: Any, reason: str) -> str:
        import uuid

        now = timezone.now()
        service = queue.split(".", 1)[0]
        job = Job.objects.create(
            id=uuid.uuid4().hex,
            service=service,
            queue=queue,
            status=Q.DEAD,
            payload=body,
            max_attempts=1,
            attempts=1,
            correlation_id=uuid.uuid4().hex,
            available_at=now,
            finished_at=now,
            created_at=now,
            dead_reason=reason,
            attempt_log=[
                {
                    "attempt": 1,
                    "outcome": "invalid_payload",
                    "error": reason,
                    "started_at": now.isoformat(),
                    "finished_at": now.isoformat(),
                    "worker": "",
                    "traceback": "",
                    "duration_ms": 0,
                }
            ],
        )
        return str(job.id)

    # -- sweeper ----------------------------------------------------------------------------

    def expire_leases(self, queues: list[str], now: datetime, limit: int) -> list[ExpiredLease]:
        close_old_connections()
        rows = Job.objects.filter(
            status=Q.RUNNING, lease_expires_at__lte=now, queue__in=queues
        ).values_list(
            "id",
            "queue",
            "attempts",
            "max_attempts",
            "lease_token",
            "worker",
            "started_at",
            "priority",
            "correlation_id",
        )[:limit]
        return [ExpiredLease(*row) for row in rows]

    def settle_expired(
        self,
        lease: ExpiredLease,
        attempt: AttemptRecord,
        available_at: datetime | None,
        published: bool,
    ) -> bool:
        with transaction.atomic():
            row = (
                Job.objects.select_for_update()
                .filter(id=lease.job_id, status=Q.RUNNING, lease_token=lease.lease_token)
                .values_list("attempt_log", flat=True)
                .first()
            )
            if row is None:
                return False
            common: dict[str, Any] = {
                "lease_token": None,
                "lease_expires_at": None,
                "attempt_log": [*row, attempt.to_json()],
            }
            if available_at is None:
                fields = {
                    "status": Q.DEAD,
                    "finished_at": attempt.finished_at,
                    "dead_reason": attempt.error,
                }
            else:
                fields = {
                    "status": Q.QUEUED,
                    "available_at": available_at,
                    "published_at": available_at if published else None,
                }
            return bool(
                Job.objects.filter(id=lease.job_id, lease_token=lease.lease_token).update(
                    **common, **fields
                )
            )

    def take_due(
        self, queues: list[str], now: datetime, stale_before: datetime, limit: int
    ) -> list[Dispatch]:
        rows = list(
            Job.objects.filter(status=Q.QUEUED, available_at__lte=now, queue__in=queues)
            .filter(Where(published_at__isnull=True) | Where(published_at__lt=stale_before))
            .values_list("id", "queue", "attempts", "priority", "published_at")[:limit]
        )
        taken = []
        for job_id, queue, attempts, priority, published_at in rows:
            # conditional on the value we read, so two sweepers never both publish one job
            if Job.objects.filter(
                id=job_id, status=Q.QUEUED, attempts=attempts, published_at=published_at
            ).update(published_at=now):
                taken.append(Dispatch(job_id, queue, attempts + 1, priority))
        return taken

    # -- reading and operator actions -------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        try:
            return _record(Job.objects.get(id=job_id))
        except Job.DoesNotExist:
            raise JobNotFoundError(f"no job with id {job_id!r}") from None

    def list_dead_letters(self, queue: str | None, limit: int) -> list[JobRecord]:
        rows = Job.objects.filter(status=Q.DEAD)
        if queue is not None:
            rows = rows.filter(queue=queue)
        return [_record(row) for row in rows.order_by("-finished_at")[:limit]]

    def discard(self, job_id: str) -> None:
        if not Job.objects.filter(id=job_id, status=Q.DEAD).update(status=Q.DISCARDED):
            status = self.get_job(job_id).status
            raise NotDeadLetteredError(f"job {job_id} is {status}, not dead-lettered")

    def request_cancel(self, job_id: str) -> JobStatus:
        if Job.objects.filter(id=job_id, status=Q.QUEUED).update(
            status=Q.CANCELLED, finished_at=timezone.now(), cancel_requested=True
        ):
            correlation_id = self.get_job(job_id).correlation_id
            hotpath.finish_run(correlation_id, job_id, timezone.now())
            return Q.CANCELLED
        Job.objects.filter(id=job_id, status=Q.RUNNING).update(cancel_requested=True)
        return self.get_job(job_id).status

    def is_cancel_requested(self, job_id: str) -> bool:
        return bool(
            Job.objects.filter(id=job_id).values_list("cancel_requested", flat=True).first()
        )


def _insert_values(job: NewJob, now: datetime) -> dict[str, Any]:
    dt, js = hotpath.dt, hotpath.js
    return {
        "id": job.id,
        "service": job.service,
        "queue": job.queue,
        "status": Q.QUEUED.value,
        "payload": js(job.payload),
        "result": None,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "correlation_id": job.correlation_id,
        "idempotency_key": job.idempotency_key,
        "available_at": dt(job.available_at),
        "published_at": dt(job.available_at if job.published else None),
        "lease_token": None,
        "lease_expires_at": None,
        "worker": "",
        "started_at": None,
        "finished_at": None,
        "cancel_requested": False,
        "dead_reason": "",
        "attempt_log": js([]),
        "redriven_from_id": job.redriven_from,
        "caused_by": job.caused_by,
        "trace_id": job.trace_id,
        "created_at": dt(now),
    }


def _event_values(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "name": event.name,
        "payload": hotpath.js(event.payload),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "trace_id": event.trace_id,
        "source": event.source,
        "emitted_at": hotpath.dt(event.emitted_at),
        "deliveries": hotpath.js(event.deliveries),
    }


def _record(row: Job) -> JobRecord:
    return JobRecord(
        id=row.id,
        service=row.service,
        queue=row.queue,
        status=JobStatus(row.status),
        payload=row.payload,
        result=row.result,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        correlation_id=row.correlation_id,
        available_at=row.available_at,
        created_at=row.created_at,
        finished_at=row.finished_at,
        worker=row.worker,
        dead_reason=row.dead_reason,
        idempotency_key=row.idempotency_key,
        cancel_requested=row.cancel_requested,
        redriven_from=row.redriven_from_id,
        caused_by=row.caused_by,
        attempt_log=list(row.attempt_log or []),
    )
