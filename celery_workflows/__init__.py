"""celery-workflows: durable multi-step workflows on the Celery app you already run."""

from .context import Job, JobContext
from .deadletter import discard, list_dead_letters, redrive
from .errors import (
    ConfigurationError,
    JobNotFoundError,
    LeaseExpired,
    LeaseLostError,
    NonRetryableError,
    NotDeadLetteredError,
    PayloadError,
    PayloadNotSerializableError,
    PayloadValidationError,
    StoreNotConfiguredError,
    UnknownQueueError,
    WorkflowError,
)
from .events import Event
from .jobs import cancel, get_job
from .lifecycle import Lifecycle, RetryStrategy, compute_backoff
from .service import WorkflowService, emit
from .store import EnqueueResult, JobRecord, JobStatus, get_store
from .sweeper import sweep_once

__all__ = [
    "ConfigurationError",
    "EnqueueResult",
    "Event",
    "Job",
    "JobContext",
    "JobNotFoundError",
    "JobRecord",
    "JobStatus",
    "LeaseExpired",
    "LeaseLostError",
    "Lifecycle",
    "NonRetryableError",
    "NotDeadLetteredError",
    "PayloadError",
    "PayloadNotSerializableError",
    "PayloadValidationError",
    "RetryStrategy",
    "StoreNotConfiguredError",
    "UnknownQueueError",
    "WorkflowError",
    "WorkflowService",
    "cancel",
    "compute_backoff",
    "discard",
    "emit",
    "get_job",
    "get_store",
    "list_dead_letters",
    "redrive",
    "sweep_once",
]
