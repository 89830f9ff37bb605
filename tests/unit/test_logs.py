"""How log lines made during an attempt say which workflow they belong to."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest

from celery_workflows import ConfigurationError
from celery_workflows.logs import (
    ContextFormatter,
    JsonFormatter,
    LogContext,
    attempt_context,
    install_record_factory,
    log_format,
)

CONTEXT = LogContext("wf1", "A-1001", "order.charge", "job1", 2)


def record(message: str, exc: bool = False) -> logging.LogRecord:
    install_record_factory()
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        info = sys.exc_info() if exc else None
    return logging.getLogger("shop").makeRecord("shop", logging.INFO, "f", 1, message, (), info)


def test_text_lines_get_the_attempts_fields_appended_before_any_traceback():
    formatter = ContextFormatter(logging.Formatter("%(levelname)s %(message)s"))
    with attempt_context(CONTEXT):
        line = formatter.format(record("charged", exc=True))
    first, _, rest = line.partition("\n")
    assert first == ("INFO charged [workflow=wf1 key=A-1001 queue=order.charge job=job1 attempt=2]")
    assert rest.startswith("Traceback") and "ValueError: boom" in rest


def test_records_carry_every_field_of_the_attempts_context():
    with attempt_context(CONTEXT):
        made = record("charged")
    assert {f.name: getattr(made, f.name) for f in dataclasses.fields(LogContext)} == (
        dataclasses.asdict(CONTEXT)
    )


def test_lines_outside_an_attempt_are_left_as_they_are():
    formatter = ContextFormatter(logging.Formatter("%(message)s"))
    assert formatter.format(record("idle")) == "idle"
    assert json.loads(JsonFormatter().format(record("idle")))["message"] == "idle"


def test_json_lines_carry_the_fields_as_keys():
    with attempt_context(CONTEXT):
        entry = json.loads(JsonFormatter().format(record("charged")))
    assert {k: entry[k] for k in ("workflow_id", "business_key", "job_id", "attempt")} == {
        "workflow_id": "wf1",
        "business_key": "A-1001",
        "job_id": "job1",
        "attempt": 2,
    }


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ConfigurationError, match="workflows_log_format"):
        log_format({"workflows_log_format": "xml"})
