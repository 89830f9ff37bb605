"""An atomic step (``queue_worker(atomic=True)``) runs its handler in the transaction that records
its outcome: the handler's ORM writes, its outcome, its events and the jobs they start commit
together or not at all. Each test runs the same handler as ``atom.shipLoose``, declared without
``atomic``, to show what the step would leave behind without it (tests/proj/atomic.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from celery_workflows import get_workflow
from celery_workflows.testing import Faults, wait_for
from django_app.models import Job
from tests.proj.atomic import atom
from tests.proj.models import Shipment

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

QUEUES = [atom.queue(name).qualified_name for name in ("ship", "shipLoose", "notify")]
#: the attempts whose Shipment rows stay: atomic, then without atomic=True
FAILED_FIRST = {"ship": [2], "shipLoose": [1, 2]}


def shipments(order_id: str) -> list[int]:
    """The attempts whose rows are in the table, in order."""
    return sorted(Shipment.objects.filter(order_id=order_id).values_list("attempt", flat=True))


def notified(correlation_id: str) -> int:
    """How many notify jobs the run's atomShipped events started."""
    return Job.objects.filter(correlation_id=correlation_id, queue="atom.notify").count()


def settled(correlation_id: str) -> None:
    wait_for(
        lambda: get_workflow(correlation_id).status == "completed",
        timeout=40,
        message=f"run {correlation_id} did not complete",
    )


def wrote(recorder, job_id: str, attempt: int = 1) -> bool:  # type: ignore[no-untyped-def]
    return any(r.get("wrote") and r["attempt"] == attempt for r in recorder.runs(job_id))


@pytest.fixture
def atom_worker(start_worker):  # type: ignore[no-untyped-def]
    worker = start_worker(QUEUES, concurrency=2, name="atom")
    yield worker
    worker.stop()  # the workers of start_worker live for the session: no other test's queue


@pytest.mark.parametrize("queue", ["ship", "shipLoose"])
def test_a_failure_after_the_orm_write_takes_the_write_and_the_events_back(
    queue, atom_worker, wait_status
):
    order = f"o-fails-{queue}"
    job = atom.enqueue(queue, {"orderId": order, "failOn": [1]})
    settled(job.correlation_id)
    assert shipments(order) == FAILED_FIRST[queue]
    # the failed attempt's event is gone with its row when the step is atomic
    assert notified(job.correlation_id) == len(FAILED_FIRST[queue])


def test_a_worker_killed_mid_handler_leaves_no_half_written_step(
    start_worker, recorder, wait_status
):
    worker = start_worker(QUEUES, concurrency=1, name="atomkilled")
    job = atom.enqueue("ship", {"orderId": "o-killed", "sleepOn": [1], "sleep": 30})
    wait_for(lambda: wrote(recorder, job.job_id), timeout=20, message="attempt 1 never wrote")
    assert shipments("o-killed") == []  # written, not committed: nobody else sees it yet
    worker.kill()  # SIGKILL, pool process included: the database rolls its transaction back
    rescue = start_worker(QUEUES, concurrency=1, name="atomrescue")
    try:
        settled(job.correlation_id)
        assert shipments("o-killed") == [2]
        assert notified(job.correlation_id) == 1
        assert [a["outcome"] for a in Job.objects.get(id=job.job_id).attempt_log] == [
            "lease_expired",
            "succeeded",
        ]
    finally:
        rescue.stop()


#: on SQLite an atomic step holds the database's write lock while its handler runs: nobody can
#: take its job over meanwhile (the operator's release waits, and then finds the job done)
ON_SQLITE = os.environ.get("DATABASE_URL", "").startswith("sqlite")


@pytest.mark.parametrize(
    "queue, lost",
    [
        # an operator ends the lease; the attempt runs on, and the fence refuses its outcome
        pytest.param(
            "ship",
            "taken over",
            marks=pytest.mark.skipif(ON_SQLITE, reason="SQLite: one writer at a time"),
        ),
        ("ship", "overrun"),  # the handler outlives its lease: the lease alarm stops it
        ("shipLoose", "taken over"),
    ],
)
def test_an_attempt_that_lost_its_lease_takes_its_writes_back(
    queue, lost, atom_worker, recorder, wait_status
):
    order = f"o-{lost.replace(' ', '-')}-{queue}"
    sleep = 2 if lost == "taken over" else 6  # the lease is 3 s
    job = atom.enqueue(queue, {"orderId": order, "sleepOn": [1], "sleep": sleep})
    wait_for(lambda: wrote(recorder, job.job_id), timeout=20, message="attempt 1 never wrote")
    if lost == "taken over":
        assert Faults().expire_lease(job.job_id)
    settled(job.correlation_id)
    if lost == "taken over":  # the first attempt ran on to its end, and the fence refused it
        line = f"job {job.job_id} attempt 1 rejected"
        wait_for(
            lambda: line in Path(atom_worker.log_path).read_text(),
            timeout=10,
            message="the first attempt never came back",
        )
    # (an overrun attempt was stopped by its alarm and rolled back before the lease was lost)
    assert [a["outcome"] for a in Job.objects.get(id=job.job_id).attempt_log] == [
        "lease_expired",
        "succeeded",
    ]
    assert shipments(order) == ([2] if queue == "ship" else [1, 2])
    # a fenced outcome takes its events with it, atomic or not: only the row stays behind
    assert notified(job.correlation_id) == 1


def test_inside_the_handler_inner_blocks_and_commit_callbacks_keep_their_meaning(
    atom_worker, recorder
):
    # the handler writes a row and emits, then in an inner transaction.atomic() writes another
    # row and emits again, and rolls that block back; it also registers an on_commit callback
    job = atom.enqueue("ship", {"orderId": "o-inner", "discarded": True, "afterCommit": True})
    settled(job.correlation_id)
    assert shipments("o-inner") == [1]  # the inner block's row was rolled back
    assert notified(job.correlation_id) == 1  # and its event with it; the other one went out
    wait_for(lambda: any(r.get("committed") for r in recorder.runs(job.job_id)), timeout=5)
    assert [r["attempt"] for r in recorder.runs(job.job_id) if r.get("committed")] == [1]


def test_an_atomic_step_may_not_extend_its_lease_and_says_so_once(atom_worker, wait_status):
    # the extension would write the job's row inside the step's transaction: unseen until the
    # commit, and a lock the sweeper could deadlock on - refused, not retried
    job = atom.enqueue("ship", {"orderId": "o-extends", "extend": True})
    wait_status(job.job_id, "dead", timeout=20)
    (attempt,) = Job.objects.get(id=job.job_id).attempt_log
    assert "an atomic step cannot extend its lease" in attempt["error"]
    assert shipments("o-extends") == []


def test_manage_py_check_warns_of_an_atomic_step_with_a_long_lease(worker_env):
    from tests.helpers import manage

    checked = manage({**worker_env, "ATOM_LONG_LEASE": "1"}, "check")
    assert checked.returncode == 0, checked.stderr  # a warning: the command still runs
    assert "celery_workflows.W007" in checked.stderr
    assert "queue atom.shipSlowly is atomic with a visibility timeout of 120s" in checked.stderr
    assert "celery_workflows.W007" not in manage(worker_env, "check").stderr


def test_an_async_handler_cannot_be_atomic():
    from celery_workflows import ConfigurationError

    async def handler(ctx, job):  # type: ignore[no-untyped-def]
        return None

    with pytest.raises(ConfigurationError, match="atomic step's handler must be a plain function"):
        atom.queue_worker("asyncAtomic", atomic=True)(handler)
    assert "asyncAtomic" not in atom.queues
