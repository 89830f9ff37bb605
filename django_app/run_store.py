"""The run-level half of the Django store: workflow runs, approval gates, state documents."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from celery_workflows.states import StateValue
from celery_workflows.status import WorkflowStatus

from . import hotpath
from .models import AuditEntry, Job, State, WorkflowRun
from .models import Event as EventRow


class RunStore:
    def finish_workflow(self, correlation_id: str, last_job_id: str) -> str | None:
        return hotpath.finish_run(correlation_id, last_job_id, timezone.now())

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus:
        from .queries import find_run, workflow_status

        return workflow_status(find_run(id_or_business_key))

    def prune_finished(self, finished_before: datetime, batch_size: int) -> int:
        finished = WorkflowRun.objects.exclude(
            status__in=[
                WorkflowRun.Status.RUNNING,
                WorkflowRun.Status.WAITING,
                WorkflowRun.Status.COMPENSATING,
            ]
        ).filter(finished_at__lt=finished_before)
        total = 0
        while True:
            with transaction.atomic():
                batch = list(finished.values_list("correlation_id", flat=True)[:batch_size])
                if not batch:
                    return total
                Job.objects.filter(correlation_id__in=batch).delete()
                EventRow.objects.filter(correlation_id__in=batch).delete()
                State.objects.filter(correlation_id__in=batch).delete()
                WorkflowRun.objects.filter(correlation_id__in=batch).delete()
            total += len(batch)

    def atomic(self) -> Any:
        return transaction.atomic()

    def open_gate(self, correlation_id: str, gate: dict[str, Any]) -> None:
        WorkflowRun.objects.filter(correlation_id=correlation_id).update(
            status=WorkflowRun.Status.WAITING, waiting_for=gate
        )

    def close_gate(self, correlation_id: str, actor: str, approved: bool) -> dict[str, Any] | None:
        run = (
            WorkflowRun.objects.select_for_update()
            .filter(correlation_id=correlation_id, status=WorkflowRun.Status.WAITING)
            .first()
        )
        if run is None or not run.waiting_for:
            return None
        gate = dict(run.waiting_for)
        WorkflowRun.objects.filter(correlation_id=correlation_id).update(
            status=WorkflowRun.Status.RUNNING, waiting_for=None
        )
        AuditEntry.objects.create(
            correlation_id=correlation_id,
            job_id=gate.get("opened_by_job", ""),
            action="approve" if approved else "reject",
            actor=actor,
            detail={"prompt": gate.get("prompt", "")},
            at=timezone.now(),
        )
        return gate

    def get_state(self, key: str) -> StateValue | None:
        row = State.objects.filter(key=key).values_list("value", "version").first()
        return None if row is None else StateValue(row[0], row[1])

    def put_state(
        self, key: str, value: Any, expected_version: int | None, correlation_id: str | None
    ) -> int | None:
        fields = {"value": value, "updated_at": timezone.now()}
        if correlation_id:
            fields["correlation_id"] = correlation_id
        while True:
            with transaction.atomic():
                rows = State.objects.filter(key=key)
                if expected_version is not None:
                    rows = rows.filter(version=expected_version)
                if expected_version != 0 and rows.update(version=F("version") + 1, **fields):
                    # the UPDATE holds the row lock until commit: this read sees our version
                    return State.objects.filter(key=key).values_list("version", flat=True).get()
                if expected_version not in (None, 0):
                    return None
                try:
                    with transaction.atomic():
                        State.objects.create(key=key, version=1, **fields)
                    return 1
                except IntegrityError:
                    if expected_version == 0:
                        return None
                    # another writer created it first: overwrite on the next pass
