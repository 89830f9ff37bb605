"""The dead-letter queue: listing, re-driving and discarding jobs that gave up.

A job is dead-lettered after its last attempt, or at once for a non-retryable error, an invalid
payload or a message no worker could read. It keeps its payload, every attempt's error and
traceback, timestamps and worker. Re-driving creates a *fresh* job (new id, attempts reset,
linked to the old one through ``redriven_from``) and marks the old one ``redriven`` in the same
transaction, so one dead letter is re-driven at most once. A step of a workflow whose
compensation has started cannot be re-driven (the work it would continue was undone); a failed
compensation job can: the new job undoes the same step (``ctx.compensating_for``), the run is
compensating again, and once it succeeds the undo carries on to the earlier steps. Every
action is audited with its ``actor``, in the transaction that performs it, whichever door
(Python, admin, command) it came through.
"""

from __future__ import annotations

from typing import Any

from . import registry, telemetry
from .clock import utcnow
from .enqueueing import after_insert, prepare
from .errors import NotDeadLetteredError, NotRedrivableError, WorkflowNotFoundError
from .records import EnqueueResult, JobRecord, JobStatus, RunStatus, WorkflowStatus
from .store import get_store

#: sentinel: keep the dead job's payload when re-driving
KEEP_PAYLOAD: Any = object()
#: who acted, when the caller does not say
DEFAULT_ACTOR = "python"


def list_dead_letters(queue: str | None = None, limit: int = 100) -> list[JobRecord]:
    """Dead-lettered jobs, newest first; ``queue`` is a ``service.queue`` name, or one of the
    toolkit's own queues (``celery_workflows.events``, ``celery_workflows.schedules``)."""
    if queue is not None and not queue.startswith("celery_workflows."):
        registry.get_queue(queue)
    return get_store().list_dead_letters(queue, limit)


def redrive(
    job_id: str, payload: Any = KEEP_PAYLOAD, *, actor: str = DEFAULT_ACTOR
) -> EnqueueResult:
    """Re-enqueue a dead-lettered job as a fresh job, optionally with a corrected payload.

    The new payload is validated against the queue's schema first; a bad one raises
    :class:`~celery_workflows.errors.PayloadValidationError` and changes nothing.
    """
    store = get_store()
    dead = store.get_job(job_id)
    if dead.status is not JobStatus.DEAD:
        raise NotDeadLetteredError(f"job {job_id} is {dead.status}, not dead-lettered")
    refusal = redrive_refusal(dead)
    if refusal:
        raise NotRedrivableError(f"job {job_id}: {refusal}")
    spec = registry.get_queue(dead.queue)
    edited = payload is not KEEP_PAYLOAD
    body = spec.validate_payload(payload if edited else dead.payload)
    job = prepare(
        spec,
        body,
        available_at=utcnow(),
        correlation_id=dead.correlation_id,
        redriven_from=dead.id,
        # a re-driven undo still undoes the same step, and the workflow stays one trace
        compensates=dead.compensates,
        trace_id=(
            dead.trace_id
            if telemetry.is_traceparent(dead.trace_id)
            else store.run_trace(dead.correlation_id)
        ),
        priority=dead.priority,
        # a re-driven branch of a map still counts on its gather, in its item's place
        gather_id=dead.gather_id,
        gather_index=dead.gather_index,
    )
    detail: dict[str, Any] = {"new_job_id": job.id}
    if edited:
        detail.update(payload_before=dead.payload, payload_after=body)
    result = store.redrive(dead.id, job, actor, detail)
    after_insert(store, spec, job, result)
    return result


def compensation_started(run: WorkflowStatus) -> bool:
    """Whether ``run`` began undoing its completed steps (it may still be doing so)."""
    return run.status in (RunStatus.COMPENSATING, RunStatus.COMPENSATED) or any(
        h.compensates for h in run.history
    )


def redrive_refusal(dead: JobRecord, run: WorkflowStatus | None = None) -> str:
    """Why dead letter ``dead`` may not be re-driven ("" if it may): once its run's
    compensation has started, the work a re-driven step would continue has been undone.
    ``run`` is the job's run, when the caller has it already."""
    if dead.compensates is not None:
        return ""  # a failed compensation may always be tried again
    if run is None:
        try:
            run = get_store().get_workflow(dead.correlation_id)
        except WorkflowNotFoundError:
            return ""  # a dead letter outside any run (an unroutable message)
    if run.ended_by:
        return (
            f"workflow {run.correlation_id} was stopped ({run.ended_by}), so this step cannot "
            "continue it; start a new run instead"
        )
    if not compensation_started(run):
        return ""
    return (
        f"workflow {run.correlation_id} was compensated (its completed steps were undone), so "
        "this step cannot simply continue it; start a new run instead"
    )


def discard(job_id: str, *, actor: str = DEFAULT_ACTOR) -> None:
    """Drop a dead letter from the DLQ for good (the row stays, marked ``discarded``)."""
    get_store().discard(job_id, actor)
