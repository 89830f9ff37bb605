"""Steps talk only through events, across worker processes, at least once and never twice."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.db import transaction

from celery_workflows import Event, get_job
from celery_workflows.celery_integration import EVENTS_QUEUE, publish_event
from celery_workflows.clock import utcnow
from celery_workflows.testing import wait_for
from tests.proj.celery_app import app
from tests.proj.flows import shop

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]


def jobs_of(correlation_id: str) -> dict[str, list]:
    from django_app.models import Job

    out: dict[str, list] = {}
    for job in Job.objects.filter(correlation_id=correlation_id).order_by("created_at"):
        out.setdefault(job.queue, []).append(job)
    return out


def events_of(correlation_id: str) -> list:
    from django_app.models import Event as EventRow

    return list(EventRow.objects.filter(correlation_id=correlation_id).order_by("emitted_at"))


def wait_jobs_done(correlation_id: str, queues: set[str], timeout: float = 20) -> dict[str, list]:
    def done():
        jobs = jobs_of(correlation_id)
        if queues <= set(jobs) and all(
            j.status in ("succeeded", "dead", "cancelled") for js in jobs.values() for j in js
        ):
            return jobs
        return None

    return wait_for(done, timeout=timeout, message=f"workflow {correlation_id} did not finish")


def test_four_step_chain_driven_only_by_events_carries_the_correlation_id(
    shop_workers, redis_client
):
    placed = shop.emit("orderPlaced", {"orderId": "o-1"})
    jobs = wait_jobs_done(
        placed.correlation_id,
        {"shop.validate", "shop.charge", "shop.ship", "shop.confirm", "shop.audit"},
    )
    assert jobs["shop.confirm"][0].result == "confirmed o-1 (T-o-1)"
    assert all(j.status == "succeeded" for js in jobs.values() for j in js)
    events = events_of(placed.correlation_id)
    assert [e.name for e in events] == [
        "orderPlaced",
        "stockChecked",
        "paymentProcessed",
        "shipmentCreated",
    ]
    # each job was caused by the event before it, each event by the job before it
    by_id = {e.id: e for e in events}
    assert by_id[jobs["shop.charge"][0].caused_by].name == "stockChecked"
    shipped = next(e for e in events if e.name == "shipmentCreated")
    assert shipped.causation_id == jobs["shop.ship"][0].id
    assert shipped.payload == {"orderId": "o-1", "tracking": "T-o-1"}
    assert all(e.trace_id == placed.trace_id for e in events)

    finished = wait_for(
        lambda: [
            json.loads(x)
            for x in redis_client.lrange("finished", 0, -1)
            if json.loads(x)["correlation_id"] == placed.correlation_id
        ]
    )
    assert finished == [{"correlation_id": placed.correlation_id, "status": "completed"}]
    # middleware saw every emit, in the web process and in the workers
    emits = [
        json.loads(x)[1]
        for x in redis_client.lrange(f"hooks:{placed.correlation_id}", 0, -1)
        if json.loads(x)[0] == "emit"
    ]
    assert sorted(emits) == ["orderPlaced", "paymentProcessed", "shipmentCreated", "stockChecked"]


def test_one_event_fans_out_and_filters_route_backorders_to_another_worker(shop_workers, recorder):
    main, backorders = shop_workers
    in_stock = shop.emit("orderPlaced", {"orderId": "o-2", "inStock": True})
    backorder = shop.emit("orderPlaced", {"orderId": "o-3", "inStock": False})

    routed = wait_jobs_done(in_stock.correlation_id, {"shop.charge", "shop.audit", "shop.confirm"})
    assert "shop.notifyBackorder" not in routed
    assert routed["shop.audit"][0].payload == {"seen": "o-2"}  # mapped payload

    held = wait_jobs_done(backorder.correlation_id, {"shop.notifyBackorder", "shop.audit"})
    assert "shop.charge" not in held
    # the backorder subscriber lives in a different worker process, on its own -Q
    (job,) = held["shop.notifyBackorder"]
    assert job.worker.endswith(f":{job.result}")
    runs = recorder.runs(job.id)
    assert runs and runs[0]["pid"] == job.result
    assert parent_pid(job.result) == backorders.pid
    assert parent_pid(recorder.runs(held["shop.audit"][0].id)[0]["pid"]) == main.pid


def parent_pid(pid: int) -> int:
    """The parent of a prefork pool child: the worker process that consumed the queue."""
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_duplicate_delivery_of_an_event_message_enqueues_each_next_job_once(shop_workers):
    event = Event(
        id=uuid.uuid4().hex,
        name="orderPlaced",
        payload={"orderId": "o-4"},
        correlation_id=uuid.uuid4().hex,
        causation_id=None,
        trace_id="t-4",
        emitted_at=utcnow(),
        source="partner-api",
    )
    for _ in range(3):
        publish_event(app, event)
    jobs = wait_jobs_done(event.correlation_id, {"shop.confirm"})
    assert len(jobs["shop.validate"]) == 1
    assert all(len(js) == 1 for js in jobs.values())
    time.sleep(1)  # asserting an absence: late copies created nothing
    assert all(len(js) == 1 for js in jobs_of(event.correlation_id).values())
    assert len([e for e in events_of(event.correlation_id) if e.name == "orderPlaced"]) == 1


def test_event_emitted_in_a_rolled_back_transaction_is_never_published(shop_workers):
    correlation = uuid.uuid4().hex
    with pytest.raises(RuntimeError), transaction.atomic():
        shop.emit("orderPlaced", {"orderId": "o-5"}, correlation_id=correlation)
        raise RuntimeError("the order could not be saved")
    time.sleep(1.5)  # asserting an absence
    assert jobs_of(correlation) == {} and events_of(correlation) == []


def test_event_emitted_in_a_committed_transaction_is_published(shop_workers):
    with transaction.atomic():
        placed = shop.emit("orderPlaced", {"orderId": "o-6"})
    wait_jobs_done(placed.correlation_id, {"shop.confirm"})


def test_handler_emit_inside_a_rolled_back_block_is_dropped_and_the_rest_go_out(shop_workers):
    job = shop.enqueue("rollsBack", {})
    wait_for(lambda: get_job(job.job_id).status == "succeeded", timeout=10)
    assert [e.name for e in events_of(get_job(job.job_id).correlation_id)] == ["sent"]


def test_compensation_event_goes_out_and_the_failing_job_still_dead_letters(shop_workers):
    placed = shop.emit("orderPlaced", {"orderId": "o-7", "card": "declined"})
    jobs = wait_jobs_done(placed.correlation_id, {"shop.charge", "shop.releaseStock"})
    (charge,) = jobs["shop.charge"]
    assert charge.status == "dead" and "card declined" in charge.dead_reason
    assert jobs["shop.releaseStock"][0].status == "succeeded"
    assert "shop.ship" not in jobs
    assert [e.name for e in events_of(placed.correlation_id)].count("paymentFailed") == 1


def test_handler_style_subscription_receives_the_envelope(shop_workers, redis_client):
    placed = shop.emit("orderPlaced", {"orderId": "o-8"})
    wait_jobs_done(placed.correlation_id, {"shop.on_shipmentCreated_remember_shipment"})
    seen = [json.loads(x) for x in redis_client.lrange("shipments", 0, -1)]
    mine = [e for e in seen if e["correlation_id"] == placed.correlation_id]
    assert len(mine) == 1 and mine[0]["name"] == "shipmentCreated"
    assert mine[0]["payload"]["tracking"] == "T-o-8"


def test_malformed_event_envelope_is_dead_lettered_with_the_reason(shop_workers):
    from celery_workflows.celery_integration import DELIVER_EVENT_TASK
    from django_app.models import Job

    app.send_task(DELIVER_EVENT_TASK, args=[{"name": "orderPlaced"}], queue=EVENTS_QUEUE)
    dead = wait_for(lambda: list(Job.objects.filter(queue=EVENTS_QUEUE, status="dead")), timeout=10)
    assert "malformed event envelope" in dead[0].dead_reason and "missing" in dead[0].dead_reason


def test_worker_refuses_to_start_when_a_subscription_targets_an_undeclared_queue(worker_env):
    from pathlib import Path

    from celery_workflows.testing import WorkerProcess

    log = Path(worker_env.get("TMPDIR", "/tmp")) / f"broken-graph-{uuid.uuid4().hex}.log"
    worker = WorkerProcess(
        "tests.proj.celery_app",
        ["shop.validate"],
        env={**worker_env, "WORKFLOWS_TEST_BROKEN_GRAPH": "1"},
        log_path=str(log),
    ).start()
    try:
        wait_for(lambda: not worker.alive() or "doesNotExist" in log.read_text(), timeout=20)
        assert "enqueues 'shop.doesNotExist', which no service declares" in log.read_text()
        wait_for(lambda: not worker.alive(), timeout=15, message="worker kept running")
    finally:
        worker.kill()
