"""An order workflow driven only by events, for the events and subscriptions tests.

validate --stockChecked(inStock)--> charge --paymentProcessed--> ship --shipmentCreated--> confirm
         --stockChecked(!inStock)-> notifyBackorder   (consumed by a separate worker process)
         --stockChecked-----------> audit              (fan-out)
charge   --paymentFailed----------> releaseStock       (compensation)
"""

from __future__ import annotations

import json
import os
from typing import Any

from django.db import transaction
from pydantic import BaseModel

from celery_workflows import Event, Job, JobContext, Lifecycle, NonRetryableError, WorkflowService
from celery_workflows.signals import workflow_finished
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

shop = WorkflowService("shop", app, resources=recorder, business_key="orderId")


class OrderPlaced(BaseModel):
    orderId: str
    inStock: bool = True
    card: str = "ok"


shop.event("orderPlaced", OrderPlaced)


class CardDeclined(NonRetryableError):
    pass


def order_of(job: Job[Any]) -> dict[str, Any]:
    return dict(job.payload)


@shop.queue_worker("validate", "Check stock", emits=["stockChecked"])
def validate(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job, step="validate")
    ctx.emit("stockChecked", order_of(job))


@shop.queue_worker(
    "charge",
    "Charge the card",
    emits=["paymentProcessed", "paymentFailed"],
    lifecycle=Lifecycle(max_attempts=2, retry=FAST_RETRY),
)
def charge(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job, step="charge")
    if job.payload["card"] == "declined":
        ctx.emit("paymentFailed", {"orderId": job.payload["orderId"]})  # compensation
        raise CardDeclined("card declined")
    ctx.emit("paymentProcessed", order_of(job))


@shop.queue_worker("ship", "Schedule delivery", result_event="shipmentCreated")
def ship(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    ctx.resources.record(job, step="ship")
    return {"orderId": job.payload["orderId"], "tracking": f"T-{job.payload['orderId']}"}


@shop.queue_worker("confirm", "Send the confirmation")
def confirm(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.record(job, step="confirm")
    return f"confirmed {job.payload['orderId']} ({job.payload['tracking']})"


@shop.queue_worker("notifyBackorder", "Tell the customer it is on backorder")
def notify_backorder(ctx: JobContext[Recorder], job: Job[Any]) -> int:
    ctx.resources.record(job, step="notifyBackorder")
    return os.getpid()


@shop.queue_worker("audit", "Keep an audit copy")
def audit(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job, step="audit")


@shop.queue_worker("releaseStock", "Undo the reservation")
def release_stock(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job, step="releaseStock")


@shop.queue_worker(
    "rollsBack", "Emits inside a transaction that rolls back", emits=["neverSent", "sent"]
)
def rolls_back(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.record(job, step="rollsBack")
    try:
        with transaction.atomic():
            ctx.emit("neverSent", {})
            raise RuntimeError("business rule failed; undo")
    except RuntimeError:
        pass
    ctx.emit("sent", {})


shop.subscribe("orderPlaced", enqueue="validate")
shop.subscribe(
    "stockChecked", enqueue="charge", when=lambda e: e.payload["inStock"], name="in-stock"
)
shop.subscribe(
    "stockChecked",
    enqueue="notifyBackorder",
    when=lambda e: not e.payload["inStock"],
    name="backorder",
)
shop.subscribe(
    "stockChecked", enqueue="audit", map=lambda e: {"seen": e.payload["orderId"]}, name="audit"
)
shop.subscribe("paymentProcessed", enqueue="ship")
shop.subscribe("shipmentCreated", enqueue="confirm")
shop.subscribe("paymentFailed", enqueue="releaseStock")


@shop.on("shipmentCreated")
def remember_shipment(ctx: JobContext[Recorder], event: Event) -> None:
    """A handler-style subscription: a side effect with its own retries."""
    ctx.resources.redis.rpush("shipments", json.dumps(event.to_json()))


@workflow_finished.connect
def _record_finished(
    sender: Any = None, correlation_id: str = "", status: str = "", **kw: Any
) -> None:
    recorder.redis.rpush(
        "finished", json.dumps({"correlation_id": correlation_id, "status": status})
    )


if os.environ.get("WORKFLOWS_TEST_BROKEN_GRAPH"):
    shop.subscribe("orderPlaced", enqueue="doesNotExist", name="broken")

#: queues the main shop worker consumes; notifyBackorder has a worker of its own
MAIN_QUEUES = [w.qualified_name for w in shop.queues.values() if w.name != "notifyBackorder"]

# rollsBack's events only show what was announced; nothing needs to react to them
shop.event("neverSent", terminal=True)
shop.event("sent", terminal=True)
