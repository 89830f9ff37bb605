"""Plain Celery: the same business work as the toolkit's side, linked by ``.apply_async()``.

Its own worker and settings (no celery-workflows installed), so the two sides' worker
processes can be compared - throughput, latency, memory - as a user would compare them.
"""

import os
from typing import Any

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.plain_settings")

app = Celery("plain")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
app.conf.CELERY_DB_REUSE_MAX = 1000
# a chord needs a result backend: Redis's counts the header's results natively (no polling)
app.conf.result_backend = os.environ.get("BENCH_RESULTS_URL", "redis://127.0.0.1:6379/14")

from celery import chord  # noqa: E402

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

QUEUE = "bench.plain"


@app.task(name="bench.plain_step", ignore_result=True)
def plain_step(counter_key: str, io_ms: float) -> None:
    work(counter_key, io_ms)


@app.task(name="bench.plain_wf", ignore_result=True)
def plain_wf(k: int, payload: dict[str, Any]) -> None:
    hop(payload, k)
    if k < STEPS:
        plain_wf.apply_async((k + 1, next_payload(payload)), queue=QUEUE)
    else:
        counter.incr(payload["counter"])


#: the limits scenario's plain side: the same work, no limit (Celery has no global one)
LIMITS_QUEUE = "bench.plain_limits"


@app.task(name="bench.plain_timed", ignore_result=True)
def plain_timed(payload: dict[str, Any]) -> None:
    timed(payload)


#: the fan-out scenario's plain side: a chord of N do-nothing tasks and its callback
@app.task(name="bench.plain_branch")
def plain_branch(payload: dict[str, Any]) -> dict[str, float]:
    return branch_result(payload)


@app.task(name="bench.plain_gather", ignore_result=True)
def plain_gather(results: list[dict[str, float]], counter_key: str, hops: str) -> None:
    gathered(results, counter_key, hops)


def start_chord(n: int, counter_key: str, hops: str) -> None:
    header = [plain_branch.s({}).set(queue=QUEUE) for _ in range(n)]
    chord(header)(plain_gather.s(counter_key, hops).set(queue=QUEUE))
