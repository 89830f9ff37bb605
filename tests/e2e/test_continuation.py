"""Local continuation: the worker that finishes a step runs the next one itself - no notice,
no claim - within its bound, on queues it consumes, and a crash in the middle of such a chain
is recovered like any other."""

from __future__ import annotations

import os
import signal

import pytest

from celery_workflows import get_workflow
from celery_workflows.testing import wait_for
from tests.proj.chaos import QUEUES, chaos

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


def chain(correlation_id: str) -> list:
    from django_app.models import Job

    return list(Job.objects.filter(correlation_id=correlation_id).order_by("created_at"))


def settled(correlation_id: str, timeout: float = 30) -> None:
    wait_for(
        lambda: get_workflow(correlation_id).status == "completed",
        timeout=timeout,
        message=f"workflow {correlation_id} did not complete",
    )


def test_a_worker_runs_the_next_steps_itself_without_publishing_them(start_worker):
    worker = start_worker(QUEUES, concurrency=1, name="continues")
    started = chaos.emit("chaosStarted", {"n": "local-1"})
    settled(started.correlation_id)
    jobs = chain(started.correlation_id)
    assert [j.queue for j in jobs] == QUEUES
    assert len({j.worker for j in jobs}) == 1  # one process ran all four steps
    # steps 2-4 were written claimed by that process: never published, one attempt each
    assert [j.published_at is None for j in jobs] == [False, True, True, True]
    assert all(j.attempts == 1 and len(j.attempt_log) == 1 for j in jobs)
    worker.stop()


def test_after_its_bound_the_next_step_is_published(start_worker):
    worker = start_worker(QUEUES, concurrency=1, name="bounded", continuations=2)
    started = chaos.emit("chaosStarted", {"n": "bounded-1"})
    settled(started.correlation_id)
    jobs = chain(started.correlation_id)
    assert [j.published_at is None for j in jobs] == [False, True, True, False]
    worker.stop()


def test_a_step_whose_queue_this_worker_does_not_consume_goes_through_the_broker(start_worker):
    first = start_worker(QUEUES[:2], concurrency=1, name="first-half")
    second = start_worker(QUEUES[2:], concurrency=1, name="second-half")
    started = chaos.emit("chaosStarted", {"n": "split-1"})
    settled(started.correlation_id)
    jobs = chain(started.correlation_id)
    assert [j.published_at is None for j in jobs] == [False, True, False, True]
    assert jobs[0].worker == jobs[1].worker != jobs[2].worker == jobs[3].worker
    first.stop()
    second.stop()


def test_a_worker_killed_in_the_middle_of_a_chain_loses_nothing(
    start_worker, recorder, redis_client
):
    doomed = start_worker(QUEUES, concurrency=1, name="chain-doomed")
    started = chaos.emit("chaosStarted", {"n": "chain-kill", "work_ms": 1200})

    def step2_running():
        jobs = chain(started.correlation_id)
        return len(jobs) >= 2 and redis_client.get(f"chaos:runs:{jobs[1].id}") and jobs[1]

    step2 = wait_for(step2_running, timeout=20, message="step 2 never started")
    assert step2.published_at is None  # it was a local continuation
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.process.wait(10)
    rescuer = start_worker(QUEUES, concurrency=1, name="chain-rescuer")
    settled(started.correlation_id, timeout=40)  # after step 2's 3 s lease expires
    jobs = chain(started.correlation_id)
    # a step handed over by local continuation counts its attempt from its outcome on: its
    # process died first, so it ran again uncharged (once: the next attempt is charged)
    assert [a["outcome"] for a in jobs[1].attempt_log] == ["succeeded"]
    assert all(j.status == "succeeded" for j in jobs) and len(jobs) == 4
    assert redis_client.get(f"chaos:effect:{step2.id}") is not None
    rescuer.stop()


def test_a_step_handed_to_a_process_that_died_first_is_not_charged_and_runs_soon(start_worker):
    # the process dies right after the first step's outcome commits - with the second step
    # written claimed by it, never started; that step allows one attempt and has a 60 s lease
    from pathlib import Path

    from celery_workflows.testing import FINAL
    from tests.proj.workflows import handoff

    worker = start_worker(["handoff.first", "handoff.second"], concurrency=1, name="handoff")
    handoff.enqueue("first", {"n": 1}, correlation_id="die-after-outcome-handoff-1")
    run = wait_for(
        lambda: (r := get_workflow("die-after-outcome-handoff-1")).status in FINAL and r,
        timeout=20,  # a third of the lease: recovered at once, not when the lease runs out
    )
    assert run.status == "completed"
    (second,) = [h for h in run.history if h.kind == "job" and h.name == "handoff.second"]
    assert [a["outcome"] for a in second.attempts] == ["succeeded"]
    # any worker's sweeper may be the one that queues it again
    from tests.conftest import LOG_DIR

    logs = "".join(p.read_text(errors="replace") for p in LOG_DIR.glob("*.log"))
    assert "signal 9" in Path(worker.log_path).read_text()
    assert "queued again, no attempt charged" in logs
    worker.stop()
