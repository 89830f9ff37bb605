"""Every signal celery-workflows sends, in one place, and the middleware that sends them.

They are Celery's dispatch signals (the same ``connect`` API as Django's). They fire in the
process where the thing happened, after the ledger write that made it true.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

from .middleware import AttemptInfo, DeadLetterInfo, Middleware
from .records import JobStatus, Outcome

#: a job was written to the ledger; kwargs: job_id, queue, created
job_enqueued = Signal(name="job_enqueued")
#: an attempt finished and the job is done; kwargs: job_id, queue, attempt, result
job_succeeded = Signal(name="job_succeeded")
#: an attempt failed and another is scheduled; kwargs: job_id, queue, attempt, error, retry_in
job_failed = Signal(name="job_failed")
#: a job went to its queue's dead-letter queue; kwargs: job_id, queue, attempt, reason
job_dead_lettered = Signal(name="job_dead_lettered")
#: a late write from an attempt whose lease had expired was rejected; kwargs: job_id, queue, attempt
job_fenced = Signal(name="job_fenced")
#: an event was written and its subscribers' jobs published; kwargs: event
event_emitted = Signal(name="event_emitted")
#: a workflow has no job left queued or running; kwargs: correlation_id, status, last_job_id
workflow_finished = Signal(name="workflow_finished")
#: a well-formed notice named a job the ledger does not know; kwargs: queue, job_id, attempt
notice_dropped = Signal(name="notice_dropped")
#: a queue was paused (by an operator, or by its poison threshold); kwargs: queue, actor, reason
queue_paused = Signal(name="queue_paused")
#: a paused queue was resumed; kwargs: queue, actor
queue_resumed = Signal(name="queue_resumed")


class SignalsMiddleware(Middleware):
    """Sends the job signals; always the first middleware."""

    def after_outcome(self, attempt: AttemptInfo, outcome: Outcome | None) -> None:
        common = {"job_id": attempt.job_id, "queue": attempt.queue, "attempt": attempt.attempt}
        if outcome is None:
            job_fenced.send(sender=attempt.queue, **common)
        elif outcome.status == JobStatus.SUCCEEDED:
            job_succeeded.send(sender=attempt.queue, result=outcome.result, **common)
        elif outcome.status == JobStatus.QUEUED:
            job_failed.send(
                sender=attempt.queue,
                error=outcome.attempt.error,
                retry_in=outcome.retry_in_seconds,
                **common,
            )

    def on_dead_letter(self, dead: DeadLetterInfo) -> None:
        job_dead_lettered.send(
            sender=dead.queue,
            job_id=dead.job_id,
            queue=dead.queue,
            attempt=dead.attempt,
            reason=dead.reason,
        )
