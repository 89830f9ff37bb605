"""Declarative compensation, deadlines and the redrive rule, on a real worker.

A failed step, a cancellation or a passed deadline undoes the run's completed steps in reverse
order - each undo a leased, retried job of its own that records what it undoes - and the run
shows compensating, then compensated."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.core.management import call_command

from celery_workflows import NotRedrivableError, cancel_workflow, get_workflow, redrive
from celery_workflows.testing import wait_for
from tests.helpers import staff
from tests.proj.saga import QUEUES, held, saga

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]
FINAL = ("completed", "compensated", "dead_lettered", "cancelled")


@pytest.fixture(scope="module")
def saga_worker(start_worker):
    return start_worker(QUEUES, concurrency=2, name="saga")


def steps(redis_client, order: str) -> list[dict]:
    return [json.loads(x) for x in redis_client.lrange(f"saga:{order}", 0, -1)]


def finished(order: str, timeout: float = 30):
    return wait_for(
        lambda: (run := get_workflow(order)).status in FINAL and run,
        timeout=timeout,
        message=f"saga {order} did not finish",
    )


def jobs(run) -> dict[str, object]:
    return {h.name.split(".", 1)[1]: h for h in run.history if h.kind == "job"}


def test_a_saga_that_succeeds_undoes_nothing(saga_worker, redis_client):
    saga.emit("sagaStarted", {"orderId": "s-ok"})
    run = finished("s-ok")
    assert run.status == "completed"
    assert [s["step"] for s in steps(redis_client, "s-ok")] == ["reserve", "charge", "ship"]


def test_a_failed_step_undoes_the_completed_ones_in_reverse_order(saga_worker, redis_client):
    saga.emit("sagaStarted", {"orderId": "s-fail", "shipFails": True})
    run = finished("s-fail")
    assert run.status == "compensated"
    done = steps(redis_client, "s-fail")
    assert [s["step"] for s in done] == ["reserve", "charge", "ship", "refund", "release"]
    by_queue = jobs(run)
    # the timeline says which step each undo undid
    assert by_queue["refund"].compensates == by_queue["charge"].id
    assert by_queue["release"].compensates == by_queue["reserve"].id
    assert by_queue["ship"].status == "dead"


def test_a_dead_letter_of_a_compensated_run_cannot_be_redriven(saga_worker):
    saga.emit("sagaStarted", {"orderId": "s-redrive", "shipFails": True})
    run = finished("s-redrive")
    dead = jobs(run)["ship"]
    with pytest.raises(NotRedrivableError, match="start a new run"):
        redrive(dead.id)
    # the admin says so instead of offering the button, and its bulk action skips it
    ops = staff("ops", "view_workflowrun", "view_deadletter", "redrive_job")
    page = ops.get(f"/admin/celery_workflows/deadletter/{dead.id}/change/").content
    assert b"Not re-drivable: workflow" in page and b"cw-redrive-form" not in page
    run_page = ops.get(f"/admin/celery_workflows/workflowrun/{run.correlation_id}/change/")
    assert b"not re-drivable" in run_page.content
    assert b'class="cw-redrive"' not in run_page.content
    listing = ops.post(
        "/admin/celery_workflows/deadletter/",
        {"action": "redrive_selected", "_selected_action": [dead.id]},
        follow=True,
    )
    assert b"Not re-driven (1)" in listing.content
    assert get_workflow("s-redrive").status == "compensated"
    assert get_workflow("s-redrive").audit == []


def test_cancelling_a_run_stops_it_and_undoes_what_it_did(saga_worker, redis_client):
    saga.emit("sagaStarted", {"orderId": "s-cancel", "slow": 30})
    wait_for(lambda: [s["step"] for s in steps(redis_client, "s-cancel")] == ["reserve", "charge"])
    assert cancel_workflow("s-cancel", actor="ops-cy", reason="customer changed their mind")
    run = finished("s-cancel")
    assert run.status == "compensated"
    assert run.ended_by == "customer changed their mind"
    order = [s["step"] for s in steps(redis_client, "s-cancel")]
    # charge saw the request, stopped and completed; it is undone too; ship never started
    assert "ship" not in order
    assert sorted(order[2:]) == ["refund", "release"]
    assert [a.action for a in run.audit] == ["stop"] and run.audit[0].actor == "ops-cy"
    assert cancel_workflow("s-cancel", actor="ops-cy") is False  # once


def test_an_operator_cancels_a_run_from_the_command_line_by_its_business_key(
    saga_worker, redis_client, capsys
):
    saga.emit("sagaStarted", {"orderId": "s-cli", "slow": 30})
    wait_for(lambda: [s["step"] for s in steps(redis_client, "s-cli")] == ["reserve", "charge"])
    call_command("workflows", "cancel", "s-cli", "--actor", "ops-dan", "--reason", "duplicate")
    assert "cancelled" in capsys.readouterr().out
    run = finished("s-cli")
    assert run.status == "compensated" and run.ended_by == "duplicate"
    assert [(a.action, a.actor) for a in run.audit] == [("stop", "ops-dan")]
    call_command("workflows", "cancel", "s-cli")
    assert "already compensated" in capsys.readouterr().out


def test_a_run_past_its_deadline_times_out_emits_its_event_and_is_compensated(
    saga_worker, redis_client
):
    redis_client.delete("saga-timeouts")
    saga.emit("sagaStarted", {"orderId": "s-late", "slow": 30}, deadline=timedelta(seconds=2))
    run = finished("s-late", timeout=40)
    assert run.status == "compensated"
    assert run.ended_by == "deadline exceeded"
    assert "sagaTimedOut" in [h.name for h in run.history if h.kind == "event"]
    wait_for(lambda: redis_client.lrange("saga-timeouts", 0, -1))
    timed_out = [json.loads(x) for x in redis_client.lrange("saga-timeouts", 0, -1)]
    assert timed_out == [{"reason": "deadline exceeded"}]


def test_without_compensation_a_dead_letter_is_redriven_and_the_run_goes_on(
    saga_worker, redis_client
):
    first = held.enqueue("book", {"orderId": "h-1", "card": "declined"})
    run = finished(first.correlation_id)
    assert run.status == "dead_lettered"  # on_failure="stop": nothing undone, held for ops
    assert [s["step"] for s in steps(redis_client, "h-1")] == ["book", "pay"]
    dead = jobs(run)["pay"]
    redrive(dead.id, payload={"orderId": "h-1", "card": "ok"}, actor="ops-kim")
    run = wait_for(
        lambda: (r := get_workflow(first.correlation_id)).status == "completed" and r,
        message="the re-driven run never completed",
    )
    assert [s["step"] for s in steps(redis_client, "h-1")] == ["book", "pay", "pay"]
    assert [(a.action, a.actor) for a in run.audit] == [("redrive", "ops-kim")]


def test_an_operator_cancels_a_run_in_the_admin_and_it_is_compensated(saga_worker, redis_client):
    saga.emit("sagaStarted", {"orderId": "s-admin", "slow": 30})
    wait_for(lambda: [s["step"] for s in steps(redis_client, "s-admin")] == ["reserve", "charge"])
    cid = get_workflow("s-admin").correlation_id
    url = f"/admin/celery_workflows/workflowrun/{cid}/"

    viewer = staff("viewer", "view_workflowrun")
    assert b"cw-cancel-button" not in viewer.get(f"{url}change/").content
    assert viewer.post(f"{url}cancel/").status_code == 403

    ops = staff("ops", "view_workflowrun", "cancel_workflowrun")
    assert b"cw-cancel-button" in ops.get(f"{url}change/").content
    page = ops.post(f"{url}cancel/", {"reason": "duplicate order"}, follow=True)
    assert b"Cancelled: its completed steps are being undone." in page.content
    run = finished("s-admin")
    assert run.status == "compensated" and run.ended_by == "duplicate order"
    assert [(a.action, a.actor) for a in run.audit] == [("stop", "ops")]
    assert b"cw-cancel-button" not in ops.get(f"{url}change/").content


def undone(redis_client, order: str) -> list[str]:
    """Which steps' jobs were undone, in the order their undos ran (each undo notes the job
    it undoes)."""
    return [s["compensates"] for s in steps(redis_client, order) if s["compensates"]]


#: the saga's steps that declare an undo
UNDOABLE = ("saga.reserve", "saga.charge")


def completed_forward(run) -> list[str]:
    """The run's completed steps that declare an undo, most recently finished first."""
    done = [h for h in run.history if h.kind == "job" and h.status == "succeeded"]
    done = [h for h in done if h.name in UNDOABLE and not h.compensates]
    return [h.id for h in sorted(done, key=lambda h: h.at, reverse=True)]


def test_a_cancelled_run_is_compensating_until_its_last_undo_has_run(saga_worker, redis_client):
    from celery_workflows import pause_queue, resume_queue

    saga.emit("sagaStarted", {"orderId": "s-paused-undo", "slow": 30})
    wait_for(
        lambda: [s["step"] for s in steps(redis_client, "s-paused-undo")] == ["reserve", "charge"]
    )
    pause_queue("saga.refund", actor="ops")
    try:
        assert cancel_workflow("s-paused-undo", actor="ops")
        # charge stops on the request and completes: it is undone first, on a paused queue
        wait_for(
            lambda: any(
                h.name == "saga.refund" and h.status == "queued"
                for h in get_workflow("s-paused-undo").history
            )
        )
        run = get_workflow("s-paused-undo")
        assert run.status == "compensating" and run.finished_at is None
    finally:
        resume_queue("saga.refund", actor="ops")
    run = finished("s-paused-undo")
    assert run.status == "compensated"
    last_undo = max(h.at for h in run.history if h.kind == "job" and h.compensates)
    assert run.finished_at is not None and run.finished_at >= last_undo
    assert [s["step"] for s in steps(redis_client, "s-paused-undo")][2:] == ["refund", "release"]


@pytest.mark.parametrize("stop", ["cancel", "deadline"])
def test_stopping_a_run_that_is_compensating_still_undoes_every_step_once(
    saga_worker, redis_client, stop
):
    from celery_workflows import pause_queue, resume_queue

    order = f"s-stop-{stop}"
    pause_queue("saga.refund", actor="ops")
    try:
        options = {"deadline": timedelta(seconds=4)} if stop == "deadline" else {}
        saga.emit("sagaStarted", {"orderId": order, "shipFails": True}, **options)
        wait_for(lambda: get_workflow(order).status == "compensating", timeout=20)
        if stop == "cancel":
            assert cancel_workflow(order, actor="ops", reason="customer called")
        else:
            wait_for(lambda: get_workflow(order).ended_by == "deadline exceeded", timeout=20)
        assert get_workflow(order).status == "compensating"
    finally:
        resume_queue("saga.refund", actor="ops")
    run = finished(order)
    assert run.status == "compensated"
    assert undone(redis_client, order) == completed_forward(run)  # each once, newest first
    assert [s["step"] for s in steps(redis_client, order)] == [
        "reserve",
        "charge",
        "ship",
        "refund",
        "release",
    ]


def test_cancelling_while_an_undo_waits_for_its_retry_still_undoes_every_step_once(
    saga_worker, redis_client
):
    order = "s-undo-retry"
    saga.emit("sagaStarted", {"orderId": order, "shipFails": True, "refundRetries": True})
    wait_for(
        lambda: any(
            h.name == "saga.refund" and h.attempts and h.status == "queued"
            for h in get_workflow(order).history
        ),
        timeout=20,
    )
    assert cancel_workflow(order, actor="ops")
    run = finished(order)
    assert run.status == "compensated"
    assert undone(redis_client, order) == completed_forward(run)


def test_redriving_a_dead_lettered_undo_finishes_the_compensation(saga_worker, redis_client):
    order = "s-undo-dead"
    saga.emit("sagaStarted", {"orderId": order, "shipFails": True, "refundFails": True})
    run = finished(order)
    assert run.status == "dead_lettered"  # the refund failed: an operator's turn
    refund = jobs(run)["refund"]
    assert refund.status == "dead" and refund.compensates == jobs(run)["charge"].id
    assert undone(redis_client, order) == []
    redrive(refund.id, payload={"orderId": order}, actor="ops-lee")
    run = wait_for(
        lambda: (r := get_workflow(order)).status in ("compensated", "dead_lettered") and r,
        timeout=20,
        message="the re-driven undo never finished",
    )
    assert run.status == "compensated"
    # the re-driven refund knew what it undid, and the undo went on to the earlier step
    assert undone(redis_client, order) == completed_forward(run)
    assert [(a.action, a.actor) for a in run.audit] == [("redrive", "ops-lee")]
