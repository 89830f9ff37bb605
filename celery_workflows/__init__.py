"""celery-workflows: durable multi-step workflows on the Celery app you already run."""

from .approvals import Deciders, decide
from .callbacks import deliver
from .compensation import cancel_workflow
from .context import Job, JobContext
from .control import pause_queue, resume_queue
from .deadletter import discard, list_dead_letters, redrive
from .errors import (
    ConfigurationError,
    DecisionNotAllowedError,
    GateClosedError,
    JobNotFoundError,
    LeaseExpired,
    LeaseLostError,
    NonRetryableError,
    NotDeadLetteredError,
    NotRedrivableError,
    PayloadError,
    PayloadNotSerializableError,
    PayloadTooLargeError,
    PayloadValidationError,
    RenameError,
    RerunRefusedError,
    RunAlreadyOpenError,
    StateConflictError,
    StepTransactionError,
    StoreNotConfiguredError,
    SubscriptionError,
    UnknownQueueError,
    WorkflowError,
    WorkflowNotFoundError,
)
from .gathers import Gather
from .jobs import cancel, get_job, release_lease
from .lifecycle import Jitter, Lifecycle, RetryStrategy
from .limits import Limits
from .middleware import AttemptInfo, DeadLetterInfo, Middleware
from .records import (
    EnqueueResult,
    Event,
    JobRecord,
    JobStatus,
    Outcome,
    RunStatus,
    WorkflowStatus,
)
from .registry import add_middleware
from .renames import rename_event, rename_queue
from .reruns import rerun
from .service import WorkflowService, emit
from .states import States, states
from .status import get_workflow
from .sweeper import sweep_once

__all__ = [
    "AttemptInfo",
    "ConfigurationError",
    "DeadLetterInfo",
    "Deciders",
    "DecisionNotAllowedError",
    "EnqueueResult",
    "Event",
    "GateClosedError",
    "Gather",
    "Jitter",
    "Job",
    "JobContext",
    "JobNotFoundError",
    "JobRecord",
    "JobStatus",
    "LeaseExpired",
    "LeaseLostError",
    "Lifecycle",
    "Limits",
    "Middleware",
    "NonRetryableError",
    "NotDeadLetteredError",
    "NotRedrivableError",
    "Outcome",
    "PayloadError",
    "PayloadNotSerializableError",
    "PayloadTooLargeError",
    "PayloadValidationError",
    "RenameError",
    "RerunRefusedError",
    "RetryStrategy",
    "RunAlreadyOpenError",
    "RunStatus",
    "StateConflictError",
    "States",
    "StepTransactionError",
    "StoreNotConfiguredError",
    "SubscriptionError",
    "UnknownQueueError",
    "WorkflowError",
    "WorkflowNotFoundError",
    "WorkflowService",
    "WorkflowStatus",
    "add_middleware",
    "cancel",
    "cancel_workflow",
    "decide",
    "deliver",
    "discard",
    "emit",
    "get_job",
    "get_workflow",
    "list_dead_letters",
    "pause_queue",
    "redrive",
    "release_lease",
    "rename_event",
    "rename_queue",
    "rerun",
    "resume_queue",
    "states",
    "sweep_once",
]
