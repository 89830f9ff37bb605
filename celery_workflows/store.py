"""The ledger protocol: what the Celery side needs from storage, and nothing more.

The database is the ledger: it says which jobs are owed, who holds each lease and what every
attempt did. The broker only carries "job X, attempt N is ready" notices. Every write that
belongs to an attempt is *fenced*: it names the attempt's lease token and only succeeds while
that lease is held and unexpired, so a zombie worker cannot overwrite a newer attempt.

The Django app (``django_app.store.DjangoJobStore``) implements this protocol and registers
itself with :func:`configure` when Django starts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from .errors import StoreNotConfiguredError

if TYPE_CHECKING:
    from .events import Event
    from .states import StateValue
    from .status import WorkflowStatus


class JobStatus(StrEnum):
    """Where a job is in its life. Only ``queued`` and ``running`` jobs are still owed work."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    REDRIVEN = "redriven"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


class AttemptOutcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRY_REQUESTED = "retry_requested"
    FATAL = "fatal"
    DEAD_LETTERED = "dead_lettered"
    INVALID_PAYLOAD = "invalid_payload"
    LEASE_EXPIRED = "lease_expired"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt as the audit trail keeps it."""

    attempt: int
    worker: str
    started_at: datetime
    finished_at: datetime
    outcome: AttemptOutcome
    error: str = ""
    traceback: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "worker": self.worker,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_ms": round((self.finished_at - self.started_at).total_seconds() * 1000, 1),
            "outcome": str(self.outcome),
            "error": self.error,
            "traceback": self.traceback,
        }


@dataclass(frozen=True)
class NewJob:
    """A job to insert. ``published`` says the caller will publish it right after commit."""

    id: str
    service: str
    queue: str
    payload: Any
    max_attempts: int
    available_at: datetime
    correlation_id: str
    published: bool
    idempotency_key: str | None = None
    priority: int | None = None
    redriven_from: str | None = None
    #: id of the event whose subscription created this job
    caused_by: str | None = None
    trace_id: str = ""
    #: the workflow run this job starts, if its correlation id is new
    starts: RunStart | None = None


@dataclass(frozen=True)
class RunStart:
    """What a new workflow run is called: the service that started it and its business key."""

    name: str
    business_key: str
    #: the event or queue that started it
    started_by: str


@dataclass(frozen=True)
class Outbox:
    """Events and the jobs their subscriptions create, written in one transaction."""

    events: list[Event] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    #: set when these events start a workflow (emitted from outside any job)
    starts: RunStart | None = None

    def __bool__(self) -> bool:
        return bool(self.events or self.jobs)


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    #: False when an existing job with the same idempotency key was returned instead
    created: bool
    #: the workflow the job belongs to
    correlation_id: str


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker learns when it wins an attempt."""

    id: str
    queue: str
    payload: Any
    attempt: int
    max_attempts: int
    correlation_id: str
    lease_token: str
    lease_expires_at: datetime
    started_at: datetime
    attempt_log: list[dict[str, Any]]
    created_at: datetime
    priority: int | None
    trace_id: str


@dataclass(frozen=True)
class JobRecord:
    """A read-only view of one ledger row."""

    id: str
    service: str
    queue: str
    status: JobStatus
    payload: Any
    result: Any
    attempts: int
    max_attempts: int
    correlation_id: str
    available_at: datetime
    created_at: datetime
    finished_at: datetime | None
    worker: str
    dead_reason: str
    idempotency_key: str | None
    cancel_requested: bool
    redriven_from: str | None
    caused_by: str | None = None
    attempt_log: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Dispatch:
    """A notice the sweeper must publish: job ``job_id`` is ready for attempt ``attempt``."""

    job_id: str
    queue: str
    attempt: int
    priority: int | None
    countdown: float = 0.0


class JobStore(Protocol):
    """Storage operations, each a single short transaction.

    Methods that take a ``lease_token`` return ``False`` when the fence rejects them.
    """

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the current transaction commits (at once outside one)."""

    def insert_job(self, job: NewJob) -> EnqueueResult: ...

    def claim(
        self, job_id: str, attempt: int, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None: ...

    def extend_lease(
        self, job_id: str, lease_token: str, lease_seconds: float
    ) -> datetime | None: ...

    def complete(
        self, job: ClaimedJob, result: Any, attempt: AttemptRecord, outbox: Outbox
    ) -> list[NewJob] | None:
        """Record success and write ``outbox``; return the jobs created, or None if fenced."""

    def retry_later(
        self,
        job: ClaimedJob,
        attempt: AttemptRecord,
        available_at: datetime,
        published: bool,
        outbox: Outbox,
    ) -> list[NewJob] | None: ...

    def dead_letter(
        self, job: ClaimedJob, attempt: AttemptRecord, reason: str, outbox: Outbox
    ) -> list[NewJob] | None: ...

    def write_outbox(self, outbox: Outbox) -> list[NewJob]:
        """Write events and jobs (skipping ones already written); return the jobs created."""

    def finish_workflow(self, correlation_id: str, last_job_id: str) -> str | None:
        """Settle the workflow if no job of it is queued or running any more.

        Returns its final status (``cancelled`` if a job was cancelled; ``completed``;
        ``compensated`` if a job was dead-lettered and its compensation ran; ``dead_lettered``
        otherwise) to exactly one caller, even when parallel branches end at the same moment;
        else None.
        """

    def record_unroutable(self, queue: str, body: Any, reason: str) -> str: ...

    def get_state(self, key: str) -> StateValue | None: ...

    def prune_finished(self, finished_before: datetime, batch_size: int) -> int:
        """Delete finished runs (and their jobs, events, state) older than ``finished_before``,
        ``batch_size`` runs per transaction; return how many runs were deleted."""

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction around several store calls."""

    def open_gate(self, correlation_id: str, gate: dict[str, Any]) -> None:
        """Mark the run ``waiting`` on ``gate``."""

    def close_gate(self, correlation_id: str, actor: str, approved: bool) -> dict[str, Any] | None:
        """Close the run's open gate (once) and set it running again; return the gate."""

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus: ...

    def put_state(
        self, key: str, value: Any, expected_version: int | None, correlation_id: str | None
    ) -> int | None:
        """Write a state document; with ``expected_version``, only if it is still at that
        version (0 = absent). Returns the new version, or None when the check failed."""

    def expire_leases(self, queues: list[str], now: datetime, limit: int) -> list[ExpiredLease]: ...

    def settle_expired(
        self,
        lease: ExpiredLease,
        attempt: AttemptRecord,
        available_at: datetime | None,
        published: bool,
    ) -> bool: ...

    def take_due(
        self, queues: list[str], now: datetime, stale_before: datetime, limit: int
    ) -> list[Dispatch]: ...

    def get_job(self, job_id: str) -> JobRecord: ...

    def list_dead_letters(self, queue: str | None, limit: int) -> list[JobRecord]: ...

    def mark_redriven(self, job_id: str, new_job: NewJob) -> EnqueueResult: ...

    def discard(self, job_id: str) -> None: ...

    def request_cancel(self, job_id: str) -> JobStatus: ...

    def is_cancel_requested(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class ExpiredLease:
    """A running attempt whose lease ran out: its worker died, hung or lost the network."""

    job_id: str
    queue: str
    attempt: int
    max_attempts: int
    lease_token: str
    worker: str
    started_at: datetime | None
    priority: int | None
    correlation_id: str


_store: JobStore | None = None


def configure(store: JobStore | None) -> None:
    """Install the ledger store (the Django app does this in ``AppConfig.ready``)."""
    global _store
    _store = store


def get_store() -> JobStore:
    if _store is None:
        raise StoreNotConfiguredError(
            "No workflow ledger is configured: add 'django_app' to INSTALLED_APPS and call "
            "django.setup() before enqueueing or running jobs."
        )
    return _store
