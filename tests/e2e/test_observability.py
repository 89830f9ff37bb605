"""Every step traced, measured and logged: log lines that name their workflow, on real
workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from celery_workflows import get_workflow
from celery_workflows.testing import wait_for
from tests.proj.workflows import obs

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]
QUEUES = [spec.qualified_name for spec in obs.queues.values()]


@pytest.fixture(scope="module")
def json_worker(start_worker):
    return start_worker(QUEUES, concurrency=2, name="obsjson", log_format="json")


def completed(key: str):
    return wait_for(
        lambda: (run := get_workflow(key)).status == "completed" and run,
        timeout=30,
        message=f"workflow {key} did not complete",
    )


def test_grep_for_a_business_key_finds_the_orders_whole_story_in_json_logs(json_worker):
    run = completed(
        obs.emit("obsStarted", {"orderId": "o-4711", "fail_first": True}).correlation_id
    )
    lines = [
        json.loads(line)
        for line in Path(json_worker.log_path).read_text().splitlines()
        if line.startswith("{") and "o-4711" in line
    ]
    jobs = {h.name: h.id for h in run.history if h.kind == "job"}
    story = [(e["logger"], e["message"], e["queue"], e["attempt"]) for e in lines]
    # the handler's own logger, the retry warning, the step's ctx.log, each success
    assert ("shop.payments", "charging the card", "obs.first", 1) in story
    assert ("shop.payments", "charging the card", "obs.first", 2) in story
    assert any(e["level"] == "WARNING" and "retrying in" in e["message"] for e in lines)
    assert ("celery_workflows.queue.obs.second", "shipping", "obs.second", 1) in story
    for entry in lines:
        assert entry["workflow_id"] == run.correlation_id
        assert entry["business_key"] == "o-4711"
        assert entry["job_id"] == jobs[entry["queue"]]
