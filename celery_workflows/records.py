"""The records every layer passes around: jobs, attempts, outcomes, events, runs.

Frozen dataclasses and status enums only. This module imports nothing of the toolkit, so any
module can use these types without pulling in another - it is the bottom of the import graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: this module still imports nothing of the toolkit
    from .gathers import GatherStart
    from .joins import Arrival


class JobStatus(StrEnum):
    """Where a job is in its life. Only ``queued`` and ``running`` jobs are still owed work."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    REDRIVEN = "redriven"
    DISCARDED = "discarded"
    CANCELLED = "cancelled"


#: jobs in these statuses keep their workflow run open
PENDING_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class RunStatus(StrEnum):
    """Where a workflow run is. The first three are open; the rest are final."""

    RUNNING = "running"
    WAITING = "waiting"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in OPEN_RUN_STATUSES


OPEN_RUN_STATUSES = (RunStatus.RUNNING, RunStatus.WAITING, RunStatus.COMPENSATING)


class AttemptOutcome(StrEnum):
    """How one attempt ended, as its audit entry says."""

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

    @classmethod
    def refused(cls, reason: str, at: datetime) -> AttemptRecord:
        """The only attempt of a message refused at the door: no worker ran it."""
        return cls(1, "", at, at, AttemptOutcome.INVALID_PAYLOAD, reason)

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
class Outcome:
    """What an attempt ends with, as the ledger writes it in one fenced statement.

    ``status`` is the job's next status: ``succeeded``, ``queued`` (another attempt at
    ``available_at``) or ``dead`` (with ``reason``).
    """

    status: JobStatus
    attempt: AttemptRecord
    result: Any = None
    #: a retry: when the next attempt may start
    available_at: datetime | None = None
    #: a retry: its notice is sent right after the write (due soon); else the sweeper sends it
    published: bool = False
    #: a dead letter: why
    reason: str = ""

    @property
    def retry_in_seconds(self) -> float:
        if self.available_at is None:
            return 0.0
        return max(0.0, (self.available_at - self.attempt.finished_at).total_seconds())


@dataclass(frozen=True)
class RunStart:
    """What a new workflow run is called: the service that started it and its business key."""

    name: str
    business_key: str
    #: the event or queue that started it
    started_by: str
    #: when the run times out if it has not finished (the service's or the start's deadline)
    deadline_at: datetime | None = None
    #: the definition version of the service that started it (WorkflowService.version)
    version: str = ""
    #: the run whose step started this one as its child (:mod:`celery_workflows.children`)
    parent: str | None = None


@dataclass(frozen=True)
class Lease:
    """A lease taken when a job is written: the writing process runs it next (attempt 1)."""

    token: str
    worker: str
    started_at: datetime
    expires_at: datetime


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
    #: set when the job is written already claimed by the process that writes it
    lease: Lease | None = None
    #: the completed job whose work this job undoes (a compensation)
    compensates: str | None = None
    #: the value of its queue's limit key (:class:`~celery_workflows.limits.Limits`), or ''
    limit_key: str = ""
    #: a debounced subscription's name and key: only the newest of its jobs runs
    coalesce_key: str = ""
    #: a branch of a map: its gather (the mapping job's id) and its item's index
    gather_id: str | None = None
    gather_index: int | None = None


@dataclass(frozen=True)
class Event:
    """One emitted event, as subscribers and the audit trail see it."""

    id: str
    name: str
    payload: Any
    correlation_id: str
    #: the job (or event) whose work caused this event; None when emitted from outside a job
    causation_id: str | None
    trace_id: str
    emitted_at: datetime
    #: ``service.queue`` of the emitting step, or ``service`` for emits from ordinary code
    source: str
    #: filled in when the event is written: which subscriptions it started, and their jobs
    deliveries: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "payload": self.payload,
            "correlation_id": self.correlation_id,
            "causation_id": self.causation_id,
            "trace_id": self.trace_id,
            "emitted_at": self.emitted_at.isoformat(),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Event:
        """Read an envelope received from elsewhere; raises ValueError naming what is wrong."""
        missing = {"id", "name", "payload", "correlation_id"} - set(data)
        if missing:
            raise ValueError(f"event envelope is missing {sorted(missing)}")
        for key in ("id", "name", "correlation_id"):
            if not isinstance(data[key], str) or not data[key]:
                raise ValueError(f"event envelope field {key!r} must be a non-empty string")
        emitted = data.get("emitted_at")
        try:
            at = datetime.fromisoformat(emitted) if emitted else datetime.now(UTC)
        except (TypeError, ValueError):
            raise ValueError(f"event envelope has an invalid emitted_at {emitted!r}") from None
        return cls(
            id=data["id"],
            name=data["name"],
            payload=data["payload"],
            correlation_id=data["correlation_id"],
            causation_id=data.get("causation_id"),
            trace_id=str(data.get("trace_id") or data["correlation_id"]),
            emitted_at=at if at.tzinfo else at.replace(tzinfo=UTC),
            source=str(data.get("source") or "external"),
        )


@dataclass(frozen=True)
class Outbox:
    """Events and the jobs their subscriptions create, written in one transaction."""

    events: list[Event] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    #: set when these events start a workflow (emitted from outside any job)
    starts: RunStart | None = None
    #: the events stop their run (a timeout): their subscriptions' jobs run on a stopped run
    stopping: bool = False
    #: an approval gate the step opened: the run waits on it once the step's success is
    #: written (and only then: a failed or fenced attempt opens nothing)
    gate: dict[str, Any] | None = None
    #: child runs the step's success starts (each an outbox with ``starts``; see
    #: :mod:`celery_workflows.children`): written in the same transaction
    children: list[Outbox] = field(default_factory=list)
    #: events of joins (:class:`~celery_workflows.joins.Arrival`): the ledger checks each
    #: join under its run's lock once the events are written, and creates its job if complete
    arrivals: list[Arrival] = field(default_factory=list)
    #: gathers the step's success opens (:mod:`celery_workflows.gathers`), with its branch jobs
    gathers: list[GatherStart] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events or self.jobs or self.gathers)


@dataclass(frozen=True)
class Recorded:
    """What an outcome write did besides the job's own row."""

    #: the jobs its outbox created (duplicates of ones written before are left out)
    created: list[NewJob]
    #: the run's final status when this write settled it (exactly one writer gets it)
    run_status: RunStatus | None = None
    #: the attempt failed in a run that was stopped: instead of a retry the job was cancelled
    retry_cancelled: bool = False
    #: when this write settled a child run: its parent, which learns of the end
    parent: str | None = None


@dataclass(frozen=True)
class EnqueueResult:
    job_id: str
    #: False when an existing job with the same idempotency key was returned instead
    created: bool
    #: the workflow the job belongs to
    correlation_id: str
    #: when the job's row was written (as stored; None when an existing job was returned)
    created_at: datetime | None = None


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
    #: set for a compensation job: the job whose work it undoes
    compensates: str | None = None
    #: the business key of the job's run (for log lines)
    business_key: str = ""
    #: set for a job of a debounced subscription: a newer job with it supersedes this one
    coalesce_key: str = ""
    #: set for a branch of a map: the gather its final outcome counts on
    gather_id: str | None = None


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
    #: for a compensation job: the job whose work it undoes
    compensates: str | None = None
    #: the W3C traceparent the job was written under (its workflow's trace)
    trace_id: str = ""
    priority: int | None = None
    #: when the current (or last) attempt started
    started_at: datetime | None = None
    #: for a branch of a map: its gather and its item's index
    gather_id: str | None = None
    gather_index: int | None = None


@dataclass(frozen=True)
class Dispatch:
    """A notice to publish: job ``job_id`` is ready for attempt ``attempt``."""

    job_id: str
    queue: str
    attempt: int
    priority: int | None
    countdown: float = 0.0


@dataclass(frozen=True)
class DueJob:
    """A queued job whose time has come and whose notice was never sent, or was sent at
    ``published_at`` and has not been claimed since."""

    job_id: str
    queue: str
    attempt: int
    priority: int | None
    published_at: datetime | None

    @property
    def dispatch(self) -> Dispatch:
        return Dispatch(self.job_id, self.queue, self.attempt, self.priority)


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
    #: set when the expired job is a compensation
    compensates: str | None = None
    #: set when the expired job is a branch of a map
    gather_id: str | None = None


@dataclass(frozen=True)
class StateValue:
    value: Any
    #: 1 after the first write, +1 per write
    version: int


@dataclass(frozen=True)
class HistoryEntry:
    """One job (with its attempts) or one event of a workflow, in time order."""

    kind: str  # "job" or "event"
    at: datetime
    #: the queue for a job, the event name for an event
    name: str
    id: str
    #: job status; for an event, where it came from
    status: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    payload: Any = None
    result: Any = None
    error: str = ""
    caused_by: str | None = None
    #: for a compensation job: the job whose work it undid
    compensates: str | None = None
    #: for a job: what its attempt last reported (``fraction``, ``message``, ``at``), if any
    progress: dict[str, Any] | None = None
    #: for a branch of a map: its item's index
    branch: int | None = None
    #: for a job a join started (every one of its events had happened)
    joined: bool = False


@dataclass(frozen=True)
class AuditRecord:
    """An operator's action on a workflow: who did what, and when."""

    action: str
    actor: str
    at: datetime
    job_id: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WorkflowStatus:
    """A workflow run as seen from outside: status, current step, history, state, audit."""

    correlation_id: str
    name: str
    business_key: str
    status: str
    current_step: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    history: list[HistoryEntry]
    states: dict[str, Any]
    #: the open approval gate while the run is ``waiting``
    waiting_for: dict[str, Any] | None = None
    audit: list[AuditRecord] = field(default_factory=list)
    #: when the run times out if it has not finished
    deadline_at: datetime | None = None
    #: why the run was stopped early (cancelled, deadline exceeded), if it was
    ended_by: str = ""
    #: the definition version the run started with (see WorkflowService.version)
    definition_version: str = ""
    #: the run whose step started this one as its child, if one did
    parent_id: str | None = None
    #: the runs this one's steps started as children: correlation id and status, oldest first
    children: list[dict[str, str]] = field(default_factory=list)

    @property
    def dead_letters(self) -> list[HistoryEntry]:
        return [h for h in self.history if h.kind == "job" and h.status == JobStatus.DEAD]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "finished_at", "deadline_at"):
            data[key] = data[key].isoformat() if data[key] else None
        for entry in data["history"]:
            entry["at"] = entry["at"].isoformat()
        for entry in data["audit"]:
            entry["at"] = entry["at"].isoformat()
        return data


@dataclass(frozen=True)
class CopiedStep:
    """A completed step of a run, copied into a rerun of it: its recorded result is kept and
    it is not run again (a new row in the new run, succeeded)."""

    job: NewJob
    result: Any
    attempts: int
    attempt_log: list[dict[str, Any]]
    finished_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class RunEnd:
    """How a child run ended, as its parent learns it."""

    parent: str
    status: RunStatus
    #: the result of its last job
    result: Any = None
    #: why it did not complete: a dead step's reason, or why it was stopped ("" if it did)
    error: str = ""


@dataclass(frozen=True)
class QueueControl:
    """A queue's hold: paused or not (by whom, why) and its run of failed attempts."""

    queue: str
    paused: bool
    paused_at: datetime | None = None
    paused_by: str = ""
    reason: str = ""
    failures: int = 0


@dataclass(frozen=True)
class QueueMinute:
    """Attempts of one queue in one minute, as one process counted them."""

    queue: str
    minute: datetime
    succeeded: int = 0
    failed: int = 0
    dead: int = 0
    duration_ms: float = 0.0
