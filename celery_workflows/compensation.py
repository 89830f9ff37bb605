"""Declarative compensation (a saga): when a workflow fails, its completed steps are undone.

A step declares what undoes it - ``@service.queue_worker(..., compensate_with="releaseStock")``
names another queue of the service - and a service declares what failure means
(``WorkflowService(..., on_failure="compensate")``, the default, or ``"stop"``). When a step of
a run dead-letters, or the run is cancelled (:func:`cancel_workflow`) or passes its deadline,
the run stops moving forward, and once no forward step of it is pending any more the
compensations of the steps that completed run in reverse order of completion, one at a time,
each as a leased, retried queue job that receives the original step's payload and records
which job it undoes (``compensates``) - every completed step exactly once, whatever stopped the
run and whenever (a cancel while compensating changes nothing of the undo). The run shows
``compensating``, then ``compensated``, and is finished only when its last undo is; if a
compensation itself dead-letters, the run ends ``dead_lettered`` for an operator, and
re-driving that dead letter carries the undo on to the earlier steps. The rules are
:mod:`celery_workflows.rules`; the ledger applies them under the run's lock.

Redrive after compensation: a dead letter of a run whose compensation has started cannot be
re-driven (:class:`~celery_workflows.errors.NotRedrivableError`) - the work it would continue
has been undone; start a new run instead. Before compensation starts (``on_failure="stop"``),
re-driving continues the run from the failed step.

Each compensation job is written in the same transaction as the outcome, cancellation or
timeout that makes it due, so a crash at any instruction cannot leave a failed run without its
compensation. A stopped run starts no new forward steps and retries none. A step that was
running when its run was stopped sees ``ctx.cancel_requested``; if it completes anyway, it is
undone first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime

from . import registry, telemetry
from .clock import utcnow
from .events import announce, new_event, plan, publish_created
from .queues import QueueSpec
from .records import NewJob, Outbox
from .rules import RunJob, next_undo
from .store import UndoPlanner, get_store

#: orders a job not finished yet after every finished one
_LATEST = datetime.max.replace(tzinfo=UTC)
#: what a service does when one of its runs fails
ON_FAILURE = ("compensate", "stop")


def compensates_on_failure(service: str) -> bool:
    owner = registry.services().get(service)
    return getattr(owner, "on_failure", "compensate") == "compensate"


def undoable(queue: str) -> bool:
    """Whether a completed step of ``queue`` is undone when its run stops: its queue declares
    ``compensate_with`` and its service compensates failed runs."""
    spec = registry.queues().get(queue)
    return spec is not None and bool(spec.compensate_with) and compensates_on_failure(spec.service)


def plan_next_undo(jobs: Sequence[RunJob]) -> NewJob | None:
    """The compensation job to write now for a stopped run with ``jobs``, if one is due."""
    step = next_undo(jobs, undoable)
    if step is None:
        return None
    return compensation_of(registry.get_queue(step.queue), step, run_trace(jobs, step))


def run_trace(jobs: Sequence[RunJob], step: RunJob | None = None) -> str:
    """The traceparent a write on the run's behalf continues: ``step``'s own, or the newest
    one a job of the run was written under ("" if none was traced). A run's first job, started
    from untraced code, stores no traceparent - its attempt began the workflow's trace, which
    every later job carries."""
    if step is not None and telemetry.is_traceparent(step.trace_id):
        return step.trace_id
    traced = [j for j in jobs if telemetry.is_traceparent(j.trace_id)]
    newest = max(traced, key=lambda j: (j.finished_at or _LATEST, j.id), default=None)
    return newest.trace_id if newest is not None else ""


def undo_planner(service: str) -> UndoPlanner | None:
    """What a job of ``service`` hands the ledger with its outcome: the planner of its run's
    compensations, or None when the service leaves failed runs to an operator."""
    return plan_next_undo if compensates_on_failure(service) else None


def compensation_of(spec: QueueSpec, step: RunJob, trace: str) -> NewJob:
    """The job that undoes ``step`` of queue ``spec`` (which declares ``compensate_with``): it
    gets the step's payload, says which job it undoes and continues the run's ``trace`` (so a
    workflow stays one trace whatever stops it)."""
    assert spec.compensate_with is not None
    undo = registry.get_queue(spec.compensate_with)
    return undo.new_job(
        step.payload,
        available_at=utcnow(),
        correlation_id=step.correlation_id,
        published=True,
        idempotency_key=f"compensate:{step.id}",
        compensates=step.id,
        trace_id=trace,
        priority=step.priority,
    )


def stop_workflow(correlation_id: str, reason: str, actor: str, event: str | None = None) -> bool:
    """Stop a run now: cancel its queued forward jobs, ask its running ones to stop (they see
    ``ctx.cancel_requested``), emit ``event`` (a timeout event, say) and undo its completed
    steps once nothing of it runs forward any more - the stop and whatever is due at once in
    one transaction, audited with ``actor``. Returns False if the run was not open or was
    stopped already."""
    store = get_store()
    trace = telemetry.current_traceparent() or store.run_trace(correlation_id)
    events = []
    if event is not None:
        events.append(
            new_event(
                event,
                {"reason": reason},
                source=actor,
                correlation_id=correlation_id,
                causation_id=None,
                trace_id=trace or None,
            )
        )
    outbox: Outbox = dataclasses.replace(plan(events), stopping=True)
    created = store.stop_run(correlation_id, reason, actor, outbox, plan_next_undo)
    if created is None:
        return False
    # its child runs stop with it (the sweeper stops any this misses: see children.py)
    for child in store.open_children(correlation_id):
        stop_workflow(child, f"its parent run {correlation_id} was stopped", actor)

    def after_commit() -> None:
        publish_created(created, store)
        announce(events)

    store.on_commit(after_commit)
    return True


def cancel_workflow(id_or_business_key: str, *, actor: str = "python", reason: str = "") -> bool:
    """Cancel a workflow run (by correlation id or business key) and compensate what it did.

    Queued jobs are cancelled, running ones see ``ctx.cancel_requested``, and the completed
    steps are undone in reverse order (see the module docstring). Audited with ``actor``.
    Returns False if the run had already finished or been stopped.
    """
    run = get_store().get_workflow(id_or_business_key)
    return stop_workflow(run.correlation_id, reason or f"cancelled by {actor}", actor)
