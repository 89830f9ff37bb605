"""The toolkit's side of the benchmark: queue workers linked by events and subscriptions,
doing the same business work as :mod:`bench.plain_app`, on their own worker."""

import os
from typing import Any

import redis
from celery import Celery

from celery_workflows import Gather, Job, JobContext, Limits, WorkflowService

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
# Celery's Django fixup closes every DB connection around every task unless this is set;
# reconnecting to PostgreSQL per job would cost more than the ledger itself (see README)
app.conf.CELERY_DB_REUSE_MAX = 1000

from bench.work import (  # noqa: E402
    STEPS,
    branch_result,
    counter,
    gathered,
    hop,
    next_payload,
    timed,
    work,
)

bench = WorkflowService("bench", app, resources=counter)
QUEUES = ["bench.step", *(f"bench.wf{k}" for k in range(1, STEPS + 1))]


@bench.queue_worker("step", "One unit of business work")
def step(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    work(job.payload["counter"], job.payload["io_ms"])


def _declare(k: int) -> None:
    @bench.queue_worker(f"wf{k}", f"workflow step {k}", emits=[f"wf{k}done"] if k < STEPS else [])
    def step_k(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
        hop(job.payload, k)
        if k < STEPS:
            ctx.emit(f"wf{k}done", next_payload(job.payload))
        else:
            counter.incr(job.payload["counter"])

    if k < STEPS:
        bench.subscribe(f"wf{k}done", enqueue=f"wf{k + 1}")


for _k in range(1, STEPS + 1):
    _declare(_k)


#: the limits scenario: the same work with no limit, under a cap of 4 and under 100 starts/s
LIMIT_CAP, LIMIT_RATE = 4, 100
LIMITED_QUEUES = ["bench.free", "bench.capped", "bench.paced"]


@bench.queue_worker("free", "No limit")
def free(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    timed(job.payload)


@bench.queue_worker("capped", "At most 4 at once", limits=Limits(concurrency=LIMIT_CAP))
def capped(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    timed(job.payload)


@bench.queue_worker("paced", "100 starts a second", limits=Limits(rate=f"{LIMIT_RATE}/s"))
def paced(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    timed(job.payload)


#: the fan-out scenario: N branches of no work and their gather; and a join of two events
FANOUT_QUEUES = [
    "bench.fanout", "bench.branch", "bench.gather", "bench.left", "bench.right", "bench.joined",
]  # fmt: skip


@bench.queue_worker("fanout", "One branch per item", gather=Gather(each="branch", into="gather"))
def fanout(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    where = {"counter": job.payload["counter"], "hops": job.payload["hops"]}
    ctx.map([where] * job.payload["n"])


@bench.queue_worker("branch", "No work")
def branch(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> dict[str, Any]:
    return {**job.payload, **branch_result(job.payload)}


@bench.queue_worker("gather", "Every branch's result")
def gather(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    results = job.payload["results"]
    gathered(results, results[0]["counter"], results[0]["hops"])


@bench.queue_worker("left", "One side of the join", result_event="leftDone")
def left(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> dict[str, Any]:
    return {**job.payload, **branch_result(job.payload)}


@bench.queue_worker("right", "The other side", result_event="rightDone")
def right(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> dict[str, Any]:
    return {**job.payload, **branch_result(job.payload)}


@bench.queue_worker("joined", "After both")
def joined(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    sides = [job.payload["leftDone"], job.payload["rightDone"]]
    gathered(sides, sides[0]["counter"], sides[0]["hops"])


bench.event("joinStarted")
bench.subscribe("joinStarted", enqueue="left")
bench.subscribe("joinStarted", enqueue="right")
bench.join(["leftDone", "rightDone"], enqueue="joined")
