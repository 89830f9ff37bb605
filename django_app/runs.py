"""Workflow runs, their approval gates, and the state documents steps share."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, Q

from celery_workflows.approvals import Deciders, escalated, next_gate
from celery_workflows.clock import utcnow
from celery_workflows.records import (
    OPEN_RUN_STATUSES,
    RunEnd,
    RunStatus,
    StateValue,
    WorkflowStatus,
)

from .models import AuditEntry, Job, ScheduleFire, StateDocument, WorkflowRun
from .outcomes import arrived
from .queries import find_run, workflow_status
from .statements import JOB, RUN, dialect, execute

#: the open statuses, as SQL
OPEN = ", ".join(f"'{s}'" for s in OPEN_RUN_STATUSES)


class RunRecords:
    """:class:`celery_workflows.store.Runs` for the Django ledger."""

    def atomic(self) -> Any:
        return transaction.atomic()

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus:
        return workflow_status(find_run(id_or_business_key))

    def open_run_for_key(self, name: str, business_key: str) -> tuple[str, str] | None:
        d = dialect()
        lock = d.name_lock()
        if lock is not None:
            execute(lock, [f"celery_workflows:run:{name}:{business_key}"])
        rows = execute(
            f"SELECT r.correlation_id, (SELECT j.id FROM {JOB} j "
            "WHERE j.correlation_id = r.correlation_id ORDER BY j.created_at LIMIT 1) "
            f"FROM {RUN} r WHERE r.name = %s AND r.business_key = %s "
            f"AND r.status IN ({OPEN}) ORDER BY r.started_at DESC LIMIT 1{d.lock_rows}",
            [name, business_key],
        )
        return (rows[0][0], rows[0][1] or "") if rows else None

    def run_trace(self, correlation_id: str) -> str:
        newest = (
            Job.objects.filter(correlation_id=correlation_id, trace_id__startswith="00-")
            .order_by("-created_at")
            .values_list("trace_id", flat=True)
            .first()
        )
        return newest or ""

    def run_end(self, correlation_id: str) -> RunEnd | None:
        run = (
            WorkflowRun.objects.filter(correlation_id=correlation_id, parent_id__isnull=False)
            .only("parent_id", "status", "last_job_id", "ended_by")
            .first()
        )
        if run is None or not RunStatus(run.status).is_final or not run.parent_id:
            return None
        last = Job.objects.filter(id=run.last_job_id).values_list("result", flat=True).first()
        error = run.ended_by
        if run.status != RunStatus.COMPLETED and not error:
            error = (
                Job.objects.filter(correlation_id=correlation_id, status="dead")
                .order_by("finished_at")
                .values_list("dead_reason", flat=True)
                .first()
            ) or ""
        return RunEnd(run.parent_id, RunStatus(run.status), last, error)

    def ended_children(self, limit: int) -> list[str]:
        waiting = WorkflowRun.objects.filter(status=RunStatus.WAITING).values("correlation_id")
        return list(
            WorkflowRun.objects.filter(parent_id__in=waiting, finished_at__isnull=False)
            .order_by("finished_at")
            .values_list("correlation_id", flat=True)[:limit]
        )

    def open_children(self, correlation_id: str) -> list[str]:
        return list(
            WorkflowRun.objects.filter(
                parent_id=correlation_id, status__in=list(OPEN_RUN_STATUSES), ended_by=""
            ).values_list("correlation_id", flat=True)
        )

    def orphaned_children(self, limit: int) -> list[tuple[str, str]]:
        stopping = WorkflowRun.objects.filter(
            Q(status=RunStatus.COMPENSATING) | ~Q(ended_by="") | Q(finished_at__isnull=False)
        ).exclude(status=RunStatus.COMPLETED)
        rows = WorkflowRun.objects.filter(
            parent_id__in=stopping.values("correlation_id"),
            status__in=list(OPEN_RUN_STATUSES),
            ended_by="",
        ).values_list("correlation_id", "parent_id")[:limit]
        return [(child, parent or "") for child, parent in rows]

    def close_gate(
        self,
        correlation_id: str,
        actor: str,
        action: str,
        comment: str,
        expired: bool = False,
        awaits: str = "",
        user_id: str = "",
    ) -> dict[str, Any] | None:
        runs = WorkflowRun.objects.select_for_update().filter(
            correlation_id=correlation_id, status=RunStatus.WAITING
        )
        if expired:
            runs = runs.filter(gate_expires_at__lte=utcnow())
        run = runs.first()
        if run is None or not run.waiting_for:
            return None
        if not expired and (run.waiting_for.get("awaits") or "") != awaits:
            return None
        gate, following = next_gate(dict(run.waiting_for))
        while following is not None and arrived(correlation_id, following):
            following = next_gate(following)[1]  # answered already: it need not open
        if following is None:
            WorkflowRun.objects.filter(correlation_id=correlation_id).update(
                status=RunStatus.RUNNING, waiting_for=None, gate_expires_at=None
            )
        else:  # the next gate a branch asked for opens
            expires = following.get("expires_at")
            WorkflowRun.objects.filter(correlation_id=correlation_id).update(
                waiting_for=following,
                gate_expires_at=datetime.fromisoformat(expires) if expires else None,
            )
        who = {"user_id": user_id} if user_id else {}
        AuditEntry.record(
            correlation_id,
            gate.get("opened_by_job", ""),
            action,
            actor,
            prompt=gate.get("prompt", ""),
            comment=comment,
            **who,
        )
        return gate

    def escalate_gate(self, correlation_id: str, now: datetime) -> dict[str, Any] | None:
        with transaction.atomic():
            run = (
                WorkflowRun.objects.select_for_update()
                .filter(
                    correlation_id=correlation_id,
                    status=RunStatus.WAITING,
                    gate_expires_at__lte=now,
                )
                .first()
            )
            if run is None or not run.waiting_for:
                return None
            gate = escalated(dict(run.waiting_for), now)
            if gate is None:
                return None
            WorkflowRun.objects.filter(correlation_id=correlation_id).update(
                waiting_for=gate, gate_expires_at=datetime.fromisoformat(gate["expires_at"])
            )
            AuditEntry.record(
                correlation_id,
                gate.get("opened_by_job", ""),
                "escalate",
                "system",
                prompt=gate.get("prompt", ""),
                to=Deciders.from_json(gate["deciders"]).describe(),
            )
            return gate

    def run_status(self, correlation_id: str) -> RunStatus | None:
        status = (
            WorkflowRun.objects.filter(correlation_id=correlation_id)
            .values_list("status", flat=True)
            .first()
        )
        return None if status is None else RunStatus(status)

    def record_fire(
        self, schedule: str, slot: datetime, outcome: str, reason: str, correlation_id: str
    ) -> bool:
        try:
            with transaction.atomic():
                ScheduleFire.objects.create(
                    schedule=schedule,
                    slot=slot,
                    fired_at=utcnow(),
                    outcome=outcome,
                    reason=reason[:200],
                    correlation_id=correlation_id,
                )
        except IntegrityError:
            return False
        return True

    def last_fire(self, schedule: str, started: bool = False) -> tuple[datetime, str, str] | None:
        fires = ScheduleFire.objects.filter(schedule=schedule)
        if started:
            fires = fires.filter(
                outcome__in=[ScheduleFire.Outcome.STARTED, ScheduleFire.Outcome.REPLACED]
            )
        row = fires.order_by("-slot").values_list("slot", "outcome", "correlation_id").first()
        return None if row is None else (row[0], row[1], row[2])

    def get_state(self, scope: str, key: str) -> StateValue | None:
        row = (
            StateDocument.objects.filter(scope=scope, key=key)
            .values_list("value", "version")
            .first()
        )
        return None if row is None else StateValue(row[0], row[1])

    def put_state(
        self,
        scope: str,
        key: str,
        value: Any,
        expected_version: int | None,
        writer: str | None,
    ) -> int | None:
        fields = {"value": value, "updated_at": utcnow()}
        if writer:
            fields["written_by"] = writer
        documents = StateDocument.objects.filter(scope=scope, key=key)
        while True:
            with transaction.atomic():
                rows = documents
                if expected_version is not None:
                    rows = rows.filter(version=expected_version)
                if expected_version != 0 and rows.update(version=F("version") + 1, **fields):
                    # the UPDATE holds the row lock until commit: this read sees our version
                    return documents.values_list("version", flat=True).get()
                if expected_version not in (None, 0):
                    return None
                try:
                    with transaction.atomic():
                        StateDocument.objects.create(scope=scope, key=key, version=1, **fields)
                    return 1
                except IntegrityError:
                    if expected_version == 0:
                        return None
                    # another writer created it first: overwrite on the next pass
