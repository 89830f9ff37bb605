"""Declarative compensation (a saga): when a workflow fails, its completed steps are undone.

A step declares what undoes it - ``@service.queue_worker(..., compensate_with="releaseStock")``
names another queue of the service - and a service declares what failure means
(``WorkflowService(..., on_failure="compensate")``, the default, or ``"stop"``). When a step of
a run dead-letters, or the run is cancelled (:func:`cancel_workflow`) or passes its deadline,
the compensations of the steps that completed run in reverse order of completion, one at a
time, each as a leased, retried queue job that receives the original step's payload and
records which job it undoes (``compensates``). The run shows ``compensating``, then
``compensated``; if a compensation itself dead-letters, the run ends ``dead_lettered`` for an
operator.

Redrive after compensation: a dead letter of a run whose compensation has started cannot be
re-driven (:class:`~celery_workflows.errors.NotRedrivableError`) - the work it would continue
has been undone; start a new run instead. Before compensation starts (``on_failure="stop"``),
re-driving continues the run from the failed step.

Each compensation job is written in the same transaction as the outcome, cancellation or
timeout that makes it necessary, so a crash at any instruction cannot leave a failed run
without its compensation. A stopped run starts no new forward steps. A step that was running
when its run was stopped sees ``ctx.cancel_requested``; if it completes anyway, its own
compensation is written with its outcome.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from . import registry, telemetry
from .clock import utcnow
from .events import new_event, plan, publish_created
from .queues import QueueSpec
from .records import NewJob, Outbox
from .store import Store, get_store

#: what a service does when one of its runs fails
ON_FAILURE = ("compensate", "stop")


def next_compensation(
    store: Store, correlation_id: str, trace_id: str = "", undone_now: str | None = None
) -> NewJob | None:
    """The job that undoes the most recently completed step not undone yet, or None.

    Only for runs whose service compensates on failure; each compensation job has the
    idempotency key ``compensate:<job id>``, so planning the same one twice writes it once.
    ``undone_now`` is a step whose compensation is succeeding in the write being planned.
    """
    steps = store.completed_steps(correlation_id)
    undone = {step.compensates for step in steps if step.compensates} | {undone_now}
    queues = registry.queues()
    for step in steps:
        spec = queues.get(step.queue)
        if step.compensates or step.job_id in undone or spec is None or not spec.compensate_with:
            continue
        if not compensates_on_failure(spec.service):
            return None
        return compensation_of(spec, step.job_id, step.payload, correlation_id, trace_id)
    return None


def compensation_of(
    spec: QueueSpec, job_id: str, payload: Any, correlation_id: str, trace_id: str
) -> NewJob:
    """The job that undoes job ``job_id`` of queue ``spec`` (which declares
    ``compensate_with``): it gets the step's payload and says which job it undoes."""
    assert spec.compensate_with is not None
    undo = registry.get_queue(spec.compensate_with)
    return undo.new_job(
        payload,
        available_at=utcnow(),
        correlation_id=correlation_id,
        published=True,
        idempotency_key=f"compensate:{job_id}",
        compensates=job_id,
        trace_id=trace_id,
    )


def compensates_on_failure(service: str) -> bool:
    owner = registry.services().get(service)
    return getattr(owner, "on_failure", "compensate") == "compensate"


def with_compensation(
    store: Store, outbox: Outbox, correlation_id: str, trace_id: str, undone_now: str | None = None
) -> Outbox:
    """``outbox`` plus the next compensation job of the run, if it has one to run."""
    job = next_compensation(store, correlation_id, trace_id, undone_now)
    if job is None:
        return outbox
    return dataclasses.replace(outbox, jobs=[*outbox.jobs, job], compensating=True)


def stop_workflow(correlation_id: str, reason: str, actor: str, event: str | None = None) -> bool:
    """Stop a run now: cancel its queued jobs, ask its running ones to stop (they see
    ``ctx.cancel_requested``), emit ``event`` (a timeout event, say) and start compensating
    its completed steps - all in one transaction, audited with ``actor``. Returns False if the
    run was not open or was stopped already."""
    store = get_store()
    with store.atomic():
        if not store.stop_run(correlation_id, reason, actor):
            return False
        events = []
        if event is not None:
            events.append(
                new_event(
                    event,
                    {"reason": reason},
                    source=actor,
                    correlation_id=correlation_id,
                    causation_id=None,
                    trace_id=None,
                )
            )
        reaction = dataclasses.replace(plan(events), stopping=True)
        trace = telemetry.current_traceparent() or ""
        outbox = with_compensation(store, reaction, correlation_id, trace)
        created = store.write_outbox(outbox) if outbox else []
        store.on_commit(lambda: publish_created(created))
    return True


def cancel_workflow(id_or_business_key: str, *, actor: str = "python", reason: str = "") -> bool:
    """Cancel a workflow run (by correlation id or business key) and compensate what it did.

    Queued jobs are cancelled, running ones see ``ctx.cancel_requested``, and the completed
    steps are undone in reverse order (see the module docstring). Audited with ``actor``.
    Returns False if the run had already finished or been stopped.
    """
    run = get_store().get_workflow(id_or_business_key)
    return stop_workflow(run.correlation_id, reason or f"cancelled by {actor}", actor)
