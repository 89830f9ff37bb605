"""celery-workflows: durable multi-step workflows on the Celery app you already run."""

from .approvals import GateClosedError, decide
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
    StateConflictError,
    StoreNotConfiguredError,
    UnknownQueueError,
    WorkflowError,
    WorkflowNotFoundError,
)
from .events import Event
from .jobs import cancel, get_job
from .lifecycle import Lifecycle, RetryStrategy, compute_backoff
from .service import WorkflowService, emit
from .states import States, states
from .status import WorkflowStatus, get_workflow
from .store import EnqueueResult, JobRecord, JobStatus, get_store
from .sweeper import sweep_once

__all__ = [
    "ConfigurationError",
    "EnqueueResult",
    "Event",
    "GateClosedError",
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
    "StateConflictError",
    "States",
    "StoreNotConfiguredError",
    "UnknownQueueError",
    "WorkflowError",
    "WorkflowNotFoundError",
    "WorkflowService",
    "WorkflowStatus",
    "cancel",
    "compute_backoff",
    "decide",
    "discard",
    "emit",
    "get_job",
    "get_store",
    "get_workflow",
    "list_dead_letters",
    "redrive",
    "states",
    "sweep_once",
]
