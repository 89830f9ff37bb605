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

from bench.work import STEPS, counter, hop, next_payload, timed, work  # noqa: E402

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
