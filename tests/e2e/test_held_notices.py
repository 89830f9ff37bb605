"""On Redis a worker takes its steps' notices without kombu's acknowledgement copies and holds
them itself (celery_workflows/held.py): what it holds goes back to the queue when it stops, a
worker killed with notices in hand loses none of their jobs, and Redis keeps no copy of a
notice in kombu's unacked hash."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from celery_workflows import get_job
from celery_workflows.testing import wait_for
from tests.conftest import BROKER_URL
from tests.proj.workflows import crash

pytestmark = [
    pytest.mark.worker,
    pytest.mark.usefixtures("transactional_db"),
    pytest.mark.skipif(not BROKER_URL.startswith("redis"), reason="kombu's Redis transport"),
]

SLOW = crash.queue("held").qualified_name
#: the Redis lists of that queue: kombu keeps one per priority step
LISTS = [SLOW, *(f"{SLOW}\x06\x16{step}" for step in range(10))]


def starts(recorder, job_id: str) -> int:  # type: ignore[no-untyped-def]
    return len([run for run in recorder.runs(job_id) if not run.get("done")])


def waiting(redis_client) -> int:  # type: ignore[no-untyped-def]
    """Notices in the queue's lists."""
    return sum(redis_client.llen(name) for name in LISTS)


def waiting_jobs(redis_client) -> set[str]:  # type: ignore[no-untyped-def]
    """The job ids of the notices in the queue's lists."""
    found = set()
    for name in LISTS:
        for raw in redis_client.lrange(name, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            found.add(body[0][0])
    return found


def _backlog(start_worker, recorder, redis_client, name: str, jobs: int = 6):  # type: ignore[no-untyped-def]
    """A worker of one process whose first job runs while it holds the next ones (prefetch 4)."""
    # notices an earlier test left in the queue (copies the sweepers re-published, for jobs its
    # database no longer has) would be taken first
    redis_client.delete(*LISTS)
    worker = start_worker([SLOW], concurrency=1, name=name, republish_after=600)
    # each job runs 4 s: the first one is still running when the test stops or kills the
    # worker, even on a loaded machine (so no held notice has started meanwhile)
    try:
        ids = [crash.enqueue("held", {"seconds": 4}).job_id for _ in range(jobs)]
        wait_for(lambda: recorder.runs(ids[0]), timeout=20, message="the first job never started")
        wait_for(
            lambda: Path(worker.log_path).read_text().count("] received") >= 5,
            timeout=10,
            message="the worker did not take the next notices",
        )
        # no more than the prefetch limit (4 for one process): a held notice counts against it as
        # an unacknowledged one did, so the worker takes the first job and four more, and the
        # sixth waits in Redis for another worker. (What waits there may grow meanwhile: the
        # suite's other workers re-publish a held notice, as any lost one, after their
        # republish interval - the claim runs such a job once.)
        time.sleep(0.5)
        log = Path(worker.log_path).read_text()
        assert log.count("] received") == 5, f"not the prefetch limit:\n{log}"
        assert ids[-1] in waiting_jobs(redis_client), "the sixth notice was taken"
    except BaseException:
        worker.kill()  # it lives for the session otherwise, and would take the next test's jobs
        raise
    return worker, ids


def test_a_worker_stopped_warm_hands_back_the_notices_it_holds(
    start_worker, recorder, redis_client, wait_status
):
    first, ids = _backlog(start_worker, recorder, redis_client, "holder")
    assert not redis_client.hlen("unacked")  # held in the worker's memory, not copied in Redis
    first.stop()
    # the four it held are back beside the one it had not taken (and the running job's retry:
    # the test harness's SIGTERM reaches the pool process too)
    assert waiting(redis_client) >= len(ids) - 1
    assert "handed back 4 notice(s)" in Path(first.log_path).read_text()

    stopped = time.monotonic()
    second = start_worker([SLOW], concurrency=2, name="next", republish_after=600)
    try:
        for job_id in ids:
            wait_status(job_id, "succeeded", timeout=40)
        assert time.monotonic() - stopped < 60  # not the sweeper's 600 s re-publish
        for job_id in ids[1:]:
            assert starts(recorder, job_id) == 1
            assert get_job(job_id).attempts == 1
    finally:
        second.stop()  # the workers of start_worker live for the session: no other test's queue


def test_a_worker_killed_with_notices_in_hand_loses_no_job(
    start_worker, recorder, redis_client, wait_status
):
    first, ids = _backlog(start_worker, recorder, redis_client, "dropped")
    first.kill()  # the held notices are gone with it; the ledger still has their jobs queued
    rescue = start_worker([SLOW], concurrency=2, name="rescue", republish_after=3)
    try:
        for job_id in ids:
            wait_status(job_id, "succeeded", timeout=40)
        for job_id in ids[1:]:
            assert starts(recorder, job_id) == 1  # sent again once, run once
    finally:
        rescue.stop()
