"""Runs on your models (docs/models.md): ``link_runs`` joins a service's runs to a model's
instances by business key; the model's admin page lists an instance's runs to those who may
view runs, a run's page links back to its instance, and ``runs_for``, ``subject_of`` and the
``{% workflow_runs %}`` tag give the same to the project's code. The test project links
``Shipment`` to the runs of the service ``reusing`` (tests/proj/apps.py)."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.template import Context, Template
from django.test import RequestFactory
from django.urls import reverse

from celery_workflows import ConfigurationError, emit
from django_app.models import WorkflowRun
from django_app.subjects import link_runs, runs_for, subject_of
from tests.helpers import staff
from tests.proj.models import Shipment

pytestmark = pytest.mark.django_db


def start(order_id: str) -> WorkflowRun:
    correlation_id = emit("reusingPlaced", {"orderId": order_id}).correlation_id
    return WorkflowRun.objects.get(correlation_id=correlation_id)


def test_an_instances_runs_are_the_runs_of_its_business_key_and_each_run_knows_its_instance():
    mine, other = start("o-linked"), start("o-other")
    shipment = Shipment.objects.create(order_id="o-linked", attempt=1, queue="q")
    assert list(runs_for(shipment)) == [mine]
    assert list(runs_for(shipment, service="reusing")) == [mine]
    assert subject_of(mine) == shipment
    assert subject_of(other) is None  # no shipment has that key
    with pytest.raises(ConfigurationError, match="no runs are linked to Shipment for service"):
        runs_for(shipment, service="keyed")


def test_the_models_admin_page_lists_its_runs_to_those_who_may_view_runs():
    run = start("o-admin")
    shipment = Shipment.objects.create(order_id="o-admin", attempt=1, queue="q")
    page_url = reverse("admin:testproj_shipment_change", args=[shipment.pk])

    both = staff("both", "view_shipment", "view_workflowrun")
    page = both.get(page_url).content.decode()
    assert "Workflow runs" in page and 'class="cw-subject-run"' in page
    assert run.correlation_id[:12] in page and "reusing.hold" in page

    shipments_only = staff("shipments", "view_shipment")
    page = shipments_only.get(page_url).content.decode()
    assert "Workflow runs are shown to users who may view them" in page
    assert run.correlation_id[:12] not in page

    run_url = reverse("admin:celery_workflows_workflowrun_change", args=[run.correlation_id])
    page = both.get(run_url).content.decode()
    assert "Belongs to" in page and page_url in page
    runs_only = staff("runs", "view_workflowrun")  # may not see shipments: no link to one
    assert "Belongs to" not in runs_only.get(run_url).content.decode()


def test_the_template_tag_shows_the_same_list_on_the_projects_own_pages():
    run = start("o-tag")
    shipment = Shipment.objects.create(order_id="o-tag", attempt=1, queue="q")
    request = RequestFactory().get("/")
    template = Template("{% load workflows %}{% workflow_runs shipment %}")

    request.user = User.objects.create_superuser("boss", password="pw")
    html = template.render(Context({"shipment": shipment, "request": request}))
    assert run.correlation_id[:12] in html and "reusing.hold" in html

    request.user = User.objects.create_user("customer", password="pw")
    html = template.render(Context({"shipment": shipment, "request": request}))
    assert run.correlation_id[:12] not in html


def test_link_runs_refuses_what_cannot_be_a_link():
    with pytest.raises(ConfigurationError, match="is not a Django model class"):
        link_runs(dict, service="reusing")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="has no field 'number'"):
        link_runs(Shipment, service="reusing", key="number")
    with pytest.raises(ConfigurationError, match=r"already belong to Shipment\.order_id"):
        link_runs(User, service="reusing", key="username")
    assert link_runs(Shipment, service="reusing", key="order_id")  # the same again is fine
