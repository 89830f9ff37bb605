"""Workflow runs, their approval gates, and the state documents steps share."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from celery_workflows.records import RunStatus, StateValue, WorkflowStatus

from .models import AuditEntry, State, WorkflowRun
from .queries import find_run, workflow_status


class Runs:
    """:class:`celery_workflows.store.Runs` for the Django ledger."""

    def atomic(self) -> Any:
        return transaction.atomic()

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus:
        return workflow_status(find_run(id_or_business_key))

    def open_gate(self, correlation_id: str, gate: dict[str, Any]) -> None:
        WorkflowRun.objects.filter(correlation_id=correlation_id).update(
            status=RunStatus.WAITING, waiting_for=gate
        )

    def close_gate(
        self, correlation_id: str, actor: str, approved: bool, comment: str
    ) -> dict[str, Any] | None:
        run = (
            WorkflowRun.objects.select_for_update()
            .filter(correlation_id=correlation_id, status=RunStatus.WAITING)
            .first()
        )
        if run is None or not run.waiting_for:
            return None
        gate = dict(run.waiting_for)
        WorkflowRun.objects.filter(correlation_id=correlation_id).update(
            status=RunStatus.RUNNING, waiting_for=None
        )
        AuditEntry.record(
            correlation_id,
            gate.get("opened_by_job", ""),
            "approve" if approved else "reject",
            actor,
            prompt=gate.get("prompt", ""),
            comment=comment,
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
