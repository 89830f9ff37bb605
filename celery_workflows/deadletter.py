"""The dead-letter queue: listing, re-driving and discarding jobs that gave up.

A job is dead-lettered after its last attempt, or at once for a non-retryable error, an invalid
payload or a message no worker could read. It keeps its payload, every attempt's error and
traceback, timestamps and worker. Re-driving creates a *fresh* job (new id, attempts reset,
linked to the old one through ``redriven_from``) and marks the old one ``redriven`` in the same
transaction, so one dead letter is re-driven at most once.
"""

from __future__ import annotations

from typing import Any

from . import registry
from .clock import utcnow
from .errors import NotDeadLetteredError
from .service import submit, validate_payload
from .store import EnqueueResult, JobRecord, JobStatus, get_store

#: sentinel: keep the dead job's payload when re-driving
KEEP_PAYLOAD: Any = object()


def list_dead_letters(queue: str | None = None, limit: int = 100) -> list[JobRecord]:
    """Dead-lettered jobs, newest first; ``queue`` is a ``service.queue`` name."""
    if queue is not None:
        registry.get_queue(queue)
    return get_store().list_dead_letters(queue, limit)


def redrive(job_id: str, payload: Any = KEEP_PAYLOAD) -> EnqueueResult:
    """Re-enqueue a dead-lettered job as a fresh job, optionally with a corrected payload.

    The new payload is validated against the queue's schema first; a bad one raises
    :class:`~celery_workflows.errors.PayloadValidationError` and changes nothing.
    """
    store = get_store()
    dead = store.get_job(job_id)
    if dead.status is not JobStatus.DEAD:
        raise NotDeadLetteredError(f"job {job_id} is {dead.status}, not dead-lettered")
    worker = registry.get_queue(dead.queue)
    body = validate_payload(worker, dead.payload if payload is KEEP_PAYLOAD else payload)
    return submit(
        worker,
        body,
        available_at=utcnow(),
        correlation_id=dead.correlation_id,
        redriven_from=dead.id,
    )


def discard(job_id: str) -> None:
    """Drop a dead letter from the DLQ for good (the row stays, marked ``discarded``)."""
    get_store().discard(job_id)
