"""Workers really die (SIGKILL) or freeze (SIGSTOP) mid-job; the ledger's leases recover."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from celery_workflows import get_job, get_workflow
from celery_workflows.testing import wait_for
from tests.proj.workflows import crash

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

SLOW = crash.queue("slow").qualified_name
POISON = crash.queue("poison").qualified_name


def test_killed_worker_job_is_completed_by_another_worker_after_the_lease_expires(
    start_worker, recorder, wait_status
):
    first = start_worker([SLOW], concurrency=1, name="doomed")
    job = crash.enqueue("slow", {"seconds": 2})
    wait_for(lambda: recorder.runs(job.job_id), timeout=15, message="first attempt never started")
    first.kill()
    killed_at = time.monotonic()

    second = start_worker([SLOW], concurrency=1, name="rescuer")
    wait_status(job.job_id, "succeeded", timeout=20)
    assert (
        time.monotonic() - killed_at < 15
    )  # the 3s lease, not Redis' hour-long visibility timeout

    record = get_job(job.job_id)
    assert [a["outcome"] for a in record.attempt_log] == ["lease_expired", "succeeded"]
    assert "lease expired" in record.attempt_log[0]["error"]
    runs = recorder.runs(job.job_id)
    assert [r["attempt"] for r in runs] == [1, 2, 2] and runs[-1].get("done")

    time.sleep(4)  # longer than a lease: a finished job must never run again
    assert len(recorder.runs(job.job_id)) == 3
    assert get_job(job.job_id).attempts == 2
    second.stop()


def test_job_that_kills_its_worker_every_time_reaches_the_dlq_after_max_attempts(
    start_worker, recorder, wait_status
):
    poisoned = start_worker([POISON], concurrency=1, name="poisoned")
    job = crash.enqueue("poison", {})
    wait_status(job.job_id, "dead", timeout=25)
    record = get_job(job.job_id)
    assert record.attempts == 2
    assert [a["outcome"] for a in record.attempt_log] == ["lease_expired", "lease_expired"]
    assert "gave up after 2 attempt(s)" in record.dead_reason
    assert len(recorder.runs(job.job_id)) == 2
    assert get_workflow(job.correlation_id).status == "dead_lettered"
    poisoned.stop()


def test_frozen_worker_cannot_complete_a_job_another_worker_took_over(
    start_worker, recorder, wait_status
):
    zombie = start_worker([SLOW], concurrency=1, name="zombie")
    job = crash.enqueue("slow", {"seconds": 1.5})
    wait_for(lambda: recorder.runs(job.job_id), timeout=15, message="first attempt never started")
    os.killpg(zombie.pid, signal.SIGSTOP)  # a GC pause or a network partition
    try:
        successor = start_worker([SLOW], concurrency=1, name="successor")
        wait_status(job.job_id, "succeeded", timeout=20)
        settled = get_job(job.job_id)
    finally:
        os.killpg(zombie.pid, signal.SIGCONT)

    # the zombie wakes up past its lease: its alarm stops the handler at once, and the
    # failure it then tries to record is rejected by the fence
    log_path = zombie.log_path
    assert log_path is not None
    wait_for(
        lambda: "rejected" in Path(log_path).read_text(),
        timeout=15,
        message="the zombie's late write was not reported as rejected",
    )
    after = get_job(job.job_id)
    assert after.attempt_log == settled.attempt_log
    assert [a["outcome"] for a in after.attempt_log] == ["lease_expired", "succeeded"]
    assert after.attempt_log[-1]["attempt"] == 2
    assert not any(r.get("done") and r["attempt"] == 1 for r in recorder.runs(job.job_id))
    successor.stop()
    zombie.stop()


def test_a_worker_killed_right_after_the_last_outcome_still_leaves_the_run_settled(
    start_worker, wait_status
):
    worker = start_worker([SLOW], concurrency=1, name="dies-after-outcome")
    job = crash.enqueue("slow", {"seconds": 0.1}, correlation_id="die-after-outcome-1")
    wait_status(job.job_id, "succeeded", timeout=20)
    log = Path(worker.log_path)
    wait_for(lambda: "signal 9" in log.read_text(), timeout=10, message="the child did not die")
    run = get_workflow("die-after-outcome-1")
    assert run.status == "completed" and run.finished_at is not None
    assert get_job(job.job_id).attempts == 1
