"""What operators use: status command, JSON view, admin permissions, redrive, retention."""

from __future__ import annotations

import io
import json
import uuid
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from celery_workflows.testing import wait_for
from django_app.models import AuditEntry, Job, WorkflowRun
from tests.helpers import staff
from tests.proj.flows import shop
from tests.proj.workflows import t

pytestmark = [
    pytest.mark.worker,
    pytest.mark.usefixtures("transactional_db", "session_worker", "shop_workers"),
]


def finished(correlation_id: str, timeout: float = 20) -> WorkflowRun:
    return wait_for(
        lambda: (
            WorkflowRun.objects.filter(correlation_id=correlation_id)
            .exclude(status__in=["running", "compensating"])
            .first()
        ),
        timeout=timeout,
        message=f"run {correlation_id} did not finish",
    )


@pytest.fixture
def completed_run() -> WorkflowRun:
    order = f"o-{uuid.uuid4().hex[:6]}"
    return finished(shop.emit("orderPlaced", {"orderId": order}).correlation_id)


@pytest.fixture
def dead_run() -> WorkflowRun:
    return finished(t.enqueue("controls", {"action": "fail"}).correlation_id)


def status_output(*args: str) -> str:
    out = io.StringIO()
    call_command("workflows", "status", *args, stdout=out)
    return out.getvalue()


def test_status_command_prints_a_finished_run_found_by_its_business_key(completed_run):
    out = status_output(completed_run.business_key)
    assert f"workflow   shop {completed_run.correlation_id}" in out
    assert "status     completed" in out
    assert f"key        {completed_run.business_key}" in out
    assert "event  orderPlaced" in out
    assert "job    shop.confirm succeeded [#1 succeeded]" in out


def test_status_command_shows_why_a_run_was_dead_lettered(dead_run):
    out = status_output(dead_run.correlation_id)
    assert "status     dead_lettered" in out
    assert "job    t.controls dead [#1 fatal]" in out
    assert "customer closed the order" in out


def test_status_command_for_an_unknown_id_is_a_clear_error():
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="no workflow run has correlation id or business key"):
        status_output("nope")


def test_json_view_returns_finished_and_dead_lettered_runs(completed_run, dead_run):
    client = staff("viewer", "view_workflowrun")
    done = client.get(f"/workflows/runs/{completed_run.correlation_id}.json").json()
    assert done["status"] == "completed"
    assert done["current_step"] in {"shop.confirm", "shop.on_shipmentCreated_remember_shipment"}
    assert [h["name"] for h in done["history"] if h["kind"] == "event"][:2] == [
        "orderPlaced",
        "stockChecked",
    ]
    dead = client.get(f"/workflows/runs/{dead_run.correlation_id}.json").json()
    assert dead["status"] == "dead_lettered"
    (job,) = [h for h in dead["history"] if h["kind"] == "job"]
    assert job["status"] == "dead" and "Traceback" not in job["error"]
    assert client.get("/workflows/runs/nope.json").status_code == 404


def test_non_staff_users_see_nothing(completed_run):
    user = User.objects.create_user("customer", password="pw")
    client = Client()
    client.force_login(user)
    for url in (
        f"/workflows/runs/{completed_run.correlation_id}.json",
        f"/admin/celery_workflows/workflowrun/{completed_run.correlation_id}/change/",
    ):
        response = client.get(url)
        assert response.status_code == 302 and "/login/" in response["Location"]


def test_staff_without_the_apps_permissions_get_403(completed_run):
    client = staff("intern")
    assert (
        client.get(
            f"/admin/celery_workflows/workflowrun/{completed_run.correlation_id}/change/"
        ).status_code
        == 403
    )
    assert client.get(f"/workflows/runs/{completed_run.correlation_id}.json").status_code == 403


def test_staff_without_redrive_permission_get_no_button_and_403_on_post(dead_run):
    client = staff("auditor", "view_workflowrun", "view_deadletter")
    page = client.get(f"/admin/celery_workflows/workflowrun/{dead_run.correlation_id}/change/")
    assert page.status_code == 200
    assert b"cw-redrive" not in page.content and b"customer closed the order" in page.content
    job = Job.objects.get(correlation_id=dead_run.correlation_id)
    response = client.post(
        f"/admin/celery_workflows/deadletter/{job.id}/redrive/", {"payload": "{}"}
    )
    assert response.status_code == 403
    assert Job.objects.get(id=job.id).status == "dead"


def test_redrive_with_an_edited_payload_is_audited_and_runs(dead_run):
    client = staff("operator", "view_workflowrun", "view_deadletter", "redrive_job")
    job = Job.objects.get(correlation_id=dead_run.correlation_id)
    page = client.get(f"/admin/celery_workflows/workflowrun/{dead_run.correlation_id}/change/")
    assert b"cw-redrive" in page.content
    response = client.post(
        f"/admin/celery_workflows/deadletter/{job.id}/redrive/",
        {"payload": json.dumps({"action": "plain"})},
    )
    assert response.status_code == 302
    assert finished(dead_run.correlation_id).status == "completed"
    entry = AuditEntry.objects.get(job_id=job.id)
    assert entry.action == "redrive" and entry.actor == "operator"
    assert entry.detail["payload_before"] == {"action": "fail"}
    assert entry.detail["payload_after"] == {"action": "plain"}


def test_redrive_with_invalid_json_changes_nothing(dead_run):
    client = staff("clumsy", "view_workflowrun", "view_deadletter", "redrive_job")
    job = Job.objects.get(correlation_id=dead_run.correlation_id)
    client.post(f"/admin/celery_workflows/deadletter/{job.id}/redrive/", {"payload": "{oops"})
    assert Job.objects.get(id=job.id).status == "dead"
    assert not AuditEntry.objects.filter(job_id=job.id).exists()


def test_prune_deletes_old_finished_runs_in_batches_and_keeps_the_rest(completed_run, dead_run):
    WorkflowRun.objects.filter(correlation_id=completed_run.correlation_id).update(
        finished_at=timezone.now() - timedelta(days=40)
    )
    out = io.StringIO()
    call_command("workflows", "prune", "--days", "30", "--batch-size", "1", stdout=out)
    assert "pruned 1 finished run(s)" in out.getvalue()
    assert not WorkflowRun.objects.filter(correlation_id=completed_run.correlation_id).exists()
    assert not Job.objects.filter(correlation_id=completed_run.correlation_id).exists()
    assert WorkflowRun.objects.filter(correlation_id=dead_run.correlation_id).exists()
