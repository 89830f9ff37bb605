"""``async def`` handlers on a real worker: awaited on a loop of the worker process, with
async state, emit and lease calls; the lease alarm cancels an overrunning coroutine and the
fence rejects a late write, as for sync handlers."""

from __future__ import annotations

import pytest

from celery_workflows import get_job, get_workflow, release_lease
from celery_workflows.testing import wait_for, wait_for_run
from tests.proj.workflows import aio

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

QUEUES = [f"aio.{name}" for name in ("fetch", "store", "overrun", "held")]


@pytest.fixture(scope="module")
def aio_worker(start_worker):
    return start_worker(QUEUES, concurrency=2, name="aio")


def test_async_steps_await_keep_state_emit_and_run_on_one_loop_per_process(aio_worker):
    for n in range(3):
        aio.enqueue("fetch", {"orderId": f"a-{n}"})
    runs = [wait_for_run(f"a-{n}") for n in range(3)]
    assert [r.status for r in runs] == ["completed"] * 3
    stored = [next(h.result for h in r.history if h.name == "aio.store") for r in runs]
    assert stored[0] == {"stored": "a-0", "state": {"fetched": 1}, "cancel": False}
    loops = {}
    for r in runs:
        fetch = next(h.result for h in r.history if h.name == "aio.fetch")
        loops.setdefault(fetch["pid"], set()).add(fetch["loop"])
    assert all(len(ids) == 1 for ids in loops.values())  # one loop per process, reused


def test_an_overrunning_coroutine_is_cancelled_by_the_lease_alarm_and_cleans_up(
    aio_worker, recorder
):
    job = aio.enqueue("overrun", {"orderId": "a-slow"})
    wait_for(lambda: get_job(job.job_id).status == "dead", timeout=30)
    record = get_job(job.job_id)
    assert [a["outcome"] for a in record.attempt_log] == ["lease_expired", "lease_expired"]
    events = [(r["attempt"], r["event"]) for r in recorder.runs(job.job_id)]
    assert events == [(1, "start"), (1, "cleanup"), (2, "start"), (2, "cleanup")]
    assert get_workflow("a-slow").status == "dead_lettered"


def test_a_late_async_handler_whose_lease_was_taken_over_is_fenced(aio_worker, recorder):
    job = aio.enqueue("held", {"orderId": "a-held"})
    wait_for(lambda: recorder.runs(job.job_id), timeout=15, message="attempt 1 never started")
    # as if attempt 1's worker had been partitioned: the sweeper takes the job over
    assert release_lease(job.job_id, actor="partition test")
    wait_for(lambda: get_job(job.job_id).status == "succeeded", timeout=20)
    settled = get_job(job.job_id)
    recorder.redis.set(f"release:{job.job_id}", 1)  # attempt 1 wakes up, past its lease
    wait_for(
        lambda: any(r.get("event") == "lease lost" for r in recorder.runs(job.job_id)),
        timeout=15,
        message="attempt 1 never learned that its lease was lost",
    )
    after = get_job(job.job_id)
    assert after.attempt_log == settled.attempt_log
    assert [a["outcome"] for a in after.attempt_log] == ["lease_expired", "succeeded"]
    assert after.result == "done by attempt 2"
