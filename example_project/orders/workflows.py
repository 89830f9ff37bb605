"""Order fulfilment, as in the reference card: every step is a queue worker that emits an
event; subscriptions decide what runs next. No step calls another.

    orderPlaced          -> validateInventory
    inventoryReserved    -> processPayment
    inventoryUnavailable -> notifyBackorder
    paymentProcessed     -> createShipment
    paymentFailed        -> handlePaymentFailure   (compensation: release the stock)
    shipmentCreated      -> sendConfirmation
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from shopsite.celery import app

from celery_workflows import (
    Job,
    JobContext,
    Lifecycle,
    NonRetryableError,
    RetryStrategy,
    WorkflowService,
)


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    orderId: str
    items: list[Item]
    card: str = "4242"


class CardDeclined(NonRetryableError):
    """The bank said no: retrying will not change that."""


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time: worth another attempt."""


@dataclass
class Inventory:
    stock: dict[str, int] = field(default_factory=lambda: {"book": 10, "lamp": 3, "sofa": 0})

    def available(self, items: list[Item]) -> bool:
        return all(self.stock.get(i.sku, 0) >= i.qty for i in items)


@dataclass
class PaymentGateway:
    """Talks to the bank. Card 4000 times out on its first try; card 0000 is declined."""

    def charge(self, order: Order, attempt: int) -> str:
        if order.card == "0000":
            raise CardDeclined(f"card ending {order.card} declined")
        if order.card == "4000" and attempt == 1:
            raise GatewayTimeout("payment gateway timed out")
        return f"pay-{order.orderId}"


@dataclass
class Resources:
    inventory: Inventory = field(default_factory=Inventory)
    payments: PaymentGateway = field(default_factory=PaymentGateway)


orders = WorkflowService("order", app, resources=Resources())
orders.event("orderPlaced", Order)

QUICK_RETRY = RetryStrategy(initial_delay=0.5, max_delay=5, multiplier=2, jitter_factor=0.1)


@orders.queue_worker(
    "validateInventory",
    "Check stock availability",
    payload=Order,
    emits=["inventoryReserved", "inventoryUnavailable"],
)
def validate_inventory(ctx: JobContext[Resources], job: Job[Order]) -> str:
    order = job.payload
    if ctx.resources.inventory.available(order.items):
        ctx.emit("inventoryReserved", order)
        return "reserved"
    ctx.emit("inventoryUnavailable", order)
    return "unavailable"


@orders.queue_worker(
    "processPayment",
    "Charge the card",
    payload=Order,
    emits=["paymentProcessed", "paymentFailed"],
    lifecycle=Lifecycle(visibility_timeout=30, max_attempts=3, retry=QUICK_RETRY),
)
def process_payment(ctx: JobContext[Resources], job: Job[Order]) -> str:
    order = job.payload
    try:
        payment_id = ctx.resources.payments.charge(order, job.attempt)
    except CardDeclined:
        ctx.emit("paymentFailed", {"orderId": order.orderId, "items": order.model_dump()["items"]})
        raise  # still dead-lettered, for an operator to see
    ctx.emit("paymentProcessed", {"orderId": order.orderId, "paymentId": payment_id})
    return payment_id


@orders.queue_worker("createShipment", "Schedule delivery", result_event="shipmentCreated")
def create_shipment(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> dict[str, str]:
    return {"orderId": job.payload["orderId"], "trackingId": f"TRK-{job.payload['orderId']}"}


@orders.queue_worker("sendConfirmation", "Email the customer")
def send_confirmation(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    return f"confirmation sent for {job.payload['orderId']} ({job.payload['trackingId']})"


@orders.queue_worker("notifyBackorder", "Tell the customer the order waits for stock")
def notify_backorder(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    return f"backorder notice sent for {job.payload['orderId']}"


@orders.queue_worker("handlePaymentFailure", "Release the reserved stock (compensation)")
def handle_payment_failure(ctx: JobContext[Resources], job: Job[dict[str, Any]]) -> str:
    return f"released stock of {job.payload['orderId']}"


orders.subscribe("orderPlaced", enqueue="validateInventory")
orders.subscribe("inventoryReserved", enqueue="processPayment")
orders.subscribe("inventoryUnavailable", enqueue="notifyBackorder")
orders.subscribe("paymentProcessed", enqueue="createShipment")
orders.subscribe("paymentFailed", enqueue="handlePaymentFailure")
orders.subscribe("shipmentCreated", enqueue="sendConfirmation")
