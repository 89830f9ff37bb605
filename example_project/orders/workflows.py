"""Order fulfilment, as in the reference card: every step is a queue worker that emits an
event; subscriptions decide what runs next. No step calls another.

    orderPlaced          -> validateInventory   (reserves stock; undone by releaseInventory)
    inventoryReserved    -> reviewOrder         (orders above 500 wait for a manager: the
                                                 managers group, then the directors, 24 h each)
    inventoryUnavailable -> notifyBackorder     (remembered; re-checked every night)
    orderApproved        -> processPayment      (charges the card; undone by refundPayment)
                         -> packOrder           (the warehouse packs it, meanwhile)
    orderRejected        -> declineOrder        (stops the order: its steps are undone)
    approvalExpired      -> declineOrder
    paymentProcessed + orderPacked (a join: both, in any order)
                         -> createShipment      (books the carrier; undone by cancelShipment)
    paymentProcessed     -> recordPurchase      (the customer's history, one at a time)
    shipmentCreated      -> sendConfirmation
    orderTimedOut        -> notifyTimeout       (an order not done within two days)
    backordersDue        -> recheckBackorders   (the nightly schedule)

A step that dead-letters - a declined card, a parcel the carrier refuses - makes the order's
completed steps undo themselves in reverse order (the service's ``on_failure="compensate"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from pydantic import BaseModel
from shopsite.celery import app

from celery_workflows import (
    Deciders,
    Job,
    JobContext,
    Lifecycle,
    Limits,
    NonRetryableError,
    RetryStrategy,
    WorkflowService,
    cancel_workflow,
)
from orders import models

#: orders above this total wait for a manager's approval
APPROVAL_THRESHOLD = 500


class Item(BaseModel):
    sku: str
    qty: int
    price: float = 20.0


class Order(BaseModel):
    orderId: str
    items: list[Item]
    card: str = "4242"
    customer: str = "guest"

    @property
    def total(self) -> float:
        return sum(i.qty * i.price for i in self.items)


class CardDeclined(NonRetryableError):
    """The bank said no: retrying will not change that."""


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time: worth another attempt."""


class CarrierRefused(Exception):
    """The carrier rejected the parcel (a hazardous item, say)."""


@dataclass
class Inventory:
    stock: dict[str, int] = field(
        default_factory=lambda: {
            "book": 10**6,
            "lamp": 10**6,
            "desk": 10**6,
            "fireworks": 10**6,
            "sofa": 0,
        }
    )

    def available(self, items: list[Item]) -> bool:
        return all(self.stock.get(i.sku, 0) >= i.qty for i in items)


@dataclass
class PaymentGateway:
    """Talks to the bank. Card 4000 times out on its first try; card 0000 is declined."""

    def charge(self, order: Order, attempt: int, idempotency_key: str) -> str:
        if order.card == "0000":
            raise CardDeclined(f"card ending {order.card} declined")
        if order.card == "4000" and attempt == 1:
            raise GatewayTimeout("payment gateway timed out")
        return f"pay-{idempotency_key[-8:]}"


@dataclass
class Carrier:
    def book(self, order: Order) -> str:
        if any(i.sku == "fireworks" for i in order.items):
            raise CarrierRefused("the carrier does not take fireworks")
        return f"TRK-{order.orderId}"


@dataclass
class Resources:
    inventory: Inventory = field(default_factory=Inventory)
    payments: PaymentGateway = field(default_factory=PaymentGateway)
    carrier: Carrier = field(default_factory=Carrier)


orders = WorkflowService(
    "order",
    app,
    resources=Resources(),
    business_key="orderId",
    on_failure="compensate",
    deadline=timedelta(days=2),
    timeout_event="orderTimedOut",
)
orders.event("orderPlaced", Order)

QUICK_RETRY = RetryStrategy(initial_delay=0.5, max_delay=5, multiplier=2, jitter_factor=0.1)


@orders.queue_worker(
    "validateInventory",
    "Check stock and reserve it",
    payload=Order,
    emits=["inventoryReserved", "inventoryUnavailable"],
    compensate_with="releaseInventory",
    # the shop's Order row, the event and this step's outcome commit together, exactly once
    atomic=True,
)
def validate_inventory(ctx: JobContext[Resources], job: Job[Order]) -> str:
    order = job.payload
    in_stock = ctx.resources.inventory.available(order.items)
    status = models.Order.Status.RESERVED if in_stock else models.Order.Status.BACKORDERED
    models.Order.objects.update_or_create(
        number=order.orderId,
        defaults={"customer": order.customer, "total": order.total, "status": status},
    )
    if in_stock:
        ctx.emit("inventoryReserved", order)
        return "reserved"
    ctx.emit("inventoryUnavailable", order)
    return "unavailable"


@orders.queue_worker(
    "reviewOrder",
    "Large orders wait for a manager",
    payload=Order,
    # the gate's events are emitted by the decision (or its expiry), drawn from here
    emits=["orderApproved", "orderRejected", "approvalExpired"],
)
def review_order(ctx: JobContext[Resources], job: Job[Order]) -> str:
    order = job.payload
    if order.total <= APPROVAL_THRESHOLD:
        ctx.emit("orderApproved", order)
        return "approved automatically"
    ctx.wait_for_human(
        f"Approve order {order.orderId} of {order.total:.2f}?",
        approve_event="orderApproved",
        reject_event="orderRejected",
        payload=order.model_dump(),
        # only the shop's managers decide; undecided after a day, it passes to the directors
        # for another day, and then expires
        deciders=Deciders(groups=["managers"]),
        expires_in=timedelta(hours=24),
        escalate_to=Deciders(groups=["directors"]),
        timeout_event="approvalExpired",
    )
    return "waiting for a manager"


@orders.queue_worker(
    "processPayment",
    "Charge the card",
    payload=Order,
    emits=["paymentProcessed"],
    lifecycle=Lifecycle(visibility_timeout=30, max_attempts=3, retry=QUICK_RETRY),
    compensate_with="refundPayment",
    # the gateway's quota, for every worker together: 50 charges a second, evenly spaced
    limits=Limits(rate="50/s"),
)
def process_payment(ctx: JobContext[Resources], job: Job[Order]) -> str:
    # job.id is stable across attempts: the gateway charges each order once
    payment_id = ctx.resources.payments.charge(job.payload, job.attempt, job.id)
    ctx.emit("paymentProcessed", job.payload)
    return payment_id


class Parcel(BaseModel):
    orderId: str
    parcels: int


@orders.queue_worker("packOrder", "Pick and pack the parcels", payload=Order, emits=["orderPacked"])
def pack_order(ctx: JobContext[Resources], job: Job[Order]) -> int:
    parcels = max(1, sum(i.qty for i in job.payload.items) // 10)
    ctx.emit("orderPacked", Parcel(orderId=job.payload.orderId, parcels=parcels).model_dump())
    return parcels


class ReadyToShip(BaseModel):
    """What the join of payment and packing hands the shipment: each event's payload."""

    paymentProcessed: Order
    orderPacked: Parcel


@orders.queue_worker(
    "createShipment",
    "Book the carrier once paid and packed",
    payload=ReadyToShip,
    emits=["shipmentCreated"],
    lifecycle=Lifecycle(max_attempts=2, retry=QUICK_RETRY),
    compensate_with="cancelShipment",
)
def create_shipment(ctx: JobContext[Resources], job: Job[ReadyToShip]) -> str:
    order = job.payload.paymentProcessed
    tracking = ctx.resources.carrier.book(order)
    ctx.emit("shipmentCreated", {"orderId": order.orderId, "trackingId": tracking})
    return f"{tracking} ({job.payload.orderPacked.parcels} parcel(s))"


@orders.queue_worker(
    "recordPurchase",
    "Add the order to the customer's history",
    payload=Order,
    # a read-modify-write of one customer's record: never two of one customer at once
    limits=Limits(key="customer"),
)
def record_purchase(ctx: JobContext[Resources], job: Job[Order]) -> int:
    key = f"customer:{job.payload.customer}"
    history = ctx.shared_states.get_state(key, {"orders": []}) or {"orders": []}
    history["orders"].append(job.payload.orderId)
    ctx.shared_states.set_state(key, history)
    return len(history["orders"])


@orders.queue_worker("sendConfirmation", "Email the customer", atomic=True)
def send_confirmation(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    models.Order.objects.filter(number=job.payload["orderId"]).update(
        status=models.Order.Status.SHIPPED, tracking=job.payload["trackingId"]
    )
    return f"confirmation sent for {job.payload['orderId']} ({job.payload['trackingId']})"


@orders.queue_worker("notifyBackorder", "Tell the customer the order waits for stock")
def notify_backorder(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    # shared by every run: the nightly recheck (a run of its own) reads it
    ctx.shared_states.merge_state("backorders", {job.payload["orderId"]: job.payload})
    return f"backorder notice sent for {job.payload['orderId']}"


@orders.queue_worker("declineOrder", "Stop an order a manager rejected or did not approve")
def decline_order(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    reason = "approval expired" if job.payload.get("decidedBy") == "system" else "rejected"
    cancel_workflow(ctx.correlation_id, actor="approval", reason=reason)
    return reason


@orders.queue_worker("notifyTimeout", "Tell support an order took too long")
def notify_timeout(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    return f"support notified: {job.payload['reason']}"


@orders.queue_worker("recheckBackorders", "Re-place backordered orders now in stock")
def recheck_backorders(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> int:
    waiting = ctx.shared_states.get_state("backorders", {}) or {}
    ready = {
        k: v
        for k, v in waiting.items()
        if ctx.resources.inventory.available([Item(**i) for i in v["items"]])
    }
    for order in ready.values():
        orders.emit("orderPlaced", order)
    ctx.shared_states.update_state(
        "backorders", lambda cur: {k: v for k, v in (cur or {}).items() if k not in ready}
    )
    return len(ready)


# compensations: each receives the payload of the step it undoes
@orders.queue_worker("releaseInventory", "Release the reserved stock", payload=Order, atomic=True)
def release_inventory(ctx: JobContext[Resources], job: Job[Order]) -> str:
    models.Order.objects.filter(number=job.payload.orderId).update(
        status=models.Order.Status.CANCELLED
    )
    return f"released stock of {job.payload.orderId}"


@orders.queue_worker("refundPayment", "Refund the charge", payload=Order)
def refund_payment(ctx: JobContext[Resources], job: Job[Order]) -> str:
    return f"refunded {job.payload.orderId}"


@orders.queue_worker("cancelShipment", "Cancel the carrier booking", payload=ReadyToShip)
def cancel_shipment(ctx: JobContext[Resources], job: Job[ReadyToShip]) -> str:
    return f"shipment of {job.payload.orderPacked.orderId} cancelled"


orders.subscribe("orderPlaced", enqueue="validateInventory")
orders.subscribe("inventoryReserved", enqueue="reviewOrder")
orders.subscribe("inventoryUnavailable", enqueue="notifyBackorder")
orders.subscribe("orderApproved", enqueue="processPayment")
orders.subscribe("orderApproved", enqueue="packOrder")
orders.subscribe("orderRejected", enqueue="declineOrder")
orders.subscribe("approvalExpired", enqueue="declineOrder")
orders.join(["paymentProcessed", "orderPacked"], enqueue="createShipment")
orders.subscribe("paymentProcessed", enqueue="recordPurchase")
orders.subscribe("shipmentCreated", enqueue="sendConfirmation")
orders.subscribe("orderTimedOut", enqueue="notifyTimeout")
orders.subscribe("backordersDue", enqueue="recheckBackorders")

orders.schedule(
    "nightlyBackorders",
    cron="0 3 * * *",
    timezone="Europe/Berlin",
    emit="backordersDue",
    concurrency="forbid",
    missed="once",
)
