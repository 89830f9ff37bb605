"""An in-memory store: every storage role of :mod:`celery_workflows.store`, in dicts.

For tests only - of the toolkit's mechanics, and of your own code where a database and a
worker would only slow a unit test down. It is **not durable**: everything lives in the
process that made it, and a worker process cannot see it. Queue behaviour (leases under real
crashes, brokers, redelivery) still needs a real worker on the real ledger (the rest of
:mod:`celery_workflows.testing`).

It follows the rules the Django ledger follows - :mod:`celery_workflows.rules` for settling a
run, stopping it and undoing its steps, the same fences for every write - so the stateful test
(``tests/integration/test_run_interleavings.py``) can hold both to the same invariants::

    from celery_workflows.store import configure
    from celery_workflows.testing.memory import InMemoryStore

    configure(InMemoryStore())   # enqueue(), emit(), get_workflow() ... now use it

Writes are serialised by one lock; :meth:`InMemoryStore.atomic` is a transaction (a failure
inside it restores what was there before), with ``on_commit`` callbacks run after it.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .. import approvals, gathers, joins, rules
from ..clock import utcnow
from ..errors import JobNotFoundError, NotDeadLetteredError, RenameError, WorkflowNotFoundError
from ..gathers import GatherStart
from ..ids import new_id
from ..lifecycle import PUBLISH_HORIZON_SECONDS
from ..limits import Held, HeldBy, Limits, held_by, paced
from ..records import (
    OPEN_RUN_STATUSES,
    PENDING_JOB_STATUSES,
    AttemptRecord,
    AuditRecord,
    ClaimedJob,
    CopiedStep,
    DueJob,
    EnqueueResult,
    Event,
    ExpiredLease,
    HistoryEntry,
    JobRecord,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    QueueControl,
    QueueMinute,
    Recorded,
    RunEnd,
    RunStart,
    RunStatus,
    StateValue,
    WorkflowStatus,
)
from ..rules import RunCounters, RunJob
from ..status import current_step
from ..store import UndoPlanner

if TYPE_CHECKING:
    from ..store import Store


@dataclass
class _Job:
    id: str
    service: str
    queue: str
    payload: Any
    max_attempts: int
    correlation_id: str
    available_at: datetime
    created_at: datetime
    status: JobStatus = JobStatus.QUEUED
    result: Any = None
    attempts: int = 0
    priority: int | None = None
    idempotency_key: str | None = None
    published_at: datetime | None = None
    lease_token: str | None = None
    lease_expires_at: datetime | None = None
    worker: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    cancel_requested: bool = False
    dead_reason: str = ""
    attempt_log: list[dict[str, Any]] = field(default_factory=list)
    caused_by: str | None = None
    trace_id: str = ""
    compensates: str | None = None
    redriven_from: str | None = None
    limit_key: str = ""
    coalesce_key: str = ""
    gather_id: str | None = None
    gather_index: int | None = None
    progress: dict[str, Any] | None = None


@dataclass
class _Run:
    correlation_id: str
    name: str
    business_key: str
    started_by: str
    started_at: datetime
    deadline_at: datetime | None = None
    definition_version: str = ""
    status: RunStatus = RunStatus.RUNNING
    finished_at: datetime | None = None
    last_job_id: str = ""
    waiting_for: dict[str, Any] | None = None
    gate_expires_at: datetime | None = None
    pending_jobs: int = 0
    dead_jobs: int = 0
    cancelled_jobs: int = 0
    compensation_jobs: int = 0
    failed_compensations: int = 0
    ended_by: str = ""
    parent_id: str | None = None


@dataclass
class _Data:
    jobs: dict[str, _Job] = field(default_factory=dict)
    runs: dict[str, _Run] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    #: (scope, key) -> (value, version, written_by)
    states: dict[tuple[str, str], tuple[Any, int, str]] = field(default_factory=dict)
    #: (schedule, slot) -> (fired_at, outcome, reason, correlation id)
    fires: dict[tuple[str, datetime], tuple[datetime, str, str, str]] = field(default_factory=dict)
    controls: dict[str, QueueControl] = field(default_factory=dict)
    #: queue -> [earliest next start, end of the starts promised], Unix seconds (rate limits)
    pacing: dict[str, list[float]] = field(default_factory=dict)
    minutes: dict[tuple[str, datetime], QueueMinute] = field(default_factory=dict)
    #: (correlation id, record)
    audit: list[tuple[str, AuditRecord]] = field(default_factory=list)
    #: gather id -> (its start, [branches succeeded, dead branches gathered without])
    gathers: dict[str, tuple[GatherStart, list[int]]] = field(default_factory=dict)


class InMemoryStore:
    """Every role of :class:`celery_workflows.store.Store`, in memory (see the module)."""

    def __init__(self) -> None:
        self._data = _Data()
        self._lock = threading.RLock()
        self._depth = 0
        self._after_commit: list[Callable[[], None]] = []

    # -- transactions -------------------------------------------------------------------

    @contextmanager
    def atomic(self) -> Iterator[None]:
        with self._lock:
            saved = copy.deepcopy(self._data) if self._depth == 0 else None
            self._depth += 1
            try:
                yield
            except BaseException:
                if saved is not None:
                    self._data = saved
                    self._after_commit = []
                raise
            finally:
                self._depth -= 1
        if self._depth == 0:
            callbacks, self._after_commit = self._after_commit, []
            for callback in callbacks:
                callback()

    def atomic_step(self) -> AbstractContextManager[None]:
        """The ledger's side only: this store cannot hold the project's models in it."""
        return self.atomic()

    def run_on_commit_now(self, which: Callable[[Callable[[], None]], bool]) -> None:
        picked = [c for c in self._after_commit if which(c)]
        self._after_commit = [c for c in self._after_commit if not which(c)]
        for callback in picked:
            callback()

    def on_commit(self, callback: Callable[[], None]) -> None:
        if self._depth:
            self._after_commit.append(callback)
        else:
            callback()

    def _audit(
        self, correlation_id: str, job_id: str, action: str, actor: str, **detail: Any
    ) -> None:
        self._data.audit.append(
            (correlation_id, AuditRecord(action, actor[:150], utcnow(), job_id, detail))
        )

    # -- the run's counters, as the ledger keeps them -------------------------------------

    def _change_run(
        self, correlation_id: str, job_id: str, now: datetime, **delta: Any
    ) -> RunStatus | None:
        run = self._data.runs.get(correlation_id)
        if run is None:
            return None
        before = RunCounters(
            run.status,
            run.pending_jobs,
            run.dead_jobs,
            run.cancelled_jobs,
            run.compensation_jobs,
            run.failed_compensations,
            run.ended_by,
        )
        after = rules.changed(before, **delta)
        run.pending_jobs, run.dead_jobs = after.pending_jobs, after.dead_jobs
        run.cancelled_jobs, run.compensation_jobs = after.cancelled_jobs, after.compensation_jobs
        run.failed_compensations, run.status = after.failed_compensations, after.status
        if after.status.is_final and not before.status.is_final:
            run.finished_at, run.last_job_id = now, job_id
            return after.status
        return None

    def _new_run(self, correlation_id: str, starts: RunStart, now: datetime) -> None:
        if correlation_id not in self._data.runs:
            self._data.runs[correlation_id] = _Run(
                correlation_id,
                starts.name,
                starts.business_key,
                starts.started_by,
                now,
                starts.deadline_at,
                starts.version,
                parent_id=starts.parent,
            )

    def _insert(self, job: NewJob, now: datetime) -> bool:
        """Insert a job row unless its id, or its (queue, idempotency key), is taken."""
        if job.id in self._data.jobs:
            return False
        if job.idempotency_key is not None and any(
            j.queue == job.queue and j.idempotency_key == job.idempotency_key
            for j in self._data.jobs.values()
        ):
            return False
        row = _Job(
            job.id,
            job.service,
            job.queue,
            copy.deepcopy(job.payload),
            job.max_attempts,
            job.correlation_id,
            job.available_at,
            now,
            priority=job.priority,
            idempotency_key=job.idempotency_key,
            published_at=job.available_at if job.published else None,
            caused_by=job.caused_by,
            trace_id=job.trace_id,
            compensates=job.compensates,
            redriven_from=job.redriven_from,
            limit_key=job.limit_key,
            coalesce_key=job.coalesce_key,
            gather_id=job.gather_id,
            gather_index=job.gather_index,
        )
        if job.lease is not None:  # written claimed; its attempt counts from its outcome
            row.status, row.published_at = JobStatus.RUNNING, None
            row.lease_token, row.lease_expires_at = job.lease.token, job.lease.expires_at
            row.worker, row.started_at = job.lease.worker, job.lease.started_at
        self._data.jobs[job.id] = row
        return True

    def _run_jobs(self, correlation_id: str) -> list[RunJob]:
        return [
            RunJob(
                j.id,
                j.correlation_id,
                j.queue,
                j.status,
                j.finished_at,
                j.compensates,
                copy.deepcopy(j.payload),
                j.priority,
                j.trace_id,
            )
            for j in self._data.jobs.values()
            if j.correlation_id == correlation_id
        ]

    def _write_rows(self, outbox: Outbox, now: datetime) -> list[NewJob]:
        for event in outbox.events:
            self._data.events.setdefault(event.id, copy.deepcopy(event))
        for start in outbox.gathers:
            self._data.gathers.setdefault(start.id, (start, [0, 0]))
        jobs = [*outbox.jobs, *joins.completed(outbox.arrivals, self._run_events)]
        return [job for job in jobs if self._insert(job, now)]

    def _run_events(self, correlation_id: str, names: tuple[str, ...]) -> list[joins.EventRow]:
        found = [
            e
            for e in self._data.events.values()
            if e.correlation_id == correlation_id and e.name in names
        ]
        found.sort(key=lambda e: (e.emitted_at, e.id))
        return [(e.id, e.name, copy.deepcopy(e.payload)) for e in found]

    def _count_branch(self, gather_id: str, succeeded: bool) -> gathers.Tally | None:
        found = self._data.gathers.get(gather_id)
        if found is None:
            return None
        start, counts = found
        if succeeded:
            counts[0] += 1
        elif start.on_failure == "continue":
            counts[1] += 1
        return gathers.Tally(start, counts[0], counts[1])

    def _stop_forward(self, correlation_id: str, keep: str, now: datetime) -> int:
        cancel, ask = rules.stop_effects(self._run_jobs(correlation_id), keep)
        for job_id in cancel:
            job = self._data.jobs[job_id]
            job.status, job.finished_at, job.cancel_requested = JobStatus.CANCELLED, now, True
        for job_id in ask:
            self._data.jobs[job_id].cancel_requested = True
        return len(cancel)

    def _plan_undo(
        self, correlation_id: str, undo: UndoPlanner | None, now: datetime
    ) -> list[NewJob]:
        if undo is None:
            return []
        job = undo(self._run_jobs(correlation_id))
        return self._write_rows(Outbox(jobs=[job]), now) if job is not None else []

    def _leave_gate(self, run: _Run) -> None:
        if run.status == RunStatus.WAITING:
            run.status, run.waiting_for, run.gate_expires_at = RunStatus.RUNNING, None, None

    # -- Ledger ---------------------------------------------------------------------------

    def insert_job(self, job: NewJob) -> EnqueueResult:
        return self.insert_jobs([job])[0]

    def insert_jobs(self, jobs: list[NewJob]) -> list[EnqueueResult]:
        now = utcnow()
        results = []
        with self.atomic():
            for job in jobs:
                if job.starts is not None:
                    self._new_run(job.correlation_id, job.starts, now)
                if self._insert(job, now):
                    self._change_run(job.correlation_id, "", now, pending=1)
                    results.append(EnqueueResult(job.id, True, job.correlation_id, now))
                    continue
                first = next(
                    j
                    for j in self._data.jobs.values()
                    if j.id == job.id
                    or (j.queue == job.queue and j.idempotency_key == job.idempotency_key)
                )
                results.append(EnqueueResult(first.id, first.id == job.id, first.correlation_id))
        return results

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
        now = utcnow()
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if job is None or (limits is not None and job.queue != queue):
                return None
            paused = self._data.controls.get(job.queue)
            reclaim = (
                job.status == JobStatus.RUNNING
                and job.attempts == attempt
                and job.lease_token == lease_token
            )
            claimable = reclaim or (
                job.status == JobStatus.QUEUED
                and job.attempts == attempt - 1
                and not (paused is not None and paused.paused)
            )
            if not claimable:
                return None
            if limits is not None and not reclaim:
                held = self._held(job, limits, now)
                if held is not None:
                    return held
            expires = now + _seconds(lease_seconds)
            job.status, job.attempts, job.lease_token = JobStatus.RUNNING, attempt, lease_token
            job.lease_expires_at, job.worker, job.started_at = expires, worker, now
            run = self._data.runs.get(job.correlation_id)
            return ClaimedJob(
                id=job.id,
                queue=job.queue,
                payload=copy.deepcopy(job.payload),
                attempt=attempt,
                max_attempts=job.max_attempts,
                correlation_id=job.correlation_id,
                lease_token=lease_token,
                lease_expires_at=expires,
                started_at=now,
                attempt_log=list(job.attempt_log),
                created_at=job.created_at,
                priority=job.priority,
                trace_id=job.trace_id,
                compensates=job.compensates,
                business_key=run.business_key if run else "",
                coalesce_key=job.coalesce_key,
                gather_id=job.gather_id,
            )

    def _slots_in_use(self, queue: str, now: datetime) -> Counter[str]:
        """Unexpired leases of ``queue``, per limit key."""
        return Counter(
            j.limit_key
            for j in self._data.jobs.values()
            if j.queue == queue
            and j.status == JobStatus.RUNNING
            and j.lease_expires_at is not None
            and j.lease_expires_at > now
        )

    def _held(self, job: _Job, limits: Limits, now: datetime) -> Held | None:
        """The limits' answer for a claimable ``job``: parked by a cap, moved by the rate."""
        in_use = self._slots_in_use(job.queue, now)
        by = held_by(limits, in_use.total(), in_use[job.limit_key])
        if by is not None:
            job.published_at = None
            return Held(by)
        if limits.rate is None:
            return None
        pacing = self._data.pacing.setdefault(job.queue, [0.0, 0.0])  # next start, backlog
        clock = now.timestamp()
        nxt = paced(pacing[0], clock, limits.interval)
        if nxt is not None:
            pacing[0] = nxt
            return None
        start = max(pacing[1], pacing[0], clock)
        pacing[1] = start + limits.interval
        wait = start - clock
        job.available_at = now + _seconds(wait)
        published = wait <= PUBLISH_HORIZON_SECONDS
        job.published_at = job.available_at if published else None
        return Held(HeldBy.RATE, retry_in=wait if published else None)

    def newer_job(self, job: ClaimedJob) -> str | None:
        with self._lock:
            newer = [
                j
                for j in self._data.jobs.values()
                if j.queue == job.queue
                and j.coalesce_key == job.coalesce_key
                and j.created_at > job.created_at
            ]
            return max(newer, key=lambda j: j.created_at).id if newer else None

    def take_held(
        self, queue: str, limits: Limits, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None:
        with self.atomic():
            for due in self._choose_held(queue, limits, 1, utcnow()):
                claimed = self.claim(
                    due.job_id, due.attempt, lease_token, worker, lease_seconds, limits, queue
                )
                return claimed if isinstance(claimed, ClaimedJob) else None
            return None

    def release_held(
        self, queue: str, limits: Limits, most: int, due_before: datetime | None = None
    ) -> list[DueJob]:
        now = utcnow()
        with self.atomic():
            chosen = self._choose_held(queue, limits, most, now, due_before or now)
            for due in chosen:
                self._data.jobs[due.job_id].published_at = now
            return chosen

    def _choose_held(
        self, queue: str, limits: Limits, most: int, now: datetime, due_by: datetime | None = None
    ) -> list[DueJob]:
        with self.atomic():
            paused = self._data.controls.get(queue)
            if paused is not None and paused.paused:
                return []
            held = sorted(
                (
                    j
                    for j in self._data.jobs.values()
                    if j.queue == queue
                    and j.status == JobStatus.QUEUED
                    and j.published_at is None
                    and j.available_at <= (due_by or now)
                ),
                key=lambda j: (-(j.priority or 0), j.available_at, j.id),
            )
            in_use = self._slots_in_use(queue, now)
            chosen: list[DueJob] = []
            for job in held:
                by = held_by(limits, in_use.total(), in_use[job.limit_key])
                if len(chosen) >= most or by is HeldBy.CONCURRENCY:
                    break
                if by is HeldBy.KEY:
                    continue
                in_use[job.limit_key] += 1
                chosen.append(DueJob(job.id, queue, job.attempts + 1, job.priority, None))
            return chosen

    def extend_lease(self, job_id: str, lease_token: str, lease_seconds: float) -> datetime | None:
        now = utcnow()
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if not self._holds(job, lease_token, now):
                return None
            assert job is not None
            job.lease_expires_at = now + _seconds(lease_seconds)
            return job.lease_expires_at

    def _arrived_before(self, correlation_id: str, gate: dict[str, Any]) -> bool:
        """Whether the event an event gate awaits already happened in the run (since ``since``)."""
        if not approvals.awaits_event(gate):
            return False
        since = datetime.fromisoformat(gate["since"])
        return any(
            e.correlation_id == correlation_id
            and e.name == gate["awaits"]
            and e.emitted_at >= since
            for e in self._data.events.values()
        )

    def report_progress(self, job_id: str, lease_token: str, progress: dict[str, Any]) -> bool:
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if not self._holds(job, lease_token, None):
                return False
            assert job is not None
            job.progress = copy.deepcopy(progress)
            return True

    @staticmethod
    def _holds(job: _Job | None, token: str, now: datetime | None) -> bool:
        """The fence: the job is running under ``token`` (and, with ``now``, unexpired)."""
        return (
            job is not None
            and job.status == JobStatus.RUNNING
            and job.lease_token == token
            and (now is None or (job.lease_expires_at is not None and job.lease_expires_at > now))
        )

    def record_outcome(
        self, job: ClaimedJob, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        return self._write_outcome(
            job.id,
            job.correlation_id,
            job.attempt,
            job.lease_token,
            job.compensates,
            True,
            outcome,
            outbox,
            undo,
        )

    def _write_outcome(
        self,
        job_id: str,
        correlation_id: str,
        attempt: int,
        token: str,
        compensates: str | None,
        held: bool,
        outcome: Outcome,
        outbox: Outbox,
        undo: UndoPlanner | None,
    ) -> Recorded | None:
        """The one outcome write (as :mod:`django_app.outcomes` does it, locked path)."""
        now = utcnow()
        forward, dead = compensates is None, outcome.status == JobStatus.DEAD
        with self.atomic():
            row = self._data.jobs.get(job_id)
            if not self._holds(row, token, now if held else None):
                return self._written_before(row, token, attempt, outcome, outbox, held)
            assert row is not None
            run = self._data.runs.get(correlation_id)
            stopping = run is not None and (
                bool(run.ended_by) or run.status == RunStatus.COMPENSATING
            )
            open_run = run is not None and run.status in OPEN_RUN_STATUSES
            cancelled_retry = outcome.status == JobStatus.QUEUED and not rules.retries_allowed(
                stopping, compensates
            )
            row.attempts, row.lease_expires_at = attempt, None
            if not held:
                row.lease_token = None
            row.attempt_log.append(outcome.attempt.to_json())
            if cancelled_retry:
                row.status, row.finished_at = JobStatus.CANCELLED, outcome.attempt.finished_at
                row.published_at = None
            elif outcome.status == JobStatus.SUCCEEDED:
                row.status, row.result = JobStatus.SUCCEEDED, copy.deepcopy(outcome.result)
                row.finished_at = outcome.attempt.finished_at
            elif outcome.status == JobStatus.QUEUED:
                assert outcome.available_at is not None
                row.status, row.available_at = JobStatus.QUEUED, outcome.available_at
                row.published_at = outcome.available_at if outcome.published else None
            else:
                row.status, row.dead_reason = JobStatus.DEAD, outcome.reason
                row.finished_at = outcome.attempt.finished_at
            tally = None
            if (
                row.gather_id
                and forward
                and not cancelled_retry
                and outcome.status != JobStatus.QUEUED
            ):
                tally = self._count_branch(row.gather_id, outcome.status == JobStatus.SUCCEEDED)
            dead = dead and not (tally is not None and tally.tolerates_failure)
            fails = undo is not None and forward and dead and open_run and not stopping
            stopped = 0
            if fails:
                assert run is not None
                self._leave_gate(run)
                stopped = self._stop_forward(correlation_id, job_id, now)
            if stopping and not outbox.stopping:
                outbox = dataclasses.replace(
                    outbox,
                    jobs=[j for j in outbox.jobs if j.compensates is not None],
                    arrivals=[],
                    gathers=[],
                )
            created = self._write_rows(outbox, now)
            if tally is not None and tally.complete and not (fails or stopping):
                branches = sorted(
                    (j.gather_index or 0, j.status.value, copy.deepcopy(j.result), j.dead_reason)
                    for j in self._data.jobs.values()
                    if j.gather_id == tally.start.id
                )
                gathered = gathers.gathered_job(tally.start, branches, now)
                created += self._write_rows(Outbox(jobs=[gathered]), now)
            undone = self._plan_undo(correlation_id, undo, now) if fails or stopping else []
            if (
                outbox.gate is not None
                and outcome.status == JobStatus.SUCCEEDED
                and run is not None
                and not run.ended_by
                and not self._arrived_before(correlation_id, outbox.gate)
            ):
                if run.status == RunStatus.WAITING and run.waiting_for:
                    run.waiting_for = approvals.queued_behind(run.waiting_for, outbox.gate)
                elif run.status == RunStatus.RUNNING:
                    expires = outbox.gate.get("expires_at")
                    run.status, run.waiting_for = RunStatus.WAITING, dict(outbox.gate)
                    run.gate_expires_at = datetime.fromisoformat(expires) if expires else None
            delta = rules.outcome_delta(
                final=outcome.status != JobStatus.QUEUED or cancelled_retry,
                dead=dead,
                forward=forward,
                fails=fails,
                created=len(created),
                undone=len(undone),
                stopped=stopped,
                cancelled_retry=cancelled_retry,
            )
            settled = self._change_run(correlation_id, job_id, now, **dataclasses.asdict(delta))
            parent = run.parent_id if settled is not None and run is not None else None
            started = []  # child runs: counted on themselves
            if outbox.children and outcome.status == JobStatus.SUCCEEDED and not stopping:
                for child in outbox.children:
                    started += self.write_outbox(child)
        return Recorded(
            [*created, *undone, *started], settled, retry_cancelled=cancelled_retry, parent=parent
        )

    def _written_before(
        self,
        row: _Job | None,
        token: str,
        attempt: int,
        outcome: Outcome,
        outbox: Outbox,
        held: bool,
    ) -> Recorded | None:
        if not held or row is None or row.lease_token != token or row.attempts != attempt:
            return None
        if row.status not in (outcome.status, JobStatus.CANCELLED):
            return None
        known = [j for j in outbox.jobs if j.id in self._data.jobs]
        run = self._data.runs.get(row.correlation_id)
        settled = run.status if run and run.status.is_final and run.last_job_id == row.id else None
        return Recorded(known, settled)

    def write_outbox(self, outbox: Outbox) -> list[NewJob]:
        now = utcnow()
        with self.atomic():
            if not outbox.stopping:
                blocked = {
                    cid
                    for cid, run in self._data.runs.items()
                    if run.ended_by or run.status == RunStatus.COMPENSATING
                }
                outbox = dataclasses.replace(
                    outbox,
                    jobs=[
                        j
                        for j in outbox.jobs
                        if j.compensates is not None or j.correlation_id not in blocked
                    ],
                    arrivals=[a for a in outbox.arrivals if a.correlation_id not in blocked],
                )
            if outbox.starts is not None:
                for event in outbox.events:
                    self._new_run(event.correlation_id, outbox.starts, now)
            created = self._write_rows(outbox, now)
            runs = {e.correlation_id for e in outbox.events} | {j.correlation_id for j in created}
            for correlation_id in sorted(runs):
                count = sum(1 for j in created if j.correlation_id == correlation_id)
                self._change_run(correlation_id, "", now, pending=count)
        return created

    def is_cancel_requested(self, job_id: str) -> bool:
        job = self._data.jobs.get(job_id)
        return job is not None and job.cancel_requested

    def knows_job(self, job_id: str) -> bool:
        return job_id in self._data.jobs

    def record_unroutable(self, queue: str, body: Any, reason: str) -> str:
        now = utcnow()
        job = _Job(new_id(), queue.split(".", 1)[0], queue, body, 1, new_id(), now, now)
        job.status, job.attempts, job.finished_at, job.dead_reason = JobStatus.DEAD, 1, now, reason
        job.attempt_log = [AttemptRecord.refused(reason, now).to_json()]
        with self.atomic():
            self._data.jobs[job.id] = job
        return job.id

    # -- Maintenance ----------------------------------------------------------------------

    def expire_leases(self, queues: list[str], now: datetime, limit: int) -> list[ExpiredLease]:
        with self._lock:
            expired = [
                j
                for j in self._data.jobs.values()
                if j.status == JobStatus.RUNNING
                and j.queue in queues
                and j.lease_expires_at is not None
                and j.lease_expires_at <= now
            ][:limit]
            return [
                ExpiredLease(
                    j.id,
                    j.queue,
                    j.attempts,
                    j.max_attempts,
                    j.lease_token or "",
                    j.worker,
                    j.started_at,
                    j.priority,
                    j.correlation_id,
                    j.compensates,
                )
                for j in expired
            ]

    def settle_expired(
        self, lease: ExpiredLease, outcome: Outcome, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        return self._write_outcome(
            lease.job_id,
            lease.correlation_id,
            lease.attempt,
            lease.lease_token,
            lease.compensates,
            False,
            outcome,
            Outbox(),
            undo,
        )

    def release_unstarted(self, lease: ExpiredLease) -> bool:
        with self.atomic():
            job = self._data.jobs.get(lease.job_id)
            if job is None or job.attempts or not self._holds(job, lease.lease_token, None):
                return False
            job.status, job.lease_token, job.lease_expires_at = JobStatus.QUEUED, None, None
            job.worker, job.started_at, job.published_at = "", None, None
            return True

    def expire_held_by(self, worker: str, now: datetime) -> int:
        with self.atomic():
            held = [
                j
                for j in self._data.jobs.values()
                if j.status == JobStatus.RUNNING
                and j.worker == worker
                and j.lease_expires_at is not None
                and j.lease_expires_at > now
            ]
            for job in held:
                job.lease_expires_at = now
            return len(held)

    def due_jobs(
        self,
        queues: list[str],
        now: datetime,
        stale_before: datetime,
        limit: int,
        capped: Sequence[str] = (),
    ) -> list[DueJob]:
        with self._lock:
            due = [
                j
                for j in self._data.jobs.values()
                if j.status == JobStatus.QUEUED
                and j.queue in queues
                and j.available_at <= now
                and (
                    (j.published_at is None and j.queue not in capped)
                    or (j.published_at is not None and j.published_at < stale_before)
                )
            ]
            due.sort(key=lambda j: (j.published_at is not None, j.published_at or now))
            return [
                DueJob(j.id, j.queue, j.attempts + 1, j.priority, j.published_at)
                for j in due[:limit]
            ]

    def mark_published(self, due: DueJob, now: datetime) -> bool:
        with self.atomic():
            job = self._data.jobs.get(due.job_id)
            if (
                job is None
                or job.status != JobStatus.QUEUED
                or job.attempts != due.attempt - 1
                or job.published_at != due.published_at
            ):
                return False
            job.published_at = now
            return True

    def runs_past_deadline(self, now: datetime, limit: int) -> list[str]:
        with self._lock:
            return [
                r.correlation_id
                for r in self._data.runs.values()
                if r.deadline_at is not None
                and r.deadline_at <= now
                and r.finished_at is None
                and not r.ended_by
            ][:limit]

    def expired_gates(self, now: datetime, limit: int) -> list[str]:
        with self._lock:
            return [
                r.correlation_id
                for r in self._data.runs.values()
                if r.status == RunStatus.WAITING
                and r.gate_expires_at is not None
                and r.gate_expires_at <= now
            ][:limit]

    def settle_idle_runs(
        self, now: datetime, started_before: datetime, limit: int
    ) -> list[tuple[str, RunStatus]]:
        settled: list[tuple[str, RunStatus]] = []
        with self.atomic():
            for run in list(self._data.runs.values()):
                if len(settled) >= limit:
                    break
                if run.status not in rules.SETTLES_FROM or run.pending_jobs:
                    continue
                if run.started_at >= started_before:
                    continue
                pending = sum(
                    1
                    for j in self._data.jobs.values()
                    if j.correlation_id == run.correlation_id and j.status in PENDING_JOB_STATUSES
                )
                if pending:
                    run.pending_jobs = pending
                    continue
                status = self._change_run(run.correlation_id, "", now)
                if status is not None:
                    settled.append((run.correlation_id, status))
        return settled

    # -- Operations -----------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord:
        job = self._data.jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return _record(job)

    def list_dead_letters(self, queue: str | None, limit: int) -> list[JobRecord]:
        dead = [
            j
            for j in self._data.jobs.values()
            if j.status == JobStatus.DEAD and (queue is None or j.queue == queue)
        ]
        dead.sort(key=lambda j: j.finished_at or j.created_at, reverse=True)
        return [_record(j) for j in dead[:limit]]

    def redrive(
        self, job_id: str, new_job: NewJob, actor: str, detail: dict[str, Any]
    ) -> EnqueueResult:
        with self.atomic():
            dead = self._data.jobs.get(job_id)
            if dead is None or dead.status != JobStatus.DEAD:
                raise NotDeadLetteredError(f"job {job_id} is no longer dead-lettered")
            dead.status = JobStatus.REDRIVEN
            run = self._data.runs.get(new_job.correlation_id)
            if run is not None:
                undoing = new_job.compensates is not None
                run.status = RunStatus.COMPENSATING if undoing else RunStatus.RUNNING
                run.finished_at, run.dead_jobs = None, max(0, run.dead_jobs - 1)
                if undoing:
                    run.failed_compensations = max(0, run.failed_compensations - 1)
            self.insert_job(new_job)
            self._audit(new_job.correlation_id, job_id, "redrive", actor, **detail)
        return EnqueueResult(new_job.id, True, new_job.correlation_id)

    def start_rerun(
        self,
        of: str,
        copies: list[CopiedStep],
        events: list[Event],
        job: NewJob,
        actor: str,
        detail: dict[str, Any],
    ) -> EnqueueResult:
        now = utcnow()
        with self.atomic():
            for event in events:
                self._data.events[event.id] = copy.deepcopy(event)
            result = self.insert_job(job)
            for step in copies:
                self._insert(step.job, now)
                row = self._data.jobs[step.job.id]
                row.status, row.attempts = JobStatus.SUCCEEDED, step.attempts
                row.result, row.attempt_log = copy.deepcopy(step.result), list(step.attempt_log)
                row.finished_at, row.created_at = step.finished_at, step.created_at
                row.published_at = None
            self._audit(job.correlation_id, job.id, "rerun", actor, **detail)
            self._audit(of, "", "rerun", actor, **detail)
        return result

    def discard(self, job_id: str, actor: str) -> None:
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            if job.status != JobStatus.DEAD:
                raise NotDeadLetteredError(f"job {job_id} is {job.status}, not dead-lettered")
            job.status = JobStatus.DISCARDED
            self._audit(
                job.correlation_id,
                job_id,
                "discard",
                actor,
                queue=job.queue,
                reason=job.dead_reason,
            )

    def request_cancel(self, job_id: str, actor: str) -> JobStatus:
        now = utcnow()
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if job is None:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            was = job.status
            if was == JobStatus.QUEUED:
                job.status, job.finished_at, job.cancel_requested = JobStatus.CANCELLED, now, True
            elif was == JobStatus.RUNNING:
                job.cancel_requested = True
            else:
                return JobStatus(was)
            self._audit(job.correlation_id, job_id, "cancel", actor, was=str(was))
            if was == JobStatus.QUEUED:
                self._change_run(job.correlation_id, job_id, now, pending=-1, cancelled=1)
                return JobStatus.CANCELLED
        return JobStatus.RUNNING

    def release_lease(self, job_id: str, actor: str) -> bool:
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if job is None or job.status != JobStatus.RUNNING:
                return False
            job.lease_expires_at, job.attempts = utcnow(), max(job.attempts, 1)
            self._audit(job.correlation_id, job_id, "release_lease", actor, worker=job.worker)
        return True

    def stop_run(
        self,
        correlation_id: str,
        reason: str,
        actor: str,
        outbox: Outbox,
        undo: UndoPlanner | None,
    ) -> list[NewJob] | None:
        now = utcnow()
        with self.atomic():
            run = self._data.runs.get(correlation_id)
            if run is None or run.status not in OPEN_RUN_STATUSES or run.ended_by:
                return None
            self._leave_gate(run)
            run.ended_by = (reason or f"stopped by {actor}")[:200]
            cancelled_ids = rules.stop_effects(self._run_jobs(correlation_id))[0]
            cancelled = self._stop_forward(correlation_id, "", now)
            self._audit(
                correlation_id, "", "stop", actor, reason=reason, cancelled_jobs=cancelled_ids
            )
            created = self._write_rows(outbox, now) if outbox else []
            undone = self._plan_undo(correlation_id, undo, now)
            self._change_run(
                correlation_id,
                "",
                now,
                pending=len(created) + len(undone) - cancelled,
                cancelled=cancelled,
                compensation=len(undone),
                compensating=bool(undone),
            )
        return [*created, *undone]

    def rename_queue(self, old: str, new: str, actor: str) -> dict[str, int]:
        counts = {"waiting": 0, "dead": 0, "completed": 0, "running": 0}
        with self.atomic():
            unfinished = {
                cid for cid, r in self._data.runs.items() if r.status in OPEN_RUN_STATUSES
            }
            moved_runs: set[str] = set()
            for job in list(self._data.jobs.values()):
                if job.queue != old:
                    continue
                kind = {
                    JobStatus.QUEUED: "waiting",
                    JobStatus.DEAD: "dead",
                    JobStatus.RUNNING: "running",
                }.get(job.status)
                if job.status == JobStatus.SUCCEEDED and job.correlation_id in unfinished:
                    kind = "completed"
                if kind is None:
                    continue
                counts[kind] += 1
                if kind == "running":
                    continue
                if job.idempotency_key is not None and any(
                    j.queue == new and j.idempotency_key == job.idempotency_key
                    for j in self._data.jobs.values()
                ):
                    raise RenameError(f"cannot move jobs of {old} to {new}: duplicate key")
                job.queue, job.service = new, new.split(".", 1)[0]
                if kind == "waiting":
                    job.published_at = None
                moved_runs.add(job.correlation_id)
            counts["gathers"] = 0
            for gather_id, (start, tally) in list(self._data.gathers.items()):
                if start.into == old and start.correlation_id in unfinished:
                    self._data.gathers[gather_id] = (dataclasses.replace(start, into=new), tally)
                    counts["gathers"] += 1
                    moved_runs.add(start.correlation_id)
            for correlation_id in sorted(moved_runs):
                self._audit(correlation_id, "", "rename_queue", actor, old=old, new=new)
        counts["runs"] = len(moved_runs)
        return counts

    def rename_event(self, old: str, new: str, actor: str) -> int:
        moved = 0
        with self.atomic():
            for run in self._data.runs.values():
                if run.status != RunStatus.WAITING or not run.waiting_for:
                    continue
                keys = [
                    k
                    for k in ("approve_event", "reject_event", "timeout_event")
                    if run.waiting_for.get(k) == old
                ]
                if keys:
                    run.waiting_for = {**run.waiting_for, **dict.fromkeys(keys, new)}
                    self._audit(run.correlation_id, "", "rename_event", actor, old=old, new=new)
                    moved += 1
        return moved

    def prune_finished(self, finished_before: datetime, batch_size: int, actor: str) -> int:
        with self.atomic():
            gone = {
                cid
                for cid, r in self._data.runs.items()
                if r.status not in OPEN_RUN_STATUSES
                and r.finished_at is not None
                and r.finished_at < finished_before
            }
            data = self._data
            data.jobs = {k: j for k, j in data.jobs.items() if j.correlation_id not in gone}
            data.events = {k: e for k, e in data.events.items() if e.correlation_id not in gone}
            data.states = {k: v for k, v in data.states.items() if k[0] not in gone}
            data.runs = {k: r for k, r in data.runs.items() if k not in gone}
            self._audit(
                "", "", "prune", actor, runs=len(gone), finished_before=finished_before.isoformat()
            )
        return len(gone)

    # -- Runs -----------------------------------------------------------------------------

    def get_workflow(self, id_or_business_key: str) -> WorkflowStatus:
        with self._lock:
            run = self._data.runs.get(id_or_business_key) or max(
                (r for r in self._data.runs.values() if r.business_key == id_or_business_key),
                key=lambda r: r.started_at,
                default=None,
            )
            if run is None:
                raise WorkflowNotFoundError(
                    f"no workflow run has correlation id or business key {id_or_business_key!r}"
                )
            return self._status(run)

    def _status(self, run: _Run) -> WorkflowStatus:
        cid = run.correlation_id
        entries = [
            HistoryEntry(
                "job",
                j.created_at,
                j.queue,
                j.id,
                str(j.status),
                list(j.attempt_log),
                j.payload,
                j.result,
                j.dead_reason,
                j.caused_by,
                j.compensates,
                copy.deepcopy(j.progress),
                j.gather_index,
                (j.idempotency_key or "").startswith(joins.KEY_PREFIX),
            )
            for j in self._data.jobs.values()
            if j.correlation_id == cid
        ] + [
            HistoryEntry(
                "event",
                e.emitted_at,
                e.name,
                e.id,
                e.source,
                payload=e.payload,
                caused_by=e.causation_id,
            )
            for e in self._data.events.values()
            if e.correlation_id == cid
        ]
        entries.sort(key=lambda h: (h.at, h.kind == "job"))
        audit = [record for c, record in reversed(self._data.audit) if c == cid]
        return WorkflowStatus(
            correlation_id=cid,
            name=run.name,
            business_key=run.business_key,
            status=str(run.status),
            current_step=current_step(entries),
            started_by=run.started_by,
            started_at=run.started_at,
            finished_at=run.finished_at,
            history=entries,
            states={k: v[0] for (scope, k), v in self._data.states.items() if scope == cid},
            waiting_for=run.waiting_for if run.status == RunStatus.WAITING else None,
            audit=audit[:50],
            deadline_at=run.deadline_at,
            ended_by=run.ended_by,
            definition_version=run.definition_version,
            parent_id=run.parent_id,
            children=[
                {"correlation_id": c.correlation_id, "name": c.name, "status": str(c.status)}
                for c in sorted(self._data.runs.values(), key=lambda r: r.started_at)
                if c.parent_id == cid
            ],
        )

    def run_end(self, correlation_id: str) -> RunEnd | None:
        run = self._data.runs.get(correlation_id)
        if run is None or not run.parent_id or not run.status.is_final:
            return None
        last = self._data.jobs.get(run.last_job_id)
        error = run.ended_by
        if run.status != RunStatus.COMPLETED and not error:
            dead = sorted(
                (j for j in self._data.jobs.values()
                 if j.correlation_id == correlation_id and j.status == JobStatus.DEAD),
                key=lambda j: j.finished_at or j.created_at,
            )  # fmt: skip
            error = dead[0].dead_reason if dead else ""
        result = copy.deepcopy(last.result) if last is not None else None
        return RunEnd(run.parent_id, run.status, result, error)

    def ended_children(self, limit: int) -> list[str]:
        runs = self._data.runs
        return [
            r.correlation_id
            for r in runs.values()
            if r.parent_id in runs
            and runs[r.parent_id].status == RunStatus.WAITING
            and r.finished_at is not None
        ][:limit]

    def open_children(self, correlation_id: str) -> list[str]:
        return [
            r.correlation_id
            for r in self._data.runs.values()
            if r.parent_id == correlation_id and r.status in OPEN_RUN_STATUSES and not r.ended_by
        ]

    def orphaned_children(self, limit: int) -> list[tuple[str, str]]:
        runs = self._data.runs
        found = []
        for r in runs.values():
            parent = runs.get(r.parent_id or "")
            if parent is None or r.status not in OPEN_RUN_STATUSES or r.ended_by:
                continue
            stopping = parent.status == RunStatus.COMPENSATING or bool(parent.ended_by)
            if stopping or (parent.status.is_final and parent.status != RunStatus.COMPLETED):
                found.append((r.correlation_id, parent.correlation_id))
        return found[:limit]

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
        with self.atomic():
            run = self._data.runs.get(correlation_id)
            if run is None or run.status != RunStatus.WAITING or not run.waiting_for:
                return None
            if expired and (run.gate_expires_at is None or run.gate_expires_at > utcnow()):
                return None
            if not expired and (run.waiting_for.get("awaits") or "") != awaits:
                return None
            gate, following = approvals.next_gate(dict(run.waiting_for))
            while following is not None and self._arrived_before(correlation_id, following):
                following = approvals.next_gate(following)[1]
            if following is None:
                run.status, run.waiting_for, run.gate_expires_at = RunStatus.RUNNING, None, None
            else:
                expires = following.get("expires_at")
                run.waiting_for = following
                run.gate_expires_at = datetime.fromisoformat(expires) if expires else None
            who = {"user_id": user_id} if user_id else {}
            self._audit(
                correlation_id,
                gate.get("opened_by_job", ""),
                action,
                actor,
                prompt=gate.get("prompt", ""),
                comment=comment,
                **who,
            )
            return gate

    def escalate_gate(self, correlation_id: str, now: datetime) -> dict[str, Any] | None:
        with self.atomic():
            run = self._data.runs.get(correlation_id)
            if run is None or run.status != RunStatus.WAITING or not run.waiting_for:
                return None
            if run.gate_expires_at is None or run.gate_expires_at > now:
                return None
            gate = approvals.escalated(dict(run.waiting_for), now)
            if gate is None:
                return None
            run.waiting_for = gate
            run.gate_expires_at = datetime.fromisoformat(gate["expires_at"])
            self._audit(
                correlation_id,
                gate.get("opened_by_job", ""),
                "escalate",
                "system",
                prompt=gate.get("prompt", ""),
                to=approvals.Deciders.from_json(gate["deciders"]).describe(),
            )
            return gate

    def run_status(self, correlation_id: str) -> RunStatus | None:
        run = self._data.runs.get(correlation_id)
        return None if run is None else run.status

    def record_fire(
        self, schedule: str, slot: datetime, outcome: str, reason: str, correlation_id: str
    ) -> bool:
        with self.atomic():
            if (schedule, slot) in self._data.fires:
                return False
            self._data.fires[(schedule, slot)] = (utcnow(), outcome, reason[:200], correlation_id)
            return True

    def last_fire(self, schedule: str, started: bool = False) -> tuple[datetime, str, str] | None:
        fires = [
            (slot, outcome, cid)
            for (name, slot), (_, outcome, _, cid) in self._data.fires.items()
            if name == schedule and (not started or outcome in ("started", "replaced"))
        ]
        return max(fires, default=None)

    def get_state(self, scope: str, key: str) -> StateValue | None:
        found = self._data.states.get((scope, key))
        return None if found is None else StateValue(copy.deepcopy(found[0]), found[1])

    def put_state(
        self,
        scope: str,
        key: str,
        value: Any,
        expected_version: int | None,
        writer: str | None,
    ) -> int | None:
        with self.atomic():
            found = self._data.states.get((scope, key))
            version = 0 if found is None else found[1]
            if expected_version is not None and expected_version != version:
                return None
            self._data.states[(scope, key)] = (copy.deepcopy(value), version + 1, writer or "")
            return version + 1

    def open_run_for_key(self, name: str, business_key: str) -> tuple[str, str] | None:
        open_runs = [
            r
            for r in self._data.runs.values()
            if r.name == name and r.business_key == business_key and r.status in OPEN_RUN_STATUSES
        ]
        if not open_runs:
            return None
        run = max(open_runs, key=lambda r: r.started_at)
        jobs = sorted(
            (j for j in self._data.jobs.values() if j.correlation_id == run.correlation_id),
            key=lambda j: j.created_at,
        )
        return run.correlation_id, jobs[0].id if jobs else ""

    def run_trace(self, correlation_id: str) -> str:
        traced = [
            j
            for j in self._data.jobs.values()
            if j.correlation_id == correlation_id and j.trace_id.startswith("00-")
        ]
        return max(traced, key=lambda j: j.created_at).trace_id if traced else ""

    # -- Controls -------------------------------------------------------------------------

    def queue_controls(self) -> dict[str, QueueControl]:
        return dict(self._data.controls)

    def set_paused(self, queue: str, paused: bool, actor: str, reason: str) -> bool:
        with self.atomic():
            control = self._data.controls.get(queue, QueueControl(queue, False))
            if control.paused == paused:
                self._data.controls[queue] = control
                return False
            self._data.controls[queue] = (
                dataclasses.replace(
                    control,
                    paused=True,
                    paused_at=utcnow(),
                    paused_by=actor[:150],
                    reason=reason[:200],
                )
                if paused
                else dataclasses.replace(control, paused=False, failures=0)
            )
            action = "pause_queue" if paused else "resume_queue"
            self._audit("", "", action, actor, queue=queue, reason=reason[:200])
            return True

    def count_failure(self, queue: str) -> int:
        with self.atomic():
            control = self._data.controls.get(queue, QueueControl(queue, False))
            control = dataclasses.replace(control, failures=control.failures + 1)
            self._data.controls[queue] = control
            return control.failures

    def reset_failures(self, queue: str) -> None:
        with self.atomic():
            control = self._data.controls.get(queue)
            if control is not None and control.failures:
                self._data.controls[queue] = dataclasses.replace(control, failures=0)

    def park(self, job_id: str, attempt: int) -> bool:
        with self.atomic():
            job = self._data.jobs.get(job_id)
            if job is None or job.status != JobStatus.QUEUED or job.attempts != attempt - 1:
                return False
            job.published_at = None
            return True

    def add_minutes(self, rows: list[QueueMinute]) -> None:
        with self.atomic():
            for row in rows:
                old = self._data.minutes.get((row.queue, row.minute))
                self._data.minutes[(row.queue, row.minute)] = (
                    row
                    if old is None
                    else QueueMinute(
                        row.queue,
                        row.minute,
                        old.succeeded + row.succeeded,
                        old.failed + row.failed,
                        old.dead + row.dead,
                        old.duration_ms + row.duration_ms,
                    )
                )

    def release_connection(self) -> None:
        """Nothing to release: there is no connection."""


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _record(job: _Job) -> JobRecord:
    return JobRecord(
        id=job.id,
        service=job.service,
        queue=job.queue,
        status=job.status,
        payload=copy.deepcopy(job.payload),
        result=copy.deepcopy(job.result),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        correlation_id=job.correlation_id,
        available_at=job.available_at,
        created_at=job.created_at,
        finished_at=job.finished_at,
        worker=job.worker,
        dead_reason=job.dead_reason,
        idempotency_key=job.idempotency_key,
        cancel_requested=job.cancel_requested,
        redriven_from=job.redriven_from,
        caused_by=job.caused_by,
        attempt_log=list(job.attempt_log),
        compensates=job.compensates,
        trace_id=job.trace_id,
        priority=job.priority,
        started_at=job.started_at,
        gather_id=job.gather_id,
        gather_index=job.gather_index,
    )


if TYPE_CHECKING:  # mypy checks the implementation against every role
    _every_role: Store = InMemoryStore()
