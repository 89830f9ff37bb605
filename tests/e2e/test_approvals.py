"""Human approval gates: a run waits, a person decides once, the workflow goes on."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.core.management import CommandError, call_command
from django.test import Client

from celery_workflows import DecisionNotAllowedError, GateClosedError, decide, get_workflow
from celery_workflows.testing import wait_for
from django_app.models import AuditEntry, Job, WorkflowRun
from tests.helpers import staff
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db", "session_worker")]


def waiting_run(order_id: str) -> WorkflowRun:
    job = t.enqueue("needsApproval", {"orderId": order_id})
    return wait_for(
        lambda: (
            WorkflowRun.objects.filter(correlation_id=job.correlation_id, status="waiting")
            .filter(waiting_for__isnull=False)
            .first()
        ),
        timeout=15,
        message="run never started waiting",
    )


def settled(correlation_id: str) -> WorkflowRun:
    return wait_for(
        lambda: WorkflowRun.objects.filter(
            correlation_id=correlation_id, status="completed"
        ).first(),
        timeout=15,
        message="run never completed",
    )


def test_waiting_run_is_approved_in_the_admin_once_and_continues():
    run = waiting_run("o-big")
    wait_for(
        lambda: Job.objects.filter(correlation_id=run.correlation_id, status="succeeded").exists(),
        timeout=10,
    )
    time.sleep(0.5)  # asserting an absence: the step that asked did not settle the run
    assert get_workflow(run.correlation_id).status == "waiting"

    client = staff("manager", "view_workflowrun", "decide_workflowrun")
    url = f"/admin/celery_workflows/workflowrun/{run.correlation_id}/"
    page = client.get(f"{url}change/")
    assert b"Approve order o-big?" in page.content and b"cw-approve" in page.content
    assert client.post(f"{url}decide/", {"decision": "approve"}).status_code == 302
    assert client.post(f"{url}decide/", {"decision": "approve"}).status_code == 302  # double click

    settled(run.correlation_id)
    (fulfilled,) = Job.objects.filter(correlation_id=run.correlation_id, queue="t.fulfil")
    assert wait_for(lambda: Job.objects.get(id=fulfilled.id).result) == (
        "fulfilled o-big, approved by manager"
    )
    assert list(
        AuditEntry.objects.filter(correlation_id=run.correlation_id).values_list("action", "actor")
    ) == [("approve", "manager")]


def test_rejection_from_code_emits_the_reject_event():
    run = waiting_run("o-fraud")
    decide(run.correlation_id, approve=False, actor="fraud-bot", comment="card on blocklist")
    settled(run.correlation_id)
    refused = Job.objects.get(correlation_id=run.correlation_id, queue="t.refuse")
    assert wait_for(lambda: Job.objects.get(id=refused.id).result) == (
        "refused o-fraud: card on blocklist"
    )
    with pytest.raises(GateClosedError):
        decide(run.correlation_id, approve=True, actor="late-clicker")


def test_an_operator_approves_from_the_command_line_once(capsys):
    run = waiting_run("o-cli")
    call_command(
        "workflows", "decide", run.correlation_id, "--approve", "--actor", "ops-eve",
        "--comment", "checked by phone",
    )  # fmt: skip
    assert "approved" in capsys.readouterr().out
    settled(run.correlation_id)
    with pytest.raises(CommandError, match="not waiting"):
        call_command("workflows", "decide", run.correlation_id, "--reject")
    audit = AuditEntry.objects.filter(correlation_id=run.correlation_id)
    assert [(a.action, a.actor, a.detail["comment"]) for a in audit] == [
        ("approve", "ops-eve", "checked by phone")
    ]


def test_staff_without_the_decide_permission_get_no_buttons_and_403():
    run = waiting_run("o-locked")
    client = staff("viewer", "view_workflowrun")
    url = f"/admin/celery_workflows/workflowrun/{run.correlation_id}/"
    page = client.get(f"{url}change/")
    assert b"Approve order o-locked?" in page.content and b"cw-approve" not in page.content
    assert client.post(f"{url}decide/", {"decision": "approve"}).status_code == 403
    assert get_workflow(run.correlation_id).status == "waiting"


def test_an_approval_nobody_answers_expires_once_with_its_timeout_event(session_worker):
    job = t.enqueue("needsQuickApproval", {"orderId": "o-expiring"})
    run = wait_for(
        lambda: (r := get_workflow(job.correlation_id)).status == "completed" and r,
        timeout=20,
        message="the expired approval did not carry the run on",
    )
    events = [h.name for h in run.history if h.kind == "event"]
    assert events.count("approvalExpired") == 1
    (expiry,) = [a for a in run.audit if a.action == "expire"]
    assert expiry.actor == "system"
    refused = next(h for h in run.history if h.name == "t.refuse")
    assert refused.result == "refused o-expiring: no decision before the gate expired"
    with pytest.raises(GateClosedError):
        decide(job.correlation_id, approve=True, actor="late-manager")


def test_a_step_that_asks_and_then_dead_letters_opens_no_gate():
    job = t.enqueue("asksThenFails", {"orderId": "o-asks-fails"})
    run = wait_for(
        lambda: (r := get_workflow(job.correlation_id)).status != "running" and r, timeout=15
    )
    assert run.status == "dead_lettered" and run.waiting_for is None
    with pytest.raises(GateClosedError):
        decide(job.correlation_id, approve=True, actor="manager")
    assert not Job.objects.filter(correlation_id=job.correlation_id, queue="t.fulfil").exists()


def test_an_attempt_that_lost_its_lease_cannot_open_a_gate(recorder):
    from celery_workflows.testing import Faults

    job = t.enqueue("asksThenFails", {"orderId": "o-zombie-gate", "hold": 2})
    wait_for(lambda: recorder.runs(job.job_id), timeout=15)
    assert Faults().expire_lease(job.job_id)  # an operator ends the lease mid-handler
    wait_for(lambda: Job.objects.get(id=job.job_id).status == "dead", timeout=15)
    time.sleep(3)  # asserting an absence: the zombie has returned by now, and was fenced
    run = get_workflow(job.correlation_id)
    assert run.status == "dead_lettered" and run.waiting_for is None
    (attempt,) = Job.objects.get(id=job.job_id).attempt_log
    assert attempt["outcome"] == "lease_expired"


def manager_gate(order_id: str, **extra: object) -> WorkflowRun:
    job = t.enqueue("needsManager", {"orderId": order_id, **extra})
    return wait_for(
        lambda: WorkflowRun.objects.filter(
            correlation_id=job.correlation_id, status="waiting", waiting_for__isnull=False
        ).first(),
        timeout=15,
        message="run never started waiting",
    )


def member(username: str, group: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    for codename in ("view_workflowrun", "decide_workflowrun"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def logged_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_a_gate_for_managers_is_decided_by_a_manager_and_by_nobody_else(worker_env):
    """deciders=Deciders(groups=["managers"], ...): a clerk who holds the admin's decide
    permission sees no buttons, is refused in the admin, in code and on the command line; a
    manager decides, and the audit trail names the user."""
    from tests.helpers import manage

    run = manager_gate("o-managers")
    url = f"/admin/celery_workflows/workflowrun/{run.correlation_id}/"
    clerk, manager = member("clerk", ""), member("manager", "managers")

    page = logged_in(clerk).get(f"{url}change/").content.decode()
    assert "Decided by group managers or permission auth.change_group" in page
    assert "cw-approve" not in page and "You do not have permission to decide this one" in page
    assert logged_in(clerk).post(f"{url}decide/", {"decision": "approve"}).status_code == 403
    with pytest.raises(DecisionNotAllowedError, match="clerk may not decide it"):
        decide(run.correlation_id, approve=True, user=clerk)
    with pytest.raises(DecisionNotAllowedError, match="pass the deciding user"):
        decide(run.correlation_id, approve=True, actor="a-script")
    refused = manage(worker_env, "workflows", "decide", run.correlation_id, "--approve")
    assert refused.returncode == 1 and "pass the deciding user" in refused.stderr
    refused = manage(
        worker_env, "workflows", "decide", run.correlation_id, "--approve", "--user", "clerk"
    )
    assert refused.returncode == 1 and "clerk may not decide it" in refused.stderr
    assert get_workflow(run.correlation_id).status == "waiting"  # every refusal left it open

    page = logged_in(manager).get(f"{url}change/").content.decode()
    assert "cw-approve" in page
    assert logged_in(manager).post(f"{url}decide/", {"decision": "approve"}).status_code == 302
    settled(run.correlation_id)
    (entry,) = AuditEntry.objects.filter(correlation_id=run.correlation_id)
    assert (entry.action, entry.actor, entry.detail["user_id"]) == (
        "approve",
        "manager",
        str(manager.pk),
    )


def test_a_permission_or_a_check_on_the_user_may_name_the_deciders_too(worker_env):
    from tests.helpers import manage

    by_permission = manager_gate("o-perm")
    holder = member("group-admin", "")
    holder.user_permissions.add(Permission.objects.get(codename="change_group"))
    decide(by_permission.correlation_id, approve=False, comment="no", user=holder)

    on_call = manager_gate("o-on-call", onCall="nina")
    member("nina", "")
    decided = manage(
        worker_env, "workflows", "decide", on_call.correlation_id, "--approve", "--user", "nina"
    )
    assert decided.returncode == 0, decided.stderr
    settled(on_call.correlation_id)


def test_an_undecided_gate_escalates_to_directors_and_then_expires():
    """escalate_to=Deciders(groups=["directors"]) with expires_in: when the gate expires
    undecided it passes to the directors for as long again (audited), managers may no longer
    decide it; when that expires too, it expires for good."""
    run = manager_gate("o-escalates", escalateAfter=6)  # each stage's window, on a busy machine
    manager, director = member("mgr", "managers"), member("director", "directors")

    def escalated() -> bool:
        return AuditEntry.objects.filter(
            correlation_id=run.correlation_id, action="escalate"
        ).exists()

    wait_for(escalated, timeout=20, message="the gate never escalated")
    (entry,) = AuditEntry.objects.filter(correlation_id=run.correlation_id)
    assert (entry.actor, entry.detail["to"]) == ("system", "group directors")
    assert get_workflow(run.correlation_id).status == "waiting"
    with pytest.raises(DecisionNotAllowedError, match="decided by group directors"):
        decide(run.correlation_id, approve=True, user=manager)
    page = (
        logged_in(director)
        .get(f"/admin/celery_workflows/workflowrun/{run.correlation_id}/change/")
        .content.decode()
    )
    assert "cw-approve" in page
    # the escalation's time reads like the page's other times, not as a stored ISO string
    gate = get_workflow(run.correlation_id).waiting_for
    assert "(escalated " in page
    assert gate["escalated_at"] not in page and gate["expires_at"] not in page

    expired = wait_for(
        lambda: (r := get_workflow(run.correlation_id)).status == "completed" and r,
        timeout=20,
        message="the escalated gate never expired",
    )
    assert [a.action for a in sorted(expired.audit, key=lambda a: a.at)] == ["escalate", "expire"]
    assert [h.name for h in expired.history if h.kind == "event"].count("approvalExpired") == 1
    with pytest.raises(GateClosedError):
        decide(run.correlation_id, approve=True, user=director)
