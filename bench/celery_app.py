"""The toolkit's side of the benchmark: queue workers linked by events and subscriptions,
doing the same business work as :mod:`bench.plain_app`, on their own worker."""

import os
from typing import Any

import redis
from celery import Celery

from celery_workflows import Job, JobContext, Limits, WorkflowService

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
# Celery's Django fixup closes every DB connection around every task unless this is set;
# reconnecting to PostgreSQL per job would cost more than the ledger itself (see README)
app.conf.CELERY_DB_REUSE_MAX = 1000

from bench.work import STEPS, counter, hop, next_payload, timed, work  # noqa: E402

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
