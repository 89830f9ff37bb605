"""Ledger-wide OpenTelemetry gauges: backlog, dead letters, oldest waiting job, runs by
status - read from the ledger (:func:`django_app.dashboard.figures`) when collected.

Call :func:`register_ledger_gauges` once in ONE process of your choice (a web process, or a
small exporter), not in every worker: each collection runs the dashboard's queries. Per-attempt
metrics come from the workers themselves (:mod:`celery_workflows.telemetry`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .dashboard import Figures, figures

#: figures are read at most this often, however many gauges are collected
CACHE_SECONDS = 10.0


class _Cached:
    def __init__(self) -> None:
        self.at = -CACHE_SECONDS
        self.value: Figures | None = None

    def get(self) -> Figures:
        if self.value is None or time.monotonic() - self.at > CACHE_SECONDS:
            self.value = figures()
            self.at = time.monotonic()
        return self.value


def register_ledger_gauges(meter_provider: Any = None) -> None:
    """Register the gauges on ``meter_provider`` (default: the global one)."""
    from opentelemetry import metrics
    from opentelemetry.metrics import CallbackOptions, Observation

    meter = (meter_provider or metrics.get_meter_provider()).get_meter("celery_workflows")
    cached = _Cached()

    def per_queue(field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(getattr(q, field), {"queue": q.queue}) for q in cached.get().queues]

        return observe

    def backlog(options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(getattr(q, state), {"queue": q.queue, "state": state})
            for q in cached.get().queues
            for state in ("waiting", "delayed", "leased")
        ]

    def runs(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(n, {"status": s}) for s, n in cached.get().runs.items()]

    meter.create_observable_gauge(
        "celery_workflows.backlog", [backlog], unit="{job}", description="jobs by state"
    )
    meter.create_observable_gauge(
        "celery_workflows.dead_letters", [per_queue("dead")], unit="{job}"
    )
    meter.create_observable_gauge(
        "celery_workflows.oldest_waiting", [per_queue("oldest_waiting_s")], unit="s"
    )
    meter.create_observable_gauge("celery_workflows.runs", [runs], unit="{run}")
