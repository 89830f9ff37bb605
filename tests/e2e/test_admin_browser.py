"""The admin in real headless Chromium: log in, filter, open a run, re-drive, watch it finish."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Permission, User

from celery_workflows.testing import wait_for
from django_app.admin import short
from django_app.models import WorkflowRun
from tests.helpers import ARTIFACTS
from tests.proj.flows import shop
from tests.proj.workflows import t

pytestmark = [
    pytest.mark.worker,
    pytest.mark.usefixtures("transactional_db", "session_worker", "shop_workers"),
]


def settled(correlation_id: str) -> WorkflowRun:
    return wait_for(
        lambda: (
            WorkflowRun.objects.filter(correlation_id=correlation_id)
            .exclude(status__in=["running", "compensating"])
            .first()
        ),
        timeout=20,
    )


def test_operator_finds_a_dead_lettered_run_and_redrives_it_to_completion(live_server, browser):
    user = User.objects.create_user("ops", password="s3cret-pw", is_staff=True)
    for codename in ("view_workflowrun", "view_deadletter", "redrive_job", "view_job"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    ok = settled(shop.emit("orderPlaced", {"orderId": "o-browser"}).correlation_id)
    dead = settled(t.enqueue("controls", {"action": "fail"}).correlation_id)
    assert (ok.status, dead.status) == ("completed", "dead_lettered")

    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/celery_workflows/workflowrun/")
    page.fill("#id_username", "ops")
    page.fill("#id_password", "s3cret-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#result_list")

    page.click("#changelist-filter >> text=dead-lettered")
    page.wait_for_url("**status__exact=dead_lettered**")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 1
    assert short(dead.correlation_id) in rows.first.inner_text()
    rows.first.locator("a").first.click()

    page.wait_for_selector(".cw-timeline")
    assert page.locator(".cw-run").get_attribute("data-status") == "dead_lettered"
    assert page.locator(".cw-entry.cw-job[data-status=dead]").count() == 1
    node = page.locator('svg.cw-diagram g.cw-node[data-queue="t.controls"]')
    assert node.get_attribute("data-status") == "dead"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-run-dead-lettered.png"), full_page=True)

    page.click("text=open dead letter")
    page.wait_for_selector(".cw-redrive-form textarea")
    page.fill(".cw-redrive-form textarea", json.dumps({"action": "plain"}))
    page.click(".cw-redrive-form button.cw-redrive")
    page.wait_for_selector(".cw-run")
    assert "Re-drove as job" in page.inner_text(".messagelist")

    def completed() -> bool:
        page.reload()
        return page.locator(".cw-run").get_attribute("data-status") == "completed"

    wait_for(completed, timeout=20, interval=0.5, message="the run never completed")
    assert page.locator(".cw-entry.cw-job[data-status=succeeded]").count() == 1
    page.screenshot(path=str(ARTIFACTS / "admin-run-after-redrive.png"), full_page=True)
