"""Atomic steps (tests/e2e/test_atomic_steps.py): a handler that writes a ``Shipment`` row with
the ORM, emits an event, and then - as its payload asks - fails, sleeps past a kill or a lost
lease, or finishes. ``atom.shipLoose`` is the same handler without ``atomic=True``: what the
tests show would happen without it."""

from __future__ import annotations

import os
import time
from typing import Any

from django.db import transaction

from celery_workflows import Job, JobContext, Lifecycle, WorkflowService
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

atom = WorkflowService("atom", app, resources=recorder)
LIFECYCLE = Lifecycle(visibility_timeout=3, max_attempts=4, retry=FAST_RETRY)


def ship(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    # imported here: tests.proj.celery_app imports this module before Django is set up
    from tests.proj.models import Shipment

    p = job.payload
    Shipment.objects.create(order_id=p["orderId"], attempt=job.attempt, queue=job.queue)
    ctx.emit("atomShipped", {"orderId": p["orderId"], "attempt": job.attempt})
    if p.get("discarded"):  # an inner block the handler rolls back itself
        try:
            with transaction.atomic():
                Shipment.objects.create(order_id=p["orderId"], attempt=0, queue=job.queue)
                ctx.emit("atomShipped", {"orderId": p["orderId"], "attempt": 0})
                raise LookupError("changed its mind")
        except LookupError:
            pass
    if p.get("afterCommit"):  # the handler's own callback: runs once the step committed
        transaction.on_commit(lambda: ctx.resources.record(job, committed=True))
    ctx.resources.record(job, wrote=True)
    if p.get("extend"):  # refused in an atomic step
        ctx.extend_lease()
    if job.attempt in p.get("failOn", []):
        raise RuntimeError(f"failed after its write (attempt {job.attempt})")
    if job.attempt in p.get("sleepOn", []):
        time.sleep(float(p["sleep"]))
    ctx.resources.record(job, done=True)
    return f"shipped by attempt {job.attempt}"


atom.queue_worker(
    "ship",
    "Ships an order: its row, its event and its outcome in one transaction",
    lifecycle=LIFECYCLE,
    emits=["atomShipped"],
    atomic=True,
)(ship)
atom.queue_worker(
    "shipLoose", "The same handler, not atomic", lifecycle=LIFECYCLE, emits=["atomShipped"]
)(ship)


@atom.queue_worker("notify", "Runs once per atomShipped event", lifecycle=LIFECYCLE)
def notify(ctx: JobContext[Recorder], job: Job[Any]) -> str:
    return f"notified of attempt {job.payload['attempt']}"


atom.subscribe("atomShipped", enqueue="notify")


if os.environ.get("ATOM_LONG_LEASE"):  # tests/e2e/test_atomic_steps.py: manage.py check warns
    atom.queue_worker(
        "shipSlowly",
        "An atomic step whose transaction may stay open for two minutes",
        lifecycle=Lifecycle(visibility_timeout=120),
        atomic=True,
    )(ship)
