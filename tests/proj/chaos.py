"""The chaos tests' workflow: four steps linked by events, each with a side effect keyed by
its job id, so a re-executed attempt is counted and never applied twice.

    chaosStarted -> step1 -step1Done-> step2 -step2Done-> step3 -step3Done-> step4
"""

from __future__ import annotations

import time
from typing import Any

from celery_workflows import Job, JobContext, Lifecycle, RetryStrategy, WorkflowService
from tests.proj.celery_app import app
from tests.proj.recorder import Recorder, recorder

chaos = WorkflowService("chaos", app, resources=recorder, business_key="n")

#: short leases so killed attempts come back within seconds; enough attempts that kills alone
#: never exhaust them
LIFECYCLE = Lifecycle(
    visibility_timeout=3,
    max_attempts=25,
    retry=RetryStrategy(initial_delay=0.2, max_delay=1.0, multiplier=2, jitter_factor=0.2),
)
STEPS = 4


def apply_effect(resources: Recorder, job: Job[Any], step: int) -> None:
    """The step's business effect, made idempotent by its job id (as the README advises)."""
    r = resources.redis
    r.incr(f"chaos:runs:{job.id}")
    work_ms = job.payload.get("work_ms", 0) if isinstance(job.payload, dict) else 0
    time.sleep(float(work_ms) / 1000 if isinstance(work_ms, int | float) else 0)
    if not r.set(f"chaos:effect:{job.id}", step, nx=True):
        r.incr("chaos:effects-skipped")


def _declare(step: int) -> None:
    done = f"step{step}Done"

    @chaos.queue_worker(
        f"step{step}",
        f"chaos step {step}",
        emits=[done] if step < STEPS else [],
        lifecycle=LIFECYCLE,
    )
    def handler(ctx: JobContext[Recorder], job: Job[Any]) -> int:
        apply_effect(ctx.resources, job, step)
        if step < STEPS:
            ctx.emit(done, job.payload)
        return step

    chaos.subscribe("chaosStarted" if step == 1 else f"step{step - 1}Done", enqueue=f"step{step}")


chaos.event("chaosStarted")
for _step in range(1, STEPS + 1):
    _declare(_step)

QUEUES = [spec.qualified_name for spec in chaos.queues.values()]
