"""The two sides of the benchmark on one Celery app: a queue worker and a plain task.

Both do the same business work (one Redis INCR that the runner watches) and are consumed by the
same worker with the same settings.
"""

import os
import time
from typing import Any

import redis
from celery import Celery

from celery_workflows import Job, JobContext, WorkflowService

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")

app = Celery("bench")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
# Celery's Django fixup closes every DB connection around every task unless this is set;
# reconnecting to PostgreSQL per job would cost more than the ledger itself (see README)
app.conf.CELERY_DB_REUSE_MAX = 1000

counter = redis.Redis.from_url(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13"))


def work(counter_key: str, io_ms: float) -> None:
    """The business step: optionally wait on "I/O" (an API call, say), then count."""
    if io_ms:
        time.sleep(io_ms / 1000)
    counter.incr(counter_key)


bench = WorkflowService("bench", app, resources=counter)


@bench.queue_worker("step", "One unit of business work")
def step(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
    work(job.payload["counter"], job.payload["io_ms"])


@app.task(name="bench.plain_step", ignore_result=True)
def plain_step(counter_key: str, io_ms: float) -> None:
    work(counter_key, io_ms)


# -- workflow4: four steps linked by events (toolkit) or by .delay() calls (plain Celery) ----

STEPS = 4


def hop(payload: dict[str, Any]) -> None:
    """Record, for sampled workflows, how long the hand-over from the previous step took."""
    if payload.get("sample") and payload.get("t"):
        counter.rpush(payload["hops"], round((time.time() - payload["t"]) * 1000, 3))


def _next(payload: dict[str, Any]) -> dict[str, Any]:
    return {**payload, "t": time.time()}


for _k in range(1, STEPS + 1):

    def _make(k: int) -> None:
        @bench.queue_worker(
            f"wf{k}", f"workflow step {k}", emits=[f"wf{k}done"] if k < STEPS else []
        )
        def step_k(ctx: JobContext[redis.Redis], job: Job[dict[str, Any]]) -> None:
            hop(job.payload)
            if k < STEPS:
                ctx.emit(f"wf{k}done", _next(job.payload))
            else:
                counter.incr(job.payload["counter"])

        if k < STEPS:
            bench.subscribe(f"wf{k}done", enqueue=f"wf{k + 1}")

    _make(_k)


@app.task(name="bench.plain_wf", ignore_result=True)
def plain_wf(k: int, payload: dict[str, Any]) -> None:
    hop(payload)
    if k < STEPS:
        plain_wf.apply_async((k + 1, _next(payload)), queue="bench.plain")
    else:
        counter.incr(payload["counter"])
