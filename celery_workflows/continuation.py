"""Local continuation: the process that finishes a step runs the next one, with no broker hop.

When a step's outcome creates a job that is due now, on a queue this worker consumes, the
outcome statement writes that job already claimed by this process - lease token, expiry,
attempt 1 - and the process runs it right after the commit (the idea behind Temporal's eager
activity dispatch). No notice is published and no claim is made for it. Its ledger row,
attempt record, events, signals, middleware hooks and lease alarm are those of any attempt.
Its row counts no attempt until its outcome is written (``attempts`` 0): if the process dies
first - right after the previous step's outcome, before the handler ran - the main process ends
its leases (:mod:`celery_workflows.lost`) and the sweeper queues the job again for attempt 1,
uncharged, within a sweep interval. (A process that dies *during* such a handler costs it no
attempt either; its next attempt, claimed the usual way, is charged.)

Bounded: after ``workflows_local_continuations`` consecutive continuations (default 8) the next
job is published normally, so one long workflow cannot hold a process and other queues get
their turn. A fan-out continues one branch here and publishes the rest. ``-Q`` still decides
who may run what: a job is only continued by a worker that consumes its queue, and a queue
declared with ``continue_locally=False`` (or a service with it) is always published. So is a
job with a priority (:mod:`celery_workflows.priorities`): it takes its turn in the broker, by
priority, among the queue's waiting jobs. And so is a job of a queue with limits
(:mod:`celery_workflows.limits`): the claim enforces them, so it must go through one.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

from . import registry
from .clock import utcnow
from .errors import ConfigurationError
from .lease import new_lease_token, worker_name
from .queues import QueueSpec
from .records import ClaimedJob, Lease, NewJob, Outbox

#: default of ``workflows_local_continuations``: consecutive steps one task may run in-process
DEFAULT_LOCAL_CONTINUATIONS = 8


def max_continuations(conf: Any) -> int:
    """``workflows_local_continuations``, validated (checked once when a worker starts)."""
    value = conf.get("workflows_local_continuations", DEFAULT_LOCAL_CONTINUATIONS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(
            f"workflows_local_continuations must be an int >= 0 (0: always publish), got {value!r}"
        )
    return value


def consumed_here(spec: QueueSpec) -> bool:
    """Whether this process is a worker that consumes ``spec``'s queue."""
    assert spec.task is not None
    queues = spec.task.app.amqp.queues
    selected = getattr(queues, "consume_from", None) or {}
    return spec.qualified_name in selected


def lease_one(
    outbox: Outbox, depth: int, limit: int, paused: set[str]
) -> tuple[Outbox, NewJob | None]:
    """``outbox`` with at most one of its jobs written claimed by this process, and that job.

    Only a job that is due now, on a queue this worker consumes, allows it and is not
    ``paused``, while fewer than ``limit`` steps ran here in a row (``depth``).
    """
    if depth >= limit or not outbox.jobs:
        return outbox, None
    now = utcnow()
    queues = registry.queues()
    for index, job in enumerate(outbox.jobs):
        spec = queues.get(job.queue)
        if spec is None or not spec.continue_locally or job.available_at > now:
            continue
        if job.priority is not None:
            continue  # it waits its turn in the broker among the queue's other jobs
        if spec.limits is not None:
            continue  # its limits are enforced by the claim: no path goes around them
        if not consumed_here(spec) or job.queue in paused:
            continue
        lease = Lease(
            token=new_lease_token(),
            worker=worker_name(),
            started_at=now,
            expires_at=now + timedelta(seconds=spec.lifecycle.visibility_timeout),
        )
        leased = dataclasses.replace(job, lease=lease, published=False)
        jobs = [*outbox.jobs[:index], leased, *outbox.jobs[index + 1 :]]
        return dataclasses.replace(outbox, jobs=jobs), leased
    return outbox, None


def claimed(job: NewJob, business_key: str) -> ClaimedJob:
    """The claim of a job written claimed by this process, as a worker's claim would read
    (``business_key``: of the run the job continues)."""
    assert job.lease is not None
    return ClaimedJob(
        id=job.id,
        queue=job.queue,
        payload=job.payload,
        attempt=1,
        max_attempts=job.max_attempts,
        correlation_id=job.correlation_id,
        lease_token=job.lease.token,
        lease_expires_at=job.lease.expires_at,
        started_at=job.lease.started_at,
        attempt_log=[],
        created_at=job.lease.started_at,
        priority=job.priority,
        trace_id=job.trace_id,
        compensates=job.compensates,
        business_key=business_key,
        gather_id=job.gather_id,
    )
