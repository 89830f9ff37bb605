"""A workflow run is named and keyed when it starts, however it was started."""

from __future__ import annotations

import uuid

import pytest

from celery_workflows import emit, get_workflow
from tests.proj.flows import shop

pytestmark = pytest.mark.usefixtures("transactional_db")


def test_run_started_by_a_services_emit_is_found_by_its_business_key():
    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = shop.emit("orderPlaced", {"orderId": key, "inStock": False})
    run = get_workflow(key)
    assert run.correlation_id == placed.correlation_id
    assert (run.name, run.business_key, run.started_by) == ("shop", key, "orderPlaced")


def test_run_started_by_plain_emit_belongs_to_the_service_its_event_feeds():
    key = f"o-{uuid.uuid4().hex[:8]}"
    placed = emit("orderPlaced", {"orderId": key, "inStock": False})
    run = get_workflow(key)
    assert run.correlation_id == placed.correlation_id
    assert (run.name, run.business_key) == ("shop", key)
