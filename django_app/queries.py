"""Read models over the ledger: a workflow's status and history, in a fixed number of queries."""

from __future__ import annotations

from django.db.models import Q

from celery_workflows import joins
from celery_workflows.errors import WorkflowNotFoundError
from celery_workflows.records import (
    AuditRecord,
    HistoryEntry,
    RunStatus,
    WorkflowStatus,
)
from celery_workflows.status import current_step

from .models import AuditEntry, Event, Job, StateDocument, WorkflowRun

#: audit entries shown with a run (newest first)
AUDIT_LIMIT = 50


def find_run(id_or_business_key: str) -> WorkflowRun:
    run = (
        WorkflowRun.objects.filter(
            Q(correlation_id=id_or_business_key) | Q(business_key=id_or_business_key)
        )
        .order_by("-started_at")
        .first()
    )
    if run is None:
        raise WorkflowNotFoundError(
            f"no workflow run has correlation id or business key {id_or_business_key!r}"
        )
    return run


def history(correlation_id: str) -> list[HistoryEntry]:
    """Jobs and events of one workflow, oldest first (two indexed queries)."""
    entries = [
        HistoryEntry(
            kind="job",
            at=j.created_at,
            name=j.queue,
            id=j.id,
            status=j.status,
            attempts=list(j.attempt_log or []),
            payload=j.payload,
            result=j.result,
            error=j.dead_reason,
            caused_by=j.caused_by,
            compensates=j.compensates,
            progress=j.progress,
            branch=j.gather_index,
            joined=(j.idempotency_key or "").startswith(joins.KEY_PREFIX),
        )
        for j in Job.objects.filter(correlation_id=correlation_id).order_by("created_at")
    ]
    entries += [
        HistoryEntry(
            kind="event",
            at=e.emitted_at,
            name=e.name,
            id=e.id,
            status=e.source,
            payload=e.payload,
            caused_by=e.causation_id,
        )
        for e in Event.objects.filter(correlation_id=correlation_id).order_by("emitted_at")
    ]
    return sorted(entries, key=lambda h: (h.at, h.kind == "job"))


def workflow_status(run: WorkflowRun) -> WorkflowStatus:
    entries = history(run.correlation_id)
    audit = AuditEntry.objects.filter(correlation_id=run.correlation_id)[:AUDIT_LIMIT]
    return WorkflowStatus(
        correlation_id=run.correlation_id,
        name=run.name,
        business_key=run.business_key,
        status=run.status,
        current_step=current_step(entries),
        started_by=run.started_by,
        started_at=run.started_at,
        finished_at=run.finished_at,
        history=entries,
        states=dict(
            StateDocument.objects.filter(scope=run.correlation_id).values_list("key", "value")
        ),
        waiting_for=run.waiting_for if run.status == RunStatus.WAITING else None,
        audit=[AuditRecord(a.action, a.actor, a.at, a.job_id, dict(a.detail or {})) for a in audit],
        deadline_at=run.deadline_at,
        ended_by=run.ended_by,
        definition_version=run.definition_version,
        parent_id=run.parent_id,
        children=[
            {"correlation_id": c, "name": n, "status": s}
            for c, n, s in WorkflowRun.objects.filter(parent_id=run.correlation_id)
            .order_by("started_at")
            .values_list("correlation_id", "name", "status")
        ],
    )
