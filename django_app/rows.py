"""How records become row values for the raw SQL in :mod:`.sql`, and how rows come back.

Values are adapted by Django's own database operations, so a JSON or datetime column gets what
the project's database expects.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.db.backends.base.operations import BaseDatabaseOperations
from django.utils.dateparse import parse_datetime

from celery_workflows.gathers import GatherStart
from celery_workflows.records import Event, JobStatus, NewJob, Outcome, RunStart, RunStatus


def dt(value: datetime | None, ops: BaseDatabaseOperations | None = None) -> Any:
    """``value`` as the database takes it (``ops``: the connection's operations, looked up
    once by a caller adapting many values)."""
    return (ops or connection.ops).adapt_datetimefield_value(value)


def js(value: Any, ops: BaseDatabaseOperations | None = None) -> Any:
    return (ops or connection.ops).adapt_json_value(value, None)


def from_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def from_dt(value: Any) -> datetime:
    if isinstance(value, str):
        value = parse_datetime(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def run_values(
    correlation_id: str, starts: RunStart, now: datetime, pending_jobs: int = 0
) -> dict[str, Any]:
    ops = connection.ops
    return {
        "correlation_id": correlation_id,
        "name": starts.name,
        "business_key": starts.business_key,
        "started_by": starts.started_by,
        "status": RunStatus.RUNNING.value,
        "started_at": dt(now, ops),
        "finished_at": None,
        "last_job_id": "",
        "waiting_for": None,
        "pending_jobs": pending_jobs,
        "dead_jobs": 0,
        "cancelled_jobs": 0,
        "compensation_jobs": 0,
        "failed_compensations": 0,
        "deadline_at": dt(starts.deadline_at, ops),
        "gate_expires_at": None,
        "ended_by": "",
        "definition_version": starts.version,
        "parent_id": starts.parent,
    }


def job_values(job: NewJob, now: datetime) -> dict[str, Any]:
    ops = connection.ops
    values = {
        "id": job.id,
        "service": job.service,
        "queue": job.queue,
        "status": JobStatus.QUEUED.value,
        "payload": js(job.payload, ops),
        "result": None,
        "attempts": 0,
        "max_attempts": job.max_attempts,
        "priority": job.priority,
        "correlation_id": job.correlation_id,
        "idempotency_key": job.idempotency_key,
        "available_at": dt(job.available_at, ops),
        "published_at": dt(job.available_at if job.published else None, ops),
        "lease_token": None,
        "lease_expires_at": None,
        "worker": "",
        "started_at": None,
        "finished_at": None,
        "cancel_requested": False,
        "dead_reason": "",
        "attempt_log": js([], ops),
        "redriven_from_id": job.redriven_from,
        "caused_by": job.caused_by,
        "trace_id": job.trace_id,
        "compensates": job.compensates,
        "limit_key": job.limit_key,
        "coalesce_key": job.coalesce_key,
        "gather_id": job.gather_id,
        "gather_index": job.gather_index,
        "progress": None,
        "created_at": dt(now, ops),
    }
    if job.lease is not None:
        # written claimed: attempt 1 runs next in the writing process; it counts from its
        # outcome on (attempts 0 until then), so a process that dies before it ran costs the
        # job no attempt (see celery_workflows.continuation)
        values.update(
            status=JobStatus.RUNNING.value,
            attempts=0,
            published_at=None,
            lease_token=job.lease.token,
            lease_expires_at=dt(job.lease.expires_at, ops),
            worker=job.lease.worker,
            started_at=dt(job.lease.started_at, ops),
        )
    return values


def gather_values(start: GatherStart, now: datetime) -> dict[str, Any]:
    ops = connection.ops
    return {
        "id": start.id,
        "correlation_id": start.correlation_id,
        "into_queue": start.into,
        "total": start.total,
        "succeeded": 0,
        "failed": 0,
        "on_failure": start.on_failure,
        "trace_id": start.trace_id,
        "priority": start.priority,
        "created_at": dt(now, ops),
    }


def event_values(event: Event) -> dict[str, Any]:
    ops = connection.ops
    return {
        "id": event.id,
        "name": event.name,
        "payload": js(event.payload, ops),
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "trace_id": event.trace_id,
        "source": event.source,
        "emitted_at": dt(event.emitted_at, ops),
        "deliveries": js(event.deliveries, ops),
    }


def outcome_changes(outcome: Outcome) -> dict[str, Any]:
    """Column changes of an outcome, besides the lease release and the attempt log."""
    ops = connection.ops
    changes: dict[str, Any] = {"status": outcome.status.value}
    if outcome.status == JobStatus.SUCCEEDED:
        changes.update(
            result=js(outcome.result, ops), finished_at=dt(outcome.attempt.finished_at, ops)
        )
    elif outcome.status == JobStatus.QUEUED:
        assert outcome.available_at is not None
        changes.update(
            available_at=dt(outcome.available_at, ops),
            published_at=dt(outcome.available_at if outcome.published else None, ops),
        )
    else:
        changes.update(dead_reason=outcome.reason, finished_at=dt(outcome.attempt.finished_at, ops))
    return changes
