"""procrastinate's side of ``make bench-peers``: the same business work as
:mod:`bench.celery_app`, as procrastinate tasks run by procrastinate's own worker."""

from __future__ import annotations

import os
from typing import Any

import procrastinate

from bench.work import STEPS, counter, hop, next_payload, work

PROCRASTINATE_QUEUE = "bench"

procrastinate_app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=os.environ.get(
            "BENCH_FLOOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cw_bench"
        )
    )
)


@procrastinate_app.task(name="bench.count", queue=PROCRASTINATE_QUEUE)
def procrastinate_step(counter_key: str, io_ms: float) -> None:
    work(counter_key, io_ms)


@procrastinate_app.task(name="bench.wf", queue=PROCRASTINATE_QUEUE)
def procrastinate_wf(k: int, payload: dict[str, Any]) -> None:
    """One step of a four-step workflow: each step defers the next (procrastinate's way)."""
    hop(payload, k)
    if k < STEPS:
        procrastinate_wf.defer(k=k + 1, payload=next_payload(payload))
    else:
        counter.incr(payload["counter"])
