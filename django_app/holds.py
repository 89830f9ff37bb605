"""The :class:`~celery_workflows.store.Controls` role: paused queues, failure streaks and the
per-minute figures of the dashboard."""

from __future__ import annotations

from django.db import IntegrityError, connection, transaction
from django.db.models import F

from celery_workflows.clock import utcnow
from celery_workflows.records import JobStatus
from celery_workflows.records import QueueControl as QueueControlRecord
from celery_workflows.records import QueueMinute as QueueMinuteRecord

from .models import AuditEntry, Job, QueueControl, QueueMinute


class QueueHolds:
    """:class:`celery_workflows.store.Controls` for the Django ledger."""

    def queue_controls(self) -> dict[str, QueueControlRecord]:
        return {
            row.queue: QueueControlRecord(
                row.queue, row.paused, row.paused_at, row.paused_by, row.reason, row.failures
            )
            for row in QueueControl.objects.all()
        }

    def set_paused(self, queue: str, paused: bool, actor: str, reason: str) -> bool:
        now = utcnow()
        with transaction.atomic():
            _ensure_row(queue)
            changes: dict[str, object] = {"paused": paused}
            if paused:
                changes.update(paused_at=now, paused_by=actor[:150], reason=reason[:200])
            else:
                changes.update(failures=0)
            changed = QueueControl.objects.filter(queue=queue, paused=not paused).update(**changes)
            if changed:
                action = "pause_queue" if paused else "resume_queue"
                AuditEntry.record("", "", action, actor, queue=queue, reason=reason[:200])
        return bool(changed)

    def count_failure(self, queue: str) -> int:
        with transaction.atomic():
            _ensure_row(queue)
            QueueControl.objects.filter(queue=queue).update(failures=F("failures") + 1)
            return int(QueueControl.objects.filter(queue=queue).values_list("failures")[0][0])

    def reset_failures(self, queue: str) -> None:
        # one indexed UPDATE that changes nothing unless a streak is on (queues with a
        # poison threshold only)
        QueueControl.objects.filter(queue=queue, failures__gt=0).update(failures=0)

    def park(self, job_id: str, attempt: int) -> bool:
        return bool(
            Job.objects.filter(id=job_id, status=JobStatus.QUEUED, attempts=attempt - 1).update(
                published_at=None
            )
        )

    def add_minutes(self, rows: list[QueueMinuteRecord]) -> None:
        with transaction.atomic():
            for row in rows:
                sums = {
                    "succeeded": F("succeeded") + row.succeeded,
                    "failed": F("failed") + row.failed,
                    "dead": F("dead") + row.dead,
                    "duration_ms": F("duration_ms") + row.duration_ms,
                }
                if QueueMinute.objects.filter(queue=row.queue, minute=row.minute).update(**sums):
                    continue
                try:
                    with transaction.atomic():
                        QueueMinute.objects.create(
                            queue=row.queue,
                            minute=row.minute,
                            succeeded=row.succeeded,
                            failed=row.failed,
                            dead=row.dead,
                            duration_ms=row.duration_ms,
                        )
                except IntegrityError:  # another process created it meanwhile
                    QueueMinute.objects.filter(queue=row.queue, minute=row.minute).update(**sums)

    def release_connection(self) -> None:
        connection.close()


def _ensure_row(queue: str) -> None:
    try:
        with transaction.atomic():
            QueueControl.objects.get_or_create(queue=queue)
    except IntegrityError:
        pass  # created by a concurrent writer
