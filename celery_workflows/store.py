"""The storage seam: what the Celery side needs from the database, split by the role it plays.

The database is the ledger: it says which jobs are owed, who holds each lease and what every
attempt did. The broker only carries "job X, attempt N is ready" notices. Every write that
belongs to an attempt is *fenced*: it names the attempt's lease token and only succeeds while
that lease is held and unexpired, so a zombie worker cannot overwrite a newer attempt.

Five roles, each a small protocol: :class:`Ledger` (the hot path of every job),
:class:`Maintenance` (the sweeper's queries), :class:`Operations` (what operators do, each
audited where it is done), :class:`Runs` (workflow runs, approval gates, state documents) and
:class:`Controls` (pausing queues, their failure streaks and per-minute figures). The Django
app implements all five in one :class:`Store` and installs it with
:func:`configure` when Django starts; mechanics receive the role they need as an argument, and
only the public entry points look the store up with :func:`get_store`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from .errors import StoreNotConfiguredError
from .limits import Held, Limits
from .records import (
    ClaimedJob,
    CopiedStep,
    DueJob,
    EnqueueResult,
    Event,
    ExpiredLease,
    JobRecord,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    QueueControl,
    QueueMinute,
    Recorded,
    RunEnd,
    RunStatus,
    StateValue,
    WorkflowStatus,
)
from .rules import RunJob

#: given a stopped run's jobs (read under the run's lock), the compensation job to write now
#: (see :func:`celery_workflows.rules.next_undo`); passed by the Celery side, which knows the
#: declarations, to the ledger, which knows the rows
UndoPlanner = Callable[[Sequence[RunJob]], NewJob | None]


class Ledger(Protocol):
    """The writes every job makes: insert, claim, outcome (with its outbox)."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after the current transaction commits (at once outside one)."""

    def atomic_step(self) -> AbstractContextManager[None]:
        """The transaction of an atomic step: its handler's writes and its outcome write commit
        together or not at all. A database error inside it, or at its commit, leaves it as
        :class:`~celery_workflows.errors.StepTransactionError` (rolled back)."""

    def run_on_commit_now(self, which: Callable[[Callable[[], None]], bool]) -> None:
        """Inside :meth:`atomic_step`: run now, instead of after its commit, the commit
        callbacks ``which`` picks among those registered in blocks not rolled back."""

    def insert_job(self, job: NewJob) -> EnqueueResult: ...

    def insert_jobs(self, jobs: list[NewJob]) -> list[EnqueueResult]:
        """Insert several jobs (each with its run) in one go; results in the same order."""

    def claim(
        self,
        job_id: str,
        attempt: int,
        lease_token: str,
        worker: str,
        lease_seconds: float,
        limits: Limits | None = None,
        queue: str = "",
    ) -> ClaimedJob | Held | None:
        """Win attempt ``attempt`` of a queued job, or None if it is not claimable. With the
        ``limits`` of its ``queue``: :class:`Held` when a limit holds it back - parked until a
        slot frees, or moved to the moment the rate promised it; no attempt charged."""

    def newer_job(self, job: ClaimedJob) -> str | None:
        """The newest job of ``job``'s debounced subscription and key created after it (which
        supersedes it), or None."""

    def take_held(
        self, queue: str, limits: Limits, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None:
        """Claim, for the caller, the job :meth:`release_held` would send on first (a caller
        that just freed a slot runs it itself, with no broker hop); None if there is none.
        Only for limits without a rate (the rate is taken by the usual claim)."""

    def release_held(
        self, queue: str, limits: Limits, most: int, due_before: datetime | None = None
    ) -> list[DueJob]:
        """Mark published up to ``most`` of the jobs ``limits`` held back that now have a free
        slot (highest priority first, then the longest waiting; with ``due_before``, only
        jobs due since then); the caller publishes them."""

    def extend_lease(
        self, job_id: str, lease_token: str, lease_seconds: float
    ) -> datetime | None: ...

    def report_progress(self, job_id: str, lease_token: str, progress: dict[str, Any]) -> bool:
        """Note what the attempt holding ``lease_token`` reports; False if it holds none."""
        ...

    def record_outcome(
        self, job: ClaimedJob, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        """Write the attempt's outcome and its outbox in one transaction; settle the run if
        nothing of it is pending any more. None when the fence rejects the write.

        With ``undo`` (the job's service compensates failed runs), a dead letter of a forward
        step stops the run (:mod:`celery_workflows.rules`), and the outcome of any job of a
        stopped run writes the next compensation when one is due."""

    def write_outbox(self, outbox: Outbox) -> list[NewJob]:
        """Write events and jobs (skipping ones already written); return the jobs created."""

    def is_cancel_requested(self, job_id: str) -> bool: ...

    def knows_job(self, job_id: str) -> bool:
        """Whether the ledger has a job with this id (in any status)."""

    def record_unroutable(self, queue: str, body: Any, reason: str) -> str:
        """Dead-letter a message no job could be read from; return the new row's id."""


class Maintenance(Protocol):
    """The sweeper's queries: expired leases and due jobs."""

    def expire_leases(self, queues: list[str], now: datetime, limit: int) -> list[ExpiredLease]: ...

    def settle_expired(
        self, lease: ExpiredLease, outcome: Outcome, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        """Record an expired lease's outcome once (the same write as a worker's, fenced by
        the lease token alone; ``undo`` as for :meth:`Ledger.record_outcome`); None if another
        sweeper did."""

    def release_unstarted(self, lease: ExpiredLease) -> bool:
        """An expired lease of a job written claimed by local continuation whose attempt was
        never recorded (attempt 0): the job is queued again for attempt 1 and published at
        once, charged nothing. False if another sweeper did it."""

    def expire_held_by(self, worker: str, now: datetime) -> int:
        """End now every lease held by ``worker`` (``host:pid``), a process known to be dead;
        the next sweeper pass settles them. Returns how many."""

    def due_jobs(
        self,
        queues: list[str],
        now: datetime,
        stale_before: datetime,
        limit: int,
        capped: Sequence[str] = (),
    ) -> list[DueJob]:
        """Queued jobs due by ``now`` whose notice was never sent or sent before
        ``stale_before``, oldest notice first. Of the ``capped`` queues only the stale ones:
        their unsent jobs wait for a slot (:meth:`Ledger.release_held`)."""

    def mark_published(self, due: DueJob, now: datetime) -> bool:
        """Note that ``due``'s notice is sent now - if no other sweeper did since it was read."""

    def runs_past_deadline(self, now: datetime, limit: int) -> list[str]:
        """Open runs whose deadline has passed and that were not stopped yet."""

    def expired_gates(self, now: datetime, limit: int) -> list[str]:
        """Runs waiting on an approval gate whose expiry has passed."""

    def settle_idle_runs(
        self, now: datetime, started_before: datetime, limit: int
    ) -> list[tuple[str, RunStatus]]:
        """The backstop: runs started before ``started_before`` and still open (running or
        compensating) with nothing pending - which a correct write never leaves - are settled
        (a run whose counter drifted from its rows is corrected instead). Returns the settled
        runs and their final statuses."""


class Operations(Protocol):
    """What operators do. Each action writes its audit entry in the same transaction."""

    def get_job(self, job_id: str) -> JobRecord: ...

    def list_dead_letters(self, queue: str | None, limit: int) -> list[JobRecord]: ...

    def redrive(
        self, job_id: str, new_job: NewJob, actor: str, detail: dict[str, Any]
    ) -> EnqueueResult:
        """Replace dead letter ``job_id`` by ``new_job`` (once) and reopen its run."""

    def discard(self, job_id: str, actor: str) -> None: ...

    def start_rerun(
        self,
        of: str,
        copies: list[CopiedStep],
        events: list[Event],
        job: NewJob,
        actor: str,
        detail: dict[str, Any],
    ) -> EnqueueResult:
        """Start ``job``'s new run (``job.starts``) with ``copies`` recorded as its completed
        steps and ``events`` as theirs, audited on both runs, in one transaction."""

    def request_cancel(self, job_id: str, actor: str) -> JobStatus: ...

    def release_lease(self, job_id: str, actor: str) -> bool:
        """End a running job's lease now (audited); False if it is not running."""

    def stop_run(
        self,
        correlation_id: str,
        reason: str,
        actor: str,
        outbox: Outbox,
        undo: UndoPlanner | None,
    ) -> list[NewJob] | None:
        """Stop an open run once, in one transaction: note ``reason``, cancel its queued
        forward jobs, ask its running ones to stop, write ``outbox`` (a timeout event) and -
        with ``undo`` - the first compensation if one is due now; audit it. Returns the jobs
        written (to publish), or None if the run is not open or was stopped already."""

    def rename_queue(self, old: str, new: str, actor: str) -> dict[str, int]:
        """Move what runs in flight still need of queue ``old`` to ``new`` - waiting jobs (to
        be published again), dead letters, completed steps of unfinished runs (for their
        compensation) - audited per run; running jobs are left to finish. Returns counts."""

    def rename_event(self, old: str, new: str, actor: str) -> int:
        """Point open approval gates waiting to emit ``old`` at ``new``; return how many."""

    def prune_finished(self, finished_before: datetime, batch_size: int, actor: str) -> int:
        """Delete finished runs (and their jobs, events and own state documents) older than
        ``finished_before``, ``batch_size`` runs per transaction; audit the prune with
        ``actor`` (audit entries are kept); return how many runs were deleted."""


class Runs(Protocol):
    """Workflow runs, their approval gates and the state documents steps share."""

    def atomic(self) -> AbstractContextManager[Any]:
        """A transaction around several store calls."""

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus: ...

    def open_run_for_key(self, name: str, business_key: str) -> tuple[str, str] | None:
        """Inside a transaction: hold the key (service ``name``, ``business_key``) until it
        ends, so concurrent starts of the same key take turns, and return the open run with
        that key - (correlation id, id of its first job) - if there is one."""

    def run_trace(self, correlation_id: str) -> str:
        """The newest traceparent a job of the run was written under ("" if none): what a
        write on the run's behalf from outside any attempt (a stop, a redrive) continues."""

    def run_end(self, correlation_id: str) -> RunEnd | None:
        """How the run ended, if it has and it is a child run (None otherwise)."""

    def ended_children(self, limit: int) -> list[str]:
        """Child runs that ended while their parent still waits (the sweeper's backstop)."""

    def open_children(self, correlation_id: str) -> list[str]:
        """The run's child runs that are still open."""

    def orphaned_children(self, limit: int) -> list[tuple[str, str]]:
        """(child, parent) of open child runs whose parent was stopped or is failing."""

    def close_gate(
        self,
        correlation_id: str,
        actor: str,
        action: str,
        comment: str,
        expired: bool = False,
        awaits: str = "",
        user_id: str = "",
    ) -> dict[str, Any] | None:
        """Close the run's open gate (once, audited as ``action``, with ``user_id`` when one
        decided) and set it running; return the gate. With ``expired``, only if the gate's
        expiry has passed (a gate of either kind); otherwise only a gate that ``awaits`` this
        event ("": a decision's gate)."""

    def escalate_gate(self, correlation_id: str, now: datetime) -> dict[str, Any] | None:
        """If the run's open gate expired and names ``escalate_to``, pass it to those deciders
        (:func:`celery_workflows.approvals.escalated`), audited as ``escalate`` by
        ``system``, and return it; None otherwise."""

    def run_status(self, correlation_id: str) -> RunStatus | None: ...

    def record_fire(
        self, schedule: str, slot: datetime, outcome: str, reason: str, correlation_id: str
    ) -> bool:
        """Record one firing of a schedule; False if this (schedule, slot) fired already."""

    def last_fire(self, schedule: str, started: bool = False) -> tuple[datetime, str, str] | None:
        """The latest firing of a schedule: (slot, outcome, correlation id of its run); with
        ``started``, the latest that started a run (a skipped firing started none, and the
        ``seen`` mark of a schedule noticed late for the first time is no firing)."""

    def get_state(self, scope: str, key: str) -> StateValue | None:
        """Document ``key`` of ``scope`` (a run's correlation id, or "" for shared ones)."""

    def put_state(
        self,
        scope: str,
        key: str,
        value: Any,
        expected_version: int | None,
        writer: str | None,
    ) -> int | None:
        """Write document ``key`` of ``scope`` (``writer``: the run writing it); with
        ``expected_version``, only if it is still at that version (0 = absent). Returns the
        new version, or None when the check failed."""


class Controls(Protocol):
    """Holds on queues and the figures operators watch them by."""

    def queue_controls(self) -> dict[str, QueueControl]:
        """Every queue that has a control row (paused, or failing)."""

    def set_paused(self, queue: str, paused: bool, actor: str, reason: str) -> bool:
        """Pause or resume ``queue`` (audited); False if it already was in that state."""

    def count_failure(self, queue: str) -> int:
        """Add one to the queue's run of consecutive failed attempts; return the run."""

    def reset_failures(self, queue: str) -> None:
        """A success ends the queue's run of failed attempts."""

    def park(self, job_id: str, attempt: int) -> bool:
        """A notice for a job of a paused queue was consumed: keep the job queued, marked
        unpublished, so it is published again once the queue is resumed."""

    def add_minutes(self, rows: list[QueueMinute]) -> None:
        """Add per-process sums to the per-queue, per-minute figures."""

    def release_connection(self) -> None:
        """Close the calling thread's database connection (a helper thread is done)."""


class Store(Ledger, Maintenance, Operations, Runs, Controls, Protocol):
    """Everything the toolkit stores, as one object (the Django app's implementation)."""


_store: Store | None = None


def configure(store: Store | None) -> None:
    """Install the store (the Django app does this in ``AppConfig.ready``)."""
    global _store
    _store = store


def get_store() -> Store:
    if _store is None:
        raise StoreNotConfiguredError(
            "No workflow ledger is configured: add 'django_app' to INSTALLED_APPS and call "
            "django.setup() before enqueueing or running jobs."
        )
    return _store
