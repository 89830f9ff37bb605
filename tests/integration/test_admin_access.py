"""The admin opens every run whatever its correlation id holds, tells no outsider which ids
exist, and answers only the lookups its own filters use (a viewer's crafted pattern is refused
before it reaches the database). No worker: these are the web side's rules."""

from __future__ import annotations

import json

import pytest
from django.contrib.admin.utils import quote
from django.test import Client
from django.urls import reverse

from celery_workflows import emit
from django_app.models import WorkflowRun
from tests.helpers import staff

pytestmark = pytest.mark.django_db  # no worker, no thread: one transaction per test

#: any string emit(correlation_id=...) accepts: the admin's own quoting must carry it
ODD_IDS = ["order_7/ret urn", "a_b", "x/y", "50%_off"]


def run_page(client: Client, correlation_id: str, action: str = "change") -> str:
    """The page's URL as the admin writes it: the id quoted (``_`` and ``/`` escaped)."""
    return reverse(f"admin:celery_workflows_workflowrun_{action}", args=[quote(correlation_id)])


@pytest.mark.parametrize("correlation_id", ODD_IDS)
def test_a_run_with_any_correlation_id_opens_from_the_list_and_its_page(correlation_id):
    emit("propStarted", {"key": "k"}, correlation_id=correlation_id, delay=3600)
    client = staff("viewer", "view_workflowrun", "cancel_workflowrun")
    listing = client.get("/admin/celery_workflows/workflowrun/").content.decode()
    assert run_page(client, correlation_id) in listing  # the list links the quoted id
    page = client.get(run_page(client, correlation_id))
    assert page.status_code == 200
    assert correlation_id.replace("&", "&amp;") in page.content.decode()
    # its own forms post to routes that find it again
    cancelled = client.post(run_page(client, correlation_id, "cancel"))
    assert cancelled.status_code == 302 and cancelled["Location"].endswith(
        run_page(client, correlation_id)
    )
    assert WorkflowRun.objects.get(correlation_id=correlation_id).ended_by


def test_a_user_without_the_view_permission_cannot_tell_which_runs_exist():
    emit("propStarted", {"key": "k"}, correlation_id="exists", delay=3600)
    outsider = staff("outsider")  # staff, no permission of this app
    for correlation_id in ("exists", "does-not-exist"):
        assert outsider.get(run_page(outsider, correlation_id)).status_code == 403


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("?status__exact=running", 200),
        ("?started_at__gte=2026-01-01+00:00:00%2B00:00", 200),
        ("?business_key__regex=^(a%2B)%2B$", 400),
        ("?business_key__icontains=a", 400),
        ("?name__startswith=p", 400),
    ],
)
def test_a_list_answers_only_the_lookups_of_its_own_filters(query, status):
    viewer = staff("lister", "view_workflowrun")
    assert viewer.get(f"/admin/celery_workflows/workflowrun/{query}").status_code == status


def test_a_huge_payload_is_shown_as_a_preview_and_kept_by_the_forms(admin_client):
    """A payload near the 1 MiB limit made a 20 MB run page: the timeline shows its start and a
    link, and the rerun and re-drive forms send nothing back - which keeps the payload as
    stored."""
    from django.utils import timezone

    from django_app.models import Job
    from tests.proj.workflows import t

    big = {"blob": "x" * 1_000_000}
    job = t.enqueue("echo", big, delay=3600)  # waits in the ledger: no worker, no broker
    page = admin_client.get(run_page(admin_client, job.correlation_id))
    assert page.status_code == 200
    text = page.content.decode()
    assert len(text) < 100_000
    assert "the first 4096 characters of 977 KB" in text
    assert reverse("admin:celery_workflows_job_change", args=[job.job_id]) in text

    # dead-lettered, its run over: the page offers the rerun and the re-drive
    Job.objects.filter(id=job.job_id).update(status="dead", dead_reason="the test killed it")
    WorkflowRun.objects.filter(correlation_id=job.correlation_id).update(
        status="dead_lettered", finished_at=timezone.now(), pending_jobs=0, dead_jobs=1
    )
    text = admin_client.get(run_page(admin_client, job.correlation_id)).content.decode()
    assert len(text) < 100_000
    assert "too large to edit here: leave this empty to keep it" in text
    redrive = reverse("admin:celery_workflows_deadletter_redrive", args=[job.job_id])
    assert admin_client.post(redrive, {"payload": ""}).status_code == 302
    again = Job.objects.get(redriven_from=job.job_id)
    assert again.payload == big


def test_a_run_shows_its_data_only_to_those_who_may_see_it_in_the_lists():
    """view_workflowrun opens a run; its payloads, results and errors need view_job, its
    events' payloads view_event, its state view_statedocument, its audit view_auditentry - on
    the page and in the JSON view alike, as in the admin's own lists of those."""
    from celery_workflows import cancel_workflow

    secret = "card-4242-4242"
    run = emit("propStarted", {"key": "k-1", "card": secret}, delay=3600).correlation_id
    cancel_workflow(run, actor="ops", reason="test")  # one audit entry
    viewer = staff("viewer", "view_workflowrun")
    everything = staff(
        "auditor",
        "view_workflowrun",
        "view_job",
        "view_event",
        "view_statedocument",
        "view_auditentry",
    )
    json_url = reverse("celery_workflows:status-json", args=[run])

    page = viewer.get(run_page(viewer, run)).content.decode()
    assert secret not in page
    assert "Audit trail" not in page and "<h2>State</h2>" not in page
    assert "Not shown to you: the steps&#x27; payloads" in page
    document = viewer.get(json_url).json()
    assert secret not in json.dumps(document)
    assert document["audit"] == [] and len(document["withheld"]) == 4

    page = everything.get(run_page(everything, run)).content.decode()
    assert secret in page and "Audit trail" in page and "Not shown to you" not in page
    document = everything.get(json_url).json()
    assert secret in json.dumps(document)
    assert [a["action"] for a in document["audit"]] == ["stop"]
    assert document["withheld"] == []


def test_the_run_list_shows_how_long_each_run_took_or_has_been_open():
    from datetime import timedelta

    from django.utils import timezone

    finished = emit("propStarted", {"key": "done"}, delay=3600).correlation_id
    started = WorkflowRun.objects.get(correlation_id=finished).started_at
    WorkflowRun.objects.filter(correlation_id=finished).update(
        status="completed", finished_at=started + timedelta(minutes=3, seconds=10)
    )
    emit("propStarted", {"key": "open"}, delay=3600)
    listing = staff("lister", "view_workflowrun").get("/admin/celery_workflows/workflowrun/")
    text = listing.content.decode()
    assert '<th scope="col" class="column-duration">' in text
    local = timezone.localtime(started).strftime("%Y-%m-%d %H:%M:%S")  # compact: the list fits
    assert f'<td class="field-started nowrap">{local}</td>' in text or local in text
    assert '<td class="field-duration">3 min 10 s</td>' in text
    assert " ms so far</td>" in text or " s so far</td>" in text
