"""Operator actions on dead letters, each recorded in the audit trail with who did it."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils import timezone

from celery_workflows import deadletter

from .models import AuditEntry, Job


def _audit(job: Job, action: str, actor: str, **detail: Any) -> None:
    AuditEntry.objects.create(
        correlation_id=job.correlation_id,
        job_id=job.id,
        action=action,
        actor=actor,
        detail=detail,
        at=timezone.now(),
    )


def redrive(job: Job, actor: str, payload: Any = deadletter.KEEP_PAYLOAD) -> str:
    """Re-drive one dead letter (optionally with an edited payload); return the new job id."""
    with transaction.atomic():
        result = deadletter.redrive(job.id, payload=payload)
        detail: dict[str, Any] = {"new_job_id": result.job_id}
        if payload is not deadletter.KEEP_PAYLOAD:
            detail.update(payload_before=job.payload, payload_after=payload)
        _audit(job, "redrive", actor, **detail)
    return result.job_id


def discard(job: Job, actor: str) -> None:
    with transaction.atomic():
        deadletter.discard(job.id)
        _audit(job, "discard", actor, queue=job.queue, reason=job.dead_reason)
