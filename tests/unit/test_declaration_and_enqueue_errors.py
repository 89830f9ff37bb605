"""Configuration and payload mistakes fail at declaration or enqueue time, writing nothing."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from pydantic import BaseModel

from celery_workflows import (
    ConfigurationError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    PayloadValidationError,
    UnknownQueueError,
    WorkflowService,
    emit,
)
from tests.proj.celery_app import app
from tests.proj.workflows import t


def test_enqueue_to_an_undeclared_queue_names_it_and_lists_the_declared_ones():
    with pytest.raises(UnknownQueueError, match=r"'t.nope'.*t\.echo"):
        t.enqueue("nope", {})


def test_payload_that_is_not_json_is_refused_at_enqueue():
    with pytest.raises(PayloadNotSerializableError, match=r"t\.echo"):
        t.enqueue("echo", {"when": datetime.now()})
    with pytest.raises(PayloadNotSerializableError):
        t.enqueue("echo", {"x": float("nan")})


@pytest.mark.parametrize("text", ["nul \x00 inside", "lone surrogate \ud800"])
def test_payload_no_database_can_store_is_refused_at_enqueue_and_emit(text):
    with pytest.raises(PayloadNotSerializableError, match=r"t\.echo"):
        t.enqueue("echo", {"text": text})
    with pytest.raises(PayloadNotSerializableError, match="anEvent"):
        emit("anEvent", {"text": text})


@pytest.mark.parametrize("text", ["C:\\u0000dir", "\\\\u0000", "\\\\\\u0000"])
def test_a_backslash_before_u0000_is_text_not_a_nul(text):
    from celery_workflows.events import event_payload
    from celery_workflows.payloads import to_json

    assert "\x00" not in text
    assert to_json("queue t.echo", {"path": text}) == {"path": text}
    assert event_payload("anEvent", {"path": text}) == {"path": text}


def test_a_real_nul_after_backslashes_is_still_refused():
    from celery_workflows.payloads import to_json

    with pytest.raises(PayloadNotSerializableError, match="NUL"):
        to_json("queue t.echo", {"path": "C:\\\x00"})


def test_payload_larger_than_the_limit_is_refused_at_enqueue_and_emit_saying_so():
    big = {"blob": "x" * (1024 * 1024)}
    with pytest.raises(PayloadTooLargeError, match="workflows_max_payload_bytes=1048576"):
        t.enqueue("echo", big)
    with pytest.raises(PayloadTooLargeError, match="anEvent"):
        emit("anEvent", big)


def test_a_bad_payload_limit_is_refused_when_the_service_is_declared():
    from celery import Celery

    other = Celery("limits")
    other.conf.workflows_max_payload_bytes = "1MB"
    with pytest.raises(ConfigurationError, match="workflows_max_payload_bytes"):
        WorkflowService("limited", other)


def test_payload_that_fails_the_schema_is_refused_at_enqueue_naming_the_field():
    with pytest.raises(PayloadValidationError, match="qty"):
        t.enqueue("typed", {"orderId": "o-1", "qty": "many"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": 42}, "priority"),
        ({"priority": True}, "priority"),
        ({"delay": -1}, "delay"),
        ({"eta": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"delay": 1, "eta": datetime.now().astimezone() + timedelta(seconds=5)}, "not both"),
        ({"idempotency_key": ""}, "idempotency_key"),
    ],
)
def test_bad_enqueue_options_are_refused(options, message):
    with pytest.raises(ConfigurationError, match=message):
        t.enqueue("echo", {}, **options)


def test_declaring_a_queue_twice_fails():
    with pytest.raises(ConfigurationError, match=r"t\.echo is declared twice"):
        t.queue_worker("echo")(lambda ctx, job: None)


def test_payload_schema_must_be_a_pydantic_model():
    with pytest.raises(ConfigurationError, match="pydantic model"):
        t.queue_worker("badschema", payload=dict)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "has space", "9starts-with-digit", "dots.are.separators"])
def test_invalid_names_are_refused(name):
    with pytest.raises(ConfigurationError, match="invalid"):
        WorkflowService(name, app)


def test_a_pydantic_model_instance_is_accepted_as_payload():
    class Order(BaseModel):
        orderId: str
        qty: int

    assert t.queue("typed").validate_payload(Order(orderId="o", qty=2)) == {
        "orderId": "o",
        "qty": 2,
    }
