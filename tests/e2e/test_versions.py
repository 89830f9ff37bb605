"""A deploy renamed a step and an event while runs of the older definition were in flight:
``manage.py check`` names the runs it would strand, and renaming in the ledger lets them
finish on a real worker under the new names."""

from __future__ import annotations

import uuid

import pytest
from django.core.checks import run_checks
from django.core.management import call_command

from celery_workflows import ConfigurationError, get_workflow, rename_queue
from celery_workflows.clock import utcnow
from celery_workflows.testing import wait_for_run
from django_app.models import AuditEntry, Job, WorkflowRun
from tests.helpers import started_by_the_old_deploy
from tests.proj.workflows import ver

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(scope="module")
def ver_worker(start_worker):
    return start_worker(["ver.checkStock", "ver.ship"], concurrency=1, name="ver")


def check_messages() -> str:
    """What ``manage.py check --deploy`` reports (as warnings; see test_deploy_checks)."""
    return "\n".join(
        f"{m.id} {m.msg} HINT: {m.hint}" for m in run_checks(include_deployment_checks=True)
    )


def test_new_runs_record_the_definition_version_they_started_with(ver_worker):
    ver.enqueue("checkStock", {"orderId": "v-now"})
    run = wait_for_run("v-now")
    assert run.status == "completed"
    assert run.definition_version == ver.version and len(ver.version) == 12
    assert WorkflowRun.objects.get(business_key="v-now").definition_version == ver.version


def test_check_names_runs_a_renamed_step_would_strand_and_rename_lets_them_finish(
    ver_worker, capsys
):
    for n in range(4):
        started_by_the_old_deploy(f"v-{n}")
    messages = check_messages()
    assert "celery_workflows.W004" in messages
    assert "4 run(s) in flight need 4 job(s) waiting or running on queue ver.validateStock" in (
        messages
    )
    assert "v-0, v-1, v-2, ..." in messages and "(definition v1)" in messages
    assert "manage.py workflows rename-queue ver.validateStock <new name>" in messages
    with pytest.raises(ConfigurationError):
        rename_queue("ver.validateStock", "ver.checkStok")  # a typo: not declared

    call_command("workflows", "rename-queue", "ver.validateStock", "ver.checkStock")
    assert "moved to ver.checkStock: 4 waiting job(s)" in capsys.readouterr().out
    runs = [wait_for_run(f"v-{n}") for n in range(4)]
    assert [r.status for r in runs] == ["completed"] * 4
    assert [h.name for h in runs[0].history if h.kind == "job"] == ["ver.checkStock", "ver.ship"]
    assert runs[0].definition_version == "v1"  # still the definition it started with
    assert [a.action for a in runs[0].audit] == ["rename_queue"]
    assert "W004" not in check_messages()


def test_a_dead_letter_on_a_removed_queue_is_reported_as_not_redrivable(ver_worker):
    dead = started_by_the_old_deploy("v-dead", queue="ver.oldAudit")
    Job.objects.filter(correlation_id=dead).update(status="dead", dead_reason="old failure")
    found = [
        m
        for m in run_checks(include_deployment_checks=True)
        if m.id.startswith("celery_workflows.")
    ]
    # a warning, not an error: nothing waits on the queue, but the dead letter is stuck
    assert [m.id for m in found] == ["celery_workflows.W003"]
    assert "ver.oldAudit" in found[0].msg and "cannot be re-driven" in found[0].msg
    assert "v-dead" in found[0].msg


def test_a_gate_waiting_to_emit_a_renamed_event_is_reported_and_repointed(ver_worker, capsys):
    correlation_id = uuid.uuid4().hex
    # the old deploy's review step opened a gate whose approval emits the event's old name
    WorkflowRun.objects.create(
        correlation_id=correlation_id,
        name="ver",
        business_key="v-gate",
        status="waiting",
        started_by="orderPlaced",
        started_at=utcnow(),
        definition_version="v1",
        waiting_for={
            "prompt": "Ship v-gate?",
            "approve_event": "orderApprovedV1",
            "reject_event": "verShipped",
            "opened_by_job": "",
        },
    )
    messages = check_messages()
    assert "celery_workflows.W005" in messages and "orderApprovedV1" in messages
    assert "v-gate" in messages
    call_command("workflows", "rename-event", "orderApprovedV1", "verOrderApproved")
    assert "1 open approval gate(s) now emit verOrderApproved" in capsys.readouterr().out
    assert "W005" not in check_messages()
    gate = get_workflow("v-gate").waiting_for
    assert gate is not None and gate["approve_event"] == "verOrderApproved"
    assert (
        AuditEntry.objects.filter(correlation_id=correlation_id, action="rename_event").count() == 1
    )
