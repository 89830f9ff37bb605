"""Middleware hooks run around every attempt on a real worker, and can never change an outcome."""

from __future__ import annotations

import json

import pytest

from celery_workflows import get_job
from celery_workflows.testing import wait_for
from tests.proj.workflows import t

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("session_worker", "transactional_db")]


def hooks(redis_client, correlation_id: str) -> list[list]:
    return [json.loads(x) for x in redis_client.lrange(f"hooks:{correlation_id}", 0, -1)]


def test_hooks_see_each_attempt_its_outcome_and_the_dead_letter(wait_status, redis_client):
    job = t.enqueue("doomed", {}, correlation_id="mw-doomed")
    wait_status(job.job_id, "dead")
    seen = wait_for(lambda: (h := hooks(redis_client, "mw-doomed")) and len(h) == 7 and h)
    assert seen == [
        ["before", "t.doomed", 1],
        ["after", 1, "queued", True],
        ["before", "t.doomed", 2],
        ["after", 2, "queued", True],
        ["before", "t.doomed", 3],
        ["after", 3, "dead", True],
        ["dead", 3, "gave up a"],
    ]


def test_a_hook_that_raises_is_logged_and_the_job_still_succeeds(wait_status, redis_client):
    job = t.enqueue("echo", {"n": 1}, correlation_id="broken-hooks-1")
    wait_status(job.job_id, "succeeded")
    assert get_job(job.job_id).result["echo"] == {"n": 1}
    assert [h[0] for h in hooks(redis_client, "broken-hooks-1")] == ["before", "after"]
