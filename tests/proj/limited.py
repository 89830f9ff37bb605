"""Queues with limits (:mod:`celery_workflows.limits`), consumed only by the limits tests' own
workers. Every handler notes when it started and ended in the test Redis (``lim:spans``), so a
test can replay how many ran at once, per key, and how fast they started."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import BaseModel

from celery_workflows import Job, JobContext, Lifecycle, Limits, NonRetryableError, WorkflowService
from tests.proj.celery_app import app
from tests.proj.recorder import FAST_RETRY, Recorder, recorder

lim = WorkflowService("lim", app, resources=recorder)

#: a short lease, so that the crash test sees slots of killed workers come back quickly
SHORT_LEASE = Lifecycle(visibility_timeout=3, max_attempts=3, retry=FAST_RETRY)


class CustomerUpdate(BaseModel):
    customer_id: str
    n: int
    sleep: float = 0.2


def span(ctx: JobContext[Recorder], job: Job[Any], queue: str, key: str = "") -> None:
    """Run for ``job.payload['sleep']`` seconds and note the span (start, end) in Redis."""
    payload = job.payload if isinstance(job.payload, dict) else job.payload.model_dump()
    if payload.get("fail"):
        raise NonRetryableError("asked to fail")
    start = time.time()
    time.sleep(float(payload.get("sleep", 0.2)))
    entry = {"job": job.id, "queue": queue, "key": key, "start": start, "end": time.time()}
    entry |= {"attempt": job.attempt, "pid": os.getpid(), "label": payload.get("label")}
    ctx.resources.redis.rpush("lim:spans", json.dumps(entry))


@lim.queue_worker(
    "capped", "At most 3 at once, across every worker", lifecycle=SHORT_LEASE,
    limits=Limits(concurrency=3),
)  # fmt: skip
def capped(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "capped")


@lim.queue_worker(
    "per_customer",
    "One update per customer at a time",
    payload=CustomerUpdate,
    lifecycle=SHORT_LEASE,
    limits=Limits(key="customer_id"),
)
def per_customer(ctx: JobContext[Recorder], job: Job[CustomerUpdate]) -> None:
    span(ctx, job, "per_customer", job.payload.customer_id)


@lim.queue_worker(
    "by_tenant",
    "Two per tenant at a time (a free-form payload)",
    lifecycle=SHORT_LEASE,
    limits=Limits(key="tenant", per_key=2),
)
def by_tenant(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "by_tenant", str(job.payload["tenant"]))


@lim.queue_worker(
    "shared",
    "Three at once in all, at most two of one tenant: a burst cannot take every slot",
    lifecycle=SHORT_LEASE,
    limits=Limits(concurrency=3, key="tenant", per_key=2),
)
def shared(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "shared", str(job.payload["tenant"]))


@lim.queue_worker(
    "capped_and_paced",
    "Two at once, and ten starts a second",
    limits=Limits(concurrency=2, rate="10/s"),
)
def capped_and_paced(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "capped_and_paced")


@lim.queue_worker("paced", "At most 20 starts a second", limits=Limits(rate="20/s"))
def paced(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "paced")


@lim.queue_worker(
    "one_at_a_time", "One at a time: held jobs go by priority", limits=Limits(concurrency=1)
)
def one_at_a_time(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "one_at_a_time")


@lim.queue_worker("start", "Unlimited first step of a flow", emits=["started"])
def start(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    ctx.emit("started", job.payload)


lim.event("limKick")
lim.subscribe("limKick", enqueue="start")
lim.subscribe("started", enqueue="capped")


@lim.queue_worker("sync_profile", "Debounced: runs for the last change of a user in a quiet second")
def sync_profile(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "sync_profile", job.payload["user"])


@lim.queue_worker("page_team", "Throttled: pages a team at most once per 2 s window")
def page_team(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "page_team", job.payload["team"])


lim.event("profileChanged")
lim.subscribe("profileChanged", enqueue="sync_profile", debounce=1.0, key="user")
lim.event("alertRaised")
lim.subscribe("alertRaised", enqueue="page_team", throttle=2.0, key="team")


@lim.queue_worker("digest", "Throttled with no key: one digest per 2 s window in all")
def digest(ctx: JobContext[Recorder], job: Job[Any]) -> None:
    span(ctx, job, "digest")


lim.event("digestDue")
lim.subscribe("digestDue", enqueue="digest", throttle=2.0)
