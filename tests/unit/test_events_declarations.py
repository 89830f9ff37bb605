"""Events and subscriptions: wrong input fails at the emit call or at start-up, naming it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from celery_workflows import PayloadNotSerializableError, PayloadValidationError, graph
from celery_workflows.events import new_event
from tests.proj.flows import shop


def test_emitting_a_payload_that_fails_the_event_schema_raises_at_the_emit_call():
    with pytest.raises(PayloadValidationError, match=r"(?s)orderPlaced.*orderId"):
        shop.emit("orderPlaced", {"inStock": True})


def test_emitting_a_payload_that_is_not_json_raises_at_the_emit_call():
    with pytest.raises(PayloadNotSerializableError, match="stockChecked"):
        new_event(
            "stockChecked",
            {"x": object()},
            source="t",
            correlation_id=None,
            causation_id=None,
            trace_id=None,
        )


def test_event_payload_is_stored_in_its_validated_form_with_defaults():
    event = new_event(
        "orderPlaced",
        {"orderId": "o-1"},
        source="t",
        correlation_id=None,
        causation_id=None,
        trace_id=None,
    )
    assert event.payload == {"orderId": "o-1", "inStock": True, "card": "ok"}
    assert event.trace_id == event.correlation_id


def test_the_graph_is_introspectable():
    g = graph.describe()
    assert {"orderPlaced", "stockChecked", "paymentProcessed", "shipmentCreated"} <= set(g.events)
    assert sorted(g.next_queues("shop.validate")) == [
        "shop.audit",
        "shop.charge",
        "shop.notifyBackorder",
    ]
    assert g.emitters_of("shipmentCreated") == ["shop.ship"]
    assert graph.problems() == []


def run_with_broken_graph(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WORKFLOWS_TEST_BROKEN_GRAPH": "1"}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_subscription_to_an_undeclared_queue_is_reported_naming_both():
    result = run_with_broken_graph(
        "import django; django.setup(); import tests.proj.celery_app;"
        "from celery_workflows import graph; graph.validate()"
    )
    assert result.returncode != 0
    assert "'broken' to event 'orderPlaced' enqueues 'shop.doesNotExist'" in result.stderr


def test_django_system_check_reports_the_broken_graph():
    result = run_with_broken_graph(
        "import django; django.setup(); import tests.proj.celery_app;"
        "from django.core.management import call_command; call_command('check')"
    )
    assert result.returncode != 0
    assert "celery_workflows.E001" in result.stderr
