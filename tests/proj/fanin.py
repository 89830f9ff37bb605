"""A join and a map for the fan-in tests (:mod:`celery_workflows.joins`, :mod:`.gathers`).

    fanOrdered -> charge -fanCharged--\\
    fanOrdered -> reserve -fanReserved-> (join) ship

charge is undone by refund. The payload steers it: ``barrier: true`` makes charge and reserve
of one run wait for each other in Redis, so that they finish at the same instant (on two
workers when each consumes one of them); ``stallOnce: true`` makes charge's first attempt
note ``fan:stalled:<order>`` and hang (a test kills its worker); ``reserveFails: true``
dead-letters reserve. ship notes the payload it received in ``fan:shipped`` and each refund in
``fan:refunded`` (the test Redis).

    fanBatch -> split -(map)-> resize x N -(gather)-> collect
    fanLenientBatch -> splitLenient -(map)-> resize x N -(gather, continue)-> collect

A batch's payload: ``images`` (one branch each), ``fail`` (indexes whose branch dead-letters),
``stallOnce`` (an index whose first attempt notes ``fan:stalled:<image>`` and hangs) and
``sleep`` (seconds each branch takes). collect notes what it received in ``fan:collected``.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from celery_workflows import (
    Gather,
    Job,
    JobContext,
    Lifecycle,
    NonRetryableError,
    WorkflowService,
    deliver,
)
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

fan = WorkflowService("fan", app, resources=recorder, business_key="order")
fan.event("fanOrdered")
#: a short lease: a killed worker's attempt is taken over within seconds
SHORT = Lifecycle(visibility_timeout=3, max_attempts=3, retry=FAST_RETRY)
QUEUES = ["fan.charge", "fan.reserve", "fan.ship", "fan.refund"]
MAP_QUEUES = ["fan.split", "fan.splitLenient", "fan.resize", "fan.collect"]
STOP_QUEUES = ["fanstop.split", "fanstop.resize", "fanstop.collect"]


def barrier(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    """Wait (up to 5 s) until both branches of this run got here."""
    key = f"fan:barrier:{job.correlation_id}"
    r = ctx.resources.redis
    r.incr(key)
    r.expire(key, 60)
    until = time.monotonic() + 5
    while int(r.get(key) or 0) < 2 and time.monotonic() < until:
        time.sleep(0.0005)


@fan.queue_worker("charge", "Charge the card", result_event="fanCharged", lifecycle=SHORT,
                  compensate_with="refund")  # fmt: skip
def charge(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    order = job.payload["order"]
    ctx.resources.redis.set(f"fan:charging:{order}", job.id, ex=60)
    if job.payload.get("stallOnce") and job.attempt == 1:
        ctx.resources.redis.set(f"fan:stalled:{order}", job.id)
        time.sleep(60)
    if job.payload.get("barrier"):
        barrier(ctx, job)
    return {"order": order, "paid": job.payload.get("amount", 10)}


@fan.queue_worker("reserve", "Reserve the stock", result_event="fanReserved", lifecycle=SHORT)
def reserve(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    if job.payload.get("reserveFails"):
        # fail once the charge has started, so it has something to undo (a charge still queued
        # when its run stops is cancelled, not undone - and the run ends dead-lettered)
        key, until = f"fan:charging:{job.payload['order']}", time.monotonic() + 10
        while not ctx.resources.redis.exists(key) and time.monotonic() < until:
            time.sleep(0.01)
        raise NonRetryableError("out of stock")
    if job.payload.get("barrier"):
        barrier(ctx, job)
    return {"order": job.payload["order"], "sku": "A-1"}


class Charged(BaseModel):
    order: str
    paid: int


class Reserved(BaseModel):
    order: str
    sku: str


class Shipment(BaseModel):
    """What the join hands ship: one field per event it waited for."""

    fanCharged: Charged
    fanReserved: Reserved


@fan.queue_worker("ship", "Ship once paid and reserved", payload=Shipment, lifecycle=SHORT)
def ship(ctx: JobContext[Recorder], job: Job[Shipment]) -> None:
    entry = {"run": job.correlation_id, "job": job.id, "payload": job.payload.model_dump()}
    ctx.resources.redis.rpush("fan:shipped", json.dumps(entry))


@fan.queue_worker("refund", "Refund the card", lifecycle=SHORT)
def refund(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:refunded", job.payload["order"])


class Batch(BaseModel):
    images: list[str]
    fail: list[int] = []
    stallOnce: int | None = None
    sleep: float = 0.0


def branches(batch: Batch) -> list[dict[str, Any]]:
    return [
        {
            "image": image,
            "fail": i in batch.fail,
            "stall": i == batch.stallOnce,
            "sleep": batch.sleep,
        }
        for i, image in enumerate(batch.images)
    ]


@fan.queue_worker("split", "One branch per image", payload=Batch, lifecycle=SHORT,
                  gather=Gather(each="resize", into="collect"))  # fmt: skip
def split(ctx: JobContext[Recorder], job: Job[Batch]) -> int:
    return ctx.map(branches(job.payload))


@fan.queue_worker("splitLenient", "One branch per image; gather without failed ones",
                  payload=Batch, lifecycle=SHORT,
                  gather=Gather(each="resize", into="collect", on_failure="continue"))  # fmt: skip
def split_lenient(ctx: JobContext[Recorder], job: Job[Batch]) -> int:
    return ctx.map(branches(job.payload))


class Image(BaseModel):
    image: str
    fail: bool = False
    stall: bool = False
    sleep: float = 0.0


@fan.queue_worker(
    "resize",
    "Resize one image",
    payload=Image,
    lifecycle=Lifecycle(visibility_timeout=3, max_attempts=2, retry=FAST_RETRY),
)
def resize(ctx: JobContext[Recorder], job: Job[Image]) -> dict[str, Any]:
    image = job.payload
    if image.stall and job.attempt == 1:
        ctx.resources.redis.set(f"fan:stalled:{image.image}", job.id)
        time.sleep(60)
    if image.fail:
        raise NonRetryableError(f"cannot read {image.image}")
    time.sleep(image.sleep)
    return {"image": image.image, "size": len(image.image)}


@fan.queue_worker("collect", "Receive every branch's result", lifecycle=SHORT)
def collect(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    entry = {"run": job.correlation_id, "payload": job.payload}
    ctx.resources.redis.rpush("fan:collected", json.dumps(entry))


@fan.queue_worker("longTask", "Reports its progress, then waits for the test's go", lifecycle=SHORT)
def long_task(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    r, run = ctx.resources.redis, job.correlation_id
    first = ctx.progress(0.25, "1 of 4 files <b>")
    again = ctx.progress(0.3, "a moment later")  # within half a second: not written
    r.set(f"fan:progress:{run}", json.dumps([first, again]))
    until = time.monotonic() + 30
    while r.get(f"fan:go:{run}") is None and time.monotonic() < until:
        time.sleep(0.02)
    ctx.progress(1, "all 4 files")
    return "done"


@fan.queue_worker("requestPayment", "Ask the payment provider; wait for its webhook",
                  lifecycle=SHORT, emits=["pspConfirmed", "pspTimedOut"])  # fmt: skip
def request_payment(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    timeout = job.payload.get("timeout")
    if job.payload.get("fastProvider"):  # the webhook beats this step's own outcome
        deliver("pspConfirmed", {"order": job.payload["order"], "fast": True},
                correlation_id=job.correlation_id, source="psp")  # fmt: skip
    ctx.wait_for_event(
        "pspConfirmed",
        timeout=timedelta(seconds=timeout) if timeout else None,
        timeout_event="pspTimedOut" if timeout else None,
        payload={"order": job.payload["order"]},
    )


@fan.queue_worker("fulfil", "Paid: fulfil the order", lifecycle=SHORT)
def fulfil(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:fulfilled", json.dumps(job.payload))


@fan.queue_worker("abandon", "No payment in time", lifecycle=SHORT)
def abandon(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:abandoned", json.dumps(job.payload))


fan.event("fanCheckout")
fan.event("pspConfirmed")
fan.subscribe("fanCheckout", enqueue="requestPayment")
fan.subscribe("pspConfirmed", enqueue="fulfil")
fan.subscribe("pspTimedOut", enqueue="abandon")
CHECKOUT_QUEUES = ["fan.requestPayment", "fan.fulfil", "fan.abandon"]


# -- child workflows: fan's delegate starts a run of billing and waits for its end
#
#    fanParent -> delegate -(start_child invoiceRequested)-> billing: invoice -> sendInvoice
#    invoiceDone -> afterInvoice, invoiceFailed -> invoiceLost (the child's end, in fan's run)
#
# the child's payload: ``fail`` dead-letters invoice; ``slow`` seconds makes sendInvoice take
# that long (it stops early when asked to cancel). invoice is undone by voidInvoice.

billing = WorkflowService("billing", app, resources=recorder, business_key="order")
BILLING_QUEUES = ["billing.invoice", "billing.sendInvoice", "billing.voidInvoice"]


@fan.queue_worker("delegate", "Have billing invoice it; wait for the child run", lifecycle=SHORT,
                  emits=["invoiceRequested", "invoiceDone", "invoiceFailed"])  # fmt: skip
def delegate(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return ctx.start_child(
        "invoiceRequested", job.payload, done_event="invoiceDone", failed_event="invoiceFailed"
    )


@billing.queue_worker("invoice", "Write the invoice", lifecycle=SHORT,
                      result_event="invoiceWritten", compensate_with="voidInvoice")  # fmt: skip
def invoice(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    if job.payload.get("fail"):
        raise NonRetryableError("no billing address")
    return {**job.payload, "invoice": f"INV-{job.payload['order']}"}


@billing.queue_worker("sendInvoice", "Send it", lifecycle=SHORT)
def send_invoice(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    until = time.monotonic() + float(job.payload.get("slow", 0))
    while time.monotonic() < until:
        if ctx.cancel_requested:
            raise NonRetryableError("cancelled while sending")
        time.sleep(0.05)
    return {"invoice": job.payload["invoice"], "sent": True}


@billing.queue_worker("voidInvoice", "Void the invoice", lifecycle=SHORT)
def void_invoice(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:voided", job.payload["order"])


@fan.queue_worker("afterInvoice", "The child completed", lifecycle=SHORT)
def after_invoice(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:children", json.dumps({"done": True, **job.payload}))


@fan.queue_worker("invoiceLost", "The child failed", lifecycle=SHORT)
def invoice_lost(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:children", json.dumps({"done": False, **job.payload}))


fan.event("fanParent")
fan.subscribe("fanParent", enqueue="delegate")
fan.subscribe("invoiceDone", enqueue="afterInvoice")
fan.subscribe("invoiceFailed", enqueue="invoiceLost")
billing.subscribe("invoiceRequested", enqueue="invoice")
billing.subscribe("invoiceWritten", enqueue="sendInvoice")
PARENT_QUEUES = ["fan.delegate", "fan.afterInvoice", "fan.invoiceLost"]


# -- reruns: a run that stops at a failed step, for an operator
#
#    rrStarted -> first -rrFirstDone-> second (dead-letters when ``bad``) -rrSecondDone-> third
#
# each step counts its runs in ``rr:<step>`` (the test Redis)

rr = WorkflowService("rr", app, resources=recorder, business_key="order", on_failure="stop")
RR_QUEUES = ["rr.first", "rr.second", "rr.third"]
ONCE = Lifecycle(max_attempts=1)


@rr.queue_worker("first", "Look the order up", result_event="rrFirstDone", lifecycle=ONCE)
def rr_first(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    ctx.resources.redis.incr("rr:first")
    return {**job.payload, "customer": "C-7"}


@rr.queue_worker("second", "Charge", result_event="rrSecondDone", lifecycle=ONCE)
def rr_second(ctx: JobContext[Recorder], job: Job[Any]) -> dict[str, Any]:
    ctx.resources.redis.incr("rr:second")
    if job.payload.get("bad"):
        raise NonRetryableError("card expired")
    return job.payload


@rr.queue_worker("third", "Ship", lifecycle=ONCE)
def rr_third(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    ctx.resources.redis.incr("rr:third")
    return f"shipped {job.payload['order']} to {job.payload['customer']}"


rr.event("rrStarted")
rr.subscribe("rrStarted", enqueue="first")
rr.subscribe("rrFirstDone", enqueue="second")
rr.subscribe("rrSecondDone", enqueue="third")


# -- approvals inside branches: each branch of a map asks a person; the run waits for each in turn


@fan.queue_worker("splitForApproval", "One approval per item", lifecycle=SHORT,
                  gather=Gather(each="askApproval", into="collect"))  # fmt: skip
def split_for_approval(ctx: JobContext[Recorder], job: Job[Any]) -> int:
    return ctx.map([{"item": item} for item in job.payload["items"]])


@fan.queue_worker("askApproval", "A person approves this item", lifecycle=SHORT,
                  emits=["itemApproved", "itemRejected"])  # fmt: skip
def ask_approval(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.wait_for_human(
        f"Approve {job.payload['item']}?",
        approve_event="itemApproved",
        reject_event="itemRejected",
        payload=job.payload,
    )


@fan.queue_worker("itemDecided", "Note the decision", lifecycle=SHORT)
def item_decided(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.resources.redis.rpush("fan:decided", json.dumps(job.payload))


fan.event("fanApprovals")
fan.subscribe("fanApprovals", enqueue="splitForApproval")
fan.subscribe("itemApproved", enqueue="itemDecided")
fan.subscribe("itemRejected", enqueue="itemDecided")
APPROVAL_QUEUES = ["fan.splitForApproval", "fan.askApproval", "fan.itemDecided", "fan.collect"]


#: the same map in a service that stops a failed run for an operator instead of compensating
fanstop = WorkflowService("fanstop", app, resources=recorder, on_failure="stop")
fanstop.queue_worker("split", payload=Batch, gather=Gather(each="resize", into="collect"))(split)
fanstop.queue_worker("resize", payload=Image)(resize)
fanstop.queue_worker("collect")(collect)
fanstop.event("fanstopBatch")
fanstop.subscribe("fanstopBatch", enqueue="split")

fan.event("fanBatch")
fan.event("fanLenientBatch")
fan.subscribe("fanBatch", enqueue="split")
fan.subscribe("fanLenientBatch", enqueue="splitLenient")
fan.subscribe("fanOrdered", enqueue="charge")
fan.subscribe("fanOrdered", enqueue="reserve")
fan.join(["fanCharged", "fanReserved"], enqueue="ship")

if os.environ.get("WORKFLOWS_TEST_LOOSE_JOIN"):
    # for the check test: a join waiting for an event that nothing emits or declares
    fan.join(["fanCharged", "fanInsured"], enqueue="ship", name="loose")
