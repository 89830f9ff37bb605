"""Every signal celery-workflows sends, in one place.

They are Celery's dispatch signals (the same ``connect`` API as Django's). They fire in the
process where the thing happened, after the ledger write that made it true.
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

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
