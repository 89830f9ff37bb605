"""A join starts its step once every one of its events has happened in a run - once, even when
the branches finish at the same instant on two workers, or a worker dies mid-branch.

The workflow is ``tests/proj/fanin.py``: charge and reserve run in parallel, ship joins them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from celery_workflows.testing import wait_for
from django_app.models import Event, Job, WorkflowRun
from tests.helpers import manage
from tests.proj.fanin import QUEUES

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


@pytest.fixture(autouse=True)
def _clean(redis_client: Any) -> None:
    redis_client.delete("fan:shipped", "fan:refunded")


@pytest.fixture
def start_worker(start_worker):  # type: ignore[no-untyped-def]
    """This test's workers, stopped when it ends (a ``fan`` worker left running would take
    the next test's jobs)."""
    started = []

    def start(*args: Any, **kwargs: Any) -> Any:
        started.append(start_worker(*args, **kwargs))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()


def shipped(redis_client: Any) -> list[dict[str, Any]]:
    return [json.loads(x) for x in redis_client.lrange("fan:shipped", 0, -1)]


def run_of(event: Any) -> WorkflowRun:
    return WorkflowRun.objects.get(correlation_id=event.correlation_id)


def ended(event: Any) -> bool:
    return run_of(event).status not in ("running", "waiting", "compensating")


def test_the_joined_step_starts_once_with_every_events_payload(start_worker, redis_client):
    from tests.proj.fanin import fan

    start_worker(QUEUES, concurrency=2, name="join")
    started = fan.emit("fanOrdered", {"order": "o-1", "amount": 25})
    wait_for(lambda: ended(started), timeout=30)
    assert run_of(started).status == "completed"
    (ship,) = Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship")
    assert ship.payload == {
        "fanCharged": {"order": "o-1", "paid": 25},
        "fanReserved": {"order": "o-1", "sku": "A-1"},
    }
    # the job names the event that completed the join as its cause
    completing = Event.objects.get(id=ship.caused_by)
    assert completing.name in ("fanCharged", "fanReserved")
    assert completing.correlation_id == started.correlation_id
    assert [s["payload"]["fanCharged"]["paid"] for s in shipped(redis_client)] == [25]


def test_branches_finishing_at_the_same_instant_on_two_workers_start_the_join_once(
    start_worker, redis_client
):
    from tests.proj.fanin import fan

    # each branch has a worker of its own; both may run ship
    start_worker(["fan.charge", "fan.ship"], concurrency=2, name="charger")
    start_worker(["fan.reserve", "fan.ship"], concurrency=2, name="reserver")
    runs = [fan.emit("fanOrdered", {"order": f"o-{i}", "barrier": True}) for i in range(40)]
    wait_for(lambda: all(ended(r) for r in runs), timeout=120)
    ids = [r.correlation_id for r in runs]
    statuses = WorkflowRun.objects.filter(correlation_id__in=ids).values_list("status", flat=True)
    assert set(statuses) == {"completed"}
    per_run = [s["run"] for s in shipped(redis_client)]
    assert sorted(per_run) == sorted(ids)  # every run shipped, none twice
    assert Job.objects.filter(correlation_id__in=ids, queue="fan.ship").count() == 40
    # the race was real: the branches' events were written within milliseconds of each other
    close = 0
    for run in ids:
        a, b = Event.objects.filter(
            correlation_id=run, name__in=["fanCharged", "fanReserved"]
        ).values_list("emitted_at", flat=True)
        close += abs((a - b).total_seconds()) < 0.005
    assert close >= 10, f"only {close} of 40 runs had their branches finish together"


def test_a_worker_killed_in_a_branch_still_leads_to_one_join(start_worker, redis_client):
    from tests.proj.fanin import fan

    charger = start_worker(["fan.charge"], concurrency=1, name="doomed")
    start_worker(["fan.reserve", "fan.ship", "fan.refund"], concurrency=2, name="others")
    started = fan.emit("fanOrdered", {"order": "o-kill", "stallOnce": True})
    wait_for(lambda: redis_client.get("fan:stalled:o-kill") is not None, timeout=30)
    wait_for(
        lambda: Job.objects.filter(
            correlation_id=started.correlation_id, queue="fan.reserve", status="succeeded"
        ).exists(),
        timeout=30,
    )
    charger.kill()  # SIGKILL mid-handler: its lease expires, the attempt is taken over
    start_worker(["fan.charge"], concurrency=1, name="heir")
    wait_for(lambda: ended(started), timeout=60)
    assert run_of(started).status == "completed"
    charge = Job.objects.get(correlation_id=started.correlation_id, queue="fan.charge")
    assert charge.attempts == 2
    assert [s["run"] for s in shipped(redis_client)] == [started.correlation_id]
    assert Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship").count() == 1


def test_a_branch_that_dead_letters_stops_the_join_and_compensates_the_other(
    start_worker, redis_client
):
    from tests.proj.fanin import fan

    start_worker(QUEUES, concurrency=2, name="failing")
    started = fan.emit("fanOrdered", {"order": "o-fail", "reserveFails": True})
    wait_for(lambda: ended(started), timeout=30)
    assert run_of(started).status == "compensated"
    assert not Job.objects.filter(correlation_id=started.correlation_id, queue="fan.ship").exists()
    assert shipped(redis_client) == []
    assert redis_client.lrange("fan:refunded", 0, -1) == [b"o-fail"]


def test_manage_check_warns_about_a_join_waiting_for_an_event_nothing_emits(worker_env):
    result = manage({**worker_env, "WORKFLOWS_TEST_LOOSE_JOIN": "1"}, "check")
    assert result.returncode == 0, result.stderr
    assert "celery_workflows.W002" in result.stderr
    assert "subscription 'loose' waits for event 'fanInsured'" in result.stderr
