"""A service's definition version: what each new run records, so a run's page and
``manage.py check`` can say which definition it started with."""

from __future__ import annotations

import pytest

from celery_workflows import ConfigurationError, WorkflowService
from tests.proj.celery_app import app


def test_the_fingerprint_is_stable_and_changes_when_the_graph_does():
    svc = WorkflowService("fp", app)
    svc.queue_worker("a", emits=["aDone"])(lambda ctx, job: None)
    first = svc.version
    assert len(first) == 12 and svc.version == first
    svc.queue_worker("b")(lambda ctx, job: None)
    second = svc.version
    assert second != first
    svc.subscribe("aDone", enqueue="b")
    assert svc.version not in (first, second)
    assert svc.run_start("aDone", {}).version == svc.version


def test_an_explicit_version_is_used_as_given_and_checked():
    assert WorkflowService("fp_explicit", app, version="2026-11 checkout v2").version == (
        "2026-11 checkout v2"
    )
    with pytest.raises(ConfigurationError, match="version"):
        WorkflowService("fp_bad", app, version="")
