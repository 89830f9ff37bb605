"""Writing jobs started from outside any step - ``enqueue()``, ``enqueue_many()``, a redrive, a
schedule's firing - and publishing them once their transaction commits."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from . import registry, signals
from .clock import utcnow
from .errors import ConfigurationError
from .events import publish_or_hand_to_sweeper
from .lifecycle import PUBLISH_HORIZON_SECONDS
from .queues import QueueSpec
from .records import Dispatch, EnqueueResult, NewJob
from .store import Store, get_store


def start_time(what: str, delay: float | timedelta | None, eta: datetime | None) -> datetime:
    """When something asked to start after ``delay`` or at ``eta`` may start."""
    now = utcnow()
    if delay is not None and eta is not None:
        raise ConfigurationError(f"{what}: pass delay or eta, not both")
    if eta is not None:
        if eta.tzinfo is None:
            raise ConfigurationError(f"{what}: eta must be timezone-aware, got naive {eta}")
        return max(now, eta)
    if delay is None:
        return now
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if seconds < 0:
        raise ConfigurationError(f"{what}: delay must be >= 0, got {delay}")
    return now + timedelta(seconds=seconds)


def prepare(
    spec: QueueSpec,
    payload: Any,
    *,
    available_at: datetime,
    correlation_id: str,
    deadline: timedelta | datetime | None = None,
    **options: Any,
) -> NewJob:
    """The ledger row of a job started from outside any step (``enqueue()``, a redrive):
    it starts a workflow run, named after the service, unless its correlation id has one."""
    owner = registry.services()[spec.service]
    job = spec.new_job(
        payload,
        available_at=available_at,
        correlation_id=correlation_id,
        published=available_at <= utcnow() + timedelta(seconds=PUBLISH_HORIZON_SECONDS),
        starts=owner.run_start(spec.qualified_name, payload, deadline),
        **options,
    )
    return registry.hooks().on_enqueue(job)


def after_insert(ledger: Store, spec: QueueSpec, job: NewJob, result: EnqueueResult) -> None:
    """Publish a job that is due soon once its transaction commits; send ``job_enqueued``."""
    after_insert_many(ledger, spec, [job], [result])


def after_insert_many(
    ledger: Store, spec: QueueSpec, jobs: list[NewJob], results: list[EnqueueResult]
) -> None:
    """Publish the created jobs that are due soon once their transaction commits, over one
    broker connection; send ``job_enqueued`` for each."""
    due = [
        job for job, result in zip(jobs, results, strict=True) if result.created and job.published
    ]
    if due:

        def publish() -> None:
            now = utcnow()
            dispatches = [
                Dispatch(
                    job.id,
                    spec.qualified_name,
                    1,
                    job.priority,
                    max(0.0, (job.available_at - now).total_seconds()),
                )
                for job in due
            ]
            publish_or_hand_to_sweeper(ledger, spec, dispatches)

        ledger.on_commit(publish)
    for result in results:
        signals.job_enqueued.send(
            sender=spec.qualified_name,
            job_id=result.job_id,
            queue=spec.qualified_name,
            created=result.created,
        )


def enqueue(
    spec: QueueSpec,
    payload: Any,
    *,
    available_at: datetime | None = None,
    correlation_id: str,
    **options: Any,
) -> EnqueueResult:
    """Write one validated job and publish it after commit (``options``: NewJob fields and
    ``deadline``)."""
    store = get_store()
    job = prepare(
        spec,
        payload,
        available_at=available_at or utcnow(),
        correlation_id=correlation_id,
        **options,
    )
    result = store.insert_job(job)
    after_insert(store, spec, job, result)
    return result
