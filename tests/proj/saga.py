"""A saga for the compensation, deadline and expiry tests.

    sagaStarted -> reserve -reserved-> charge -charged-> ship
    reserve is undone by release, charge by refund (declared with compensate_with).

The payload steers it: ``card: "declined"`` dead-letters charge, ``shipFails`` dead-letters
ship, ``slow: seconds`` makes charge take that long, ``refundFails`` dead-letters refund and
``refundRetries`` makes refund's first attempt ask for a retry in 2 seconds. Every step and
every undo is appended to ``saga:<orderId>`` in the test Redis, in the order they ran.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from celery_workflows import Job, JobContext, Lifecycle, NonRetryableError, WorkflowService
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

saga = WorkflowService(
    "saga", app, resources=recorder, business_key="orderId", timeout_event="sagaTimedOut"
)
ONCE = Lifecycle(max_attempts=1, retry=FAST_RETRY)


def note(ctx: JobContext[Recorder], job: Job[Any], step: str) -> None:
    entry = {"step": step, "job": job.id, "compensates": ctx.compensating_for}
    ctx.resources.redis.rpush(f"saga:{job.payload['orderId']}", json.dumps(entry))


@saga.queue_worker("reserve", "Reserve stock", emits=["reserved"], compensate_with="release")
def reserve(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    note(ctx, job, "reserve")
    ctx.emit("reserved", job.payload)


@saga.queue_worker(
    "charge", "Charge the card", emits=["charged"], compensate_with="refund", lifecycle=ONCE
)
def charge(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    note(ctx, job, "charge")
    deadline = time.monotonic() + float(job.payload.get("slow", 0))
    while time.monotonic() < deadline and not ctx.cancel_requested:
        time.sleep(0.1)
    if job.payload.get("card") == "declined":
        raise NonRetryableError("card declined")
    ctx.emit("charged", job.payload)


@saga.queue_worker("ship", "Ship the order", lifecycle=ONCE)
def ship(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    note(ctx, job, "ship")
    if job.payload.get("shipFails"):
        raise NonRetryableError("carrier refused the parcel")
    return "shipped"


@saga.queue_worker("release", "Release the reserved stock")
def release(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    note(ctx, job, "release")


@saga.queue_worker("refund", "Refund the charge", lifecycle=Lifecycle(max_attempts=3))
def refund(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    if job.payload.get("refundRetries") and job.attempt == 1:
        ctx.retry(delay_seconds=2, reason="the payment provider asks to come back")
    if job.payload.get("refundFails"):
        raise NonRetryableError("the payment provider refused the refund")
    note(ctx, job, "refund")


@saga.queue_worker("onTimeout", "Tell someone the order timed out")
def on_timeout(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("saga-timeouts", json.dumps(job.payload))


saga.subscribe("sagaStarted", enqueue="reserve")
saga.subscribe("reserved", enqueue="charge")
saga.subscribe("charged", enqueue="ship")
saga.subscribe("sagaTimedOut", enqueue="onTimeout")

#: fired by hand in the concurrency tests: their runs stay open while charge is slow
saga.schedule(
    "forbidden",
    every=timedelta(hours=1),
    emit="sagaStarted",
    payload={"orderId": "sched-forbid", "slow": 30},
    concurrency="forbid",
)
saga.schedule(
    "replacing",
    every=timedelta(hours=1),
    emit="sagaStarted",
    payload={"orderId": "sched-replace", "slow": 30},
    concurrency="replace",
)

#: a service whose failed runs wait for an operator instead of undoing anything
held = WorkflowService("held", app, resources=recorder, on_failure="stop")


@held.queue_worker("book", "Book a room", emits=["booked"], compensate_with="unbook")
def book(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    note(ctx, job, "book")
    ctx.emit("booked", job.payload)


@held.queue_worker("pay", "Take the deposit", lifecycle=ONCE)
def pay(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    note(ctx, job, "pay")
    if job.payload.get("card") == "declined":
        raise NonRetryableError("card declined")
    return "paid"


@held.queue_worker("unbook", "Cancel the booking")
def unbook(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    note(ctx, job, "unbook")


held.subscribe("booked", enqueue="pay")

QUEUES = [spec.qualified_name for s in (saga, held) for spec in s.queues.values()]
