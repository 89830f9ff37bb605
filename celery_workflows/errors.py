"""The exception hierarchy.

Every exception the toolkit raises derives from :class:`WorkflowError` - except
:class:`LeaseExpired`, which must not be caught by a handler's ``except Exception``.
Configuration mistakes raise :class:`ConfigurationError` at declaration or enqueue time, so a
wrong value fails early and nothing is written. The job-control exceptions
(:class:`RetryRequested`, :class:`FatalJobError` and friends) are raised by
:class:`~celery_workflows.context.JobContext` methods to end an attempt in a specific way;
handlers normally call those methods rather than raising directly.
"""

from __future__ import annotations

from typing import Any


class WorkflowError(Exception):
    """Base class of every error raised by celery-workflows."""


class ConfigurationError(WorkflowError):
    """A declaration or setting is wrong; the message names the queue and the field."""


class UnknownQueueError(ConfigurationError):
    """A queue name was used that no :class:`WorkflowService` declares."""


class StoreNotConfiguredError(ConfigurationError):
    """No ledger store is configured: add ``django_app`` to ``INSTALLED_APPS``."""


class PayloadError(WorkflowError):
    """A payload was rejected before anything was written."""


class PayloadNotSerializableError(PayloadError):
    """The payload cannot be encoded as JSON (the only serialisation we allow)."""


class PayloadValidationError(PayloadError):
    """The payload does not match the queue's pydantic schema."""


class PayloadTooLargeError(PayloadError):
    """The payload's JSON is larger than ``workflows_max_payload_bytes`` allows."""


class SubscriptionError(WorkflowError):
    """A subscription's ``map`` or ``when`` raised; the emitting attempt fails and retries."""


class GateClosedError(WorkflowError):
    """The run is not waiting for a decision (already decided, or never asked)."""


class DecisionNotAllowedError(WorkflowError):
    """The gate names who decides it (its ``Deciders``), and this user is not one of them - or
    no user was given. The gate stays open."""


class StateConflictError(WorkflowError):
    """A compare-and-set lost: the state document changed since it was read."""


class WorkflowNotFoundError(WorkflowError):
    """No workflow run has this correlation id or business key."""


class JobNotFoundError(WorkflowError):
    """No job with this id exists in the ledger."""


class NotDeadLetteredError(WorkflowError):
    """Only a dead-lettered job can be re-driven or discarded."""


class RerunRefusedError(WorkflowError):
    """A run cannot be rerun from that step (it is still open, or earlier steps were undone)."""


class NotRedrivableError(WorkflowError):
    """This dead letter cannot be re-driven: its workflow's compensation already undid the work
    it would continue. Start a new run instead."""


class NonRetryableError(WorkflowError):
    """Subclass this (or list an exception class in ``Lifecycle.non_retryable``) to skip retries.

    A job whose handler raises a non-retryable error goes to the dead-letter queue at once.
    """


class RunAlreadyOpenError(WorkflowError):
    """A service declared with ``on_duplicate_key="refuse"`` was asked to start a run for a
    business key that has a run still open; ``correlation_id`` names that run."""

    def __init__(self, message: str, correlation_id: str, business_key: str) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id
        self.business_key = business_key


class RenameError(WorkflowError):
    """A rename of a queue or an event could not move what runs in flight need."""


class LeaseLostError(WorkflowError):
    """This attempt no longer owns its job: its lease expired or was taken over.

    Raised by :meth:`JobContext.extend_lease`. The handler should stop; whatever it writes to
    the ledger from now on is rejected (fenced by the lease token).
    """


class LeaseExpired(BaseException):
    """Raised inside a handler that outlives its lease without extending it.

    It derives from :class:`BaseException` so that a handler's ``except Exception`` cannot
    swallow it and keep running on a job another worker may already own.
    """


class LedgerUnavailableError(WorkflowError):
    """The database stayed unreachable for longer than a ledger statement may wait."""


class LedgerWriteError(WorkflowError):
    """The database refused a ledger write for a reason other than a lost connection."""


class StepTransactionError(WorkflowError):
    """An atomic step's transaction failed in the database - a statement of its handler, its
    outcome write or its commit (a deferred constraint, a serialization failure, a lost
    connection) - and was rolled back whole; the attempt is recorded as failed and retried."""


class NotInAtomicStepError(ConfigurationError, NonRetryableError):
    """An atomic step asked for what it cannot have: extending its lease or reporting
    progress (both write its job's row, which only its commit would make visible). Not
    retried: every attempt would ask again."""


class JobControl(WorkflowError):
    """Base of the exceptions that job-control methods (``ctx.retry()``, ``ctx.fail()``, ...)
    raise to end an attempt; let them propagate out of the handler."""


class RetryRequested(JobControl):
    """The handler asked for another attempt after ``delay_seconds`` (``None``: use the backoff)."""

    def __init__(self, delay_seconds: float | None, reason: str) -> None:
        super().__init__(reason)
        self.delay_seconds = delay_seconds
        self.reason = reason


class FatalJobError(JobControl):
    """The handler declared the job failed for good: no more attempts, straight to the DLQ."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class DeadLetterRequested(JobControl):
    """The handler parked the job in the DLQ for an operator, without calling it an error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobFinished(JobControl):
    """The handler finished early with ``result``."""

    def __init__(self, result: Any) -> None:
        super().__init__("finished")
        self.result = result
