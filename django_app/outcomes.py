"""The one outcome write: an attempt's outcome, the events it emitted, the jobs they start, the
approval gate it opened and its run's counters - all or nothing, behind the attempt's fence.

Every writer uses it: a worker for its own attempt (the fence is the lease token *and* an
unexpired lease), the sweeper for an expired lease (the token alone), and :func:`stop` for an
operator's cancel, a deadline or a schedule's ``replace`` (the run's own lock). Two forms:

- **one statement** (PostgreSQL; the hot path of a forward step): the run's row is locked first
  and the write only happens while the run is moving forward - not stopped, not compensating;
- **one locked transaction** (every other case, and the fallback when the run turned out to be
  stopping): the run's row is locked first, and the saga's rules of
  :mod:`celery_workflows.rules` are applied to a snapshot of its jobs read under that lock - a
  dead letter stops the run, a forward step of a stopped run is not retried and starts
  nothing, and the next compensation is written when it is due.

Locks are always taken run first, then jobs, by every writer here and by the operator actions
of :mod:`.operations`, so no two writes of one run can deadlock.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any

from django.db import DataError, IntegrityError, ProgrammingError, transaction
from django.db.models import Q

from celery_workflows import approvals, gathers, joins, rules
from celery_workflows.clock import utcnow
from celery_workflows.errors import LedgerWriteError
from celery_workflows.records import (
    OPEN_RUN_STATUSES,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
    RunStatus,
)
from celery_workflows.rules import RunJob
from celery_workflows.store import UndoPlanner

from .models import AuditEntry, Job, WorkflowRun
from .models import Event as EventRow
from .rows import (
    dt,
    event_values,
    from_dt,
    from_json,
    gather_values,
    job_values,
    js,
    outcome_changes,
    run_values,
)
from .runcounters import (
    SETTLED_FIELDS,
    RunDelta,
    change_run,
    change_run_ended,
    run_change_params,
    run_change_sql,
    settled_status,
)
from .statements import (
    EVENT,
    EVENT_COLUMNS,
    GATHER,
    GATHER_COLUMNS,
    JOB,
    JOB_COLUMNS,
    RUN,
    RUN_COLUMNS,
    cast_row,
    dialect,
    execute,
    existing,
    insert_rows,
    marks,
    max_params,
    update,
)

_STOPPING = f"(ended_by <> '' OR status = '{RunStatus.COMPENSATING}')"


@dataclass(frozen=True)
class Attempted:
    """The attempt an outcome belongs to, and how its write is fenced."""

    job_id: str
    correlation_id: str
    attempt: int
    token: str
    #: set for a compensation: the job whose work it undoes
    compensates: str | None = None
    #: the worker's own write, allowed only while its lease is unexpired; False: the sweeper
    #: settling a lease that expired (the token alone fences it)
    held: bool = True
    #: set for a branch of a map: the gather its final outcome counts on
    gather_id: str | None = None


@dataclass(frozen=True)
class RunState:
    """A run's row as read under its lock."""

    status: RunStatus | None
    ended_by: str = ""

    @property
    def open(self) -> bool:
        return self.status in OPEN_RUN_STATUSES

    @property
    def stopping(self) -> bool:
        """No forward step may start: stopped by someone, or failing and being undone."""
        return bool(self.ended_by) or self.status == RunStatus.COMPENSATING


def write_outcome(
    attempted: Attempted, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None
) -> Recorded | None:
    """Write an attempt's outcome (see the module docstring); None when the fence refuses it
    - the lease was lost and the job taken over, or another sweeper settled it."""
    now = utcnow()
    try:
        if _one_statement_applies(attempted, outcome, outbox, undo):
            recorded = _in_one_statement(attempted, outcome, outbox, now)
            if recorded is not None:
                return recorded
            before = _written_before(attempted, outcome, outbox)
            if before is not None:
                return before
            # the fence refused it: a lost lease - or a run that is stopping, which the
            # locked write below handles (it refuses a lost lease the same way)
        return _locked(attempted, outcome, outbox, undo, now)
    except (DataError, IntegrityError, ProgrammingError) as exc:
        raise LedgerWriteError(str(exc)) from exc


def _one_statement_applies(
    attempted: Attempted, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None
) -> bool:
    return (
        dialect().one_statement_outbox
        and attempted.held
        and attempted.compensates is None
        and outbox.starts is None
        and outbox.gate is None
        and not outbox.children
        and not outbox.arrivals
        and not outbox.gathers
        and attempted.gather_id is None
        and not (undo is not None and outcome.status == JobStatus.DEAD)
        and _fits_one_statement(outbox)
    )


def _fits_one_statement(outbox: Outbox) -> bool:
    """Whether an outcome and its outbox fit the parameter limit of one statement."""
    params = 16 + len(outbox.events) * len(EVENT_COLUMNS) + len(outbox.jobs) * len(JOB_COLUMNS)
    return params <= max_params()


def _changes(attempted: Attempted, outcome: Outcome) -> dict[str, Any]:
    """The job row's new values (column -> adapted value), attempt log aside."""
    changes = outcome_changes(outcome)
    # a job written claimed by local continuation counts its attempt from its outcome on
    changes.update(attempts=attempted.attempt, lease_expires_at=None)
    if not attempted.held:
        changes["lease_token"] = None  # the sweeper's write leaves no receipt
    return changes


def _fence(attempted: Attempted, now: datetime) -> tuple[str, list[Any]]:
    params: list[Any] = [attempted.job_id, attempted.token]
    if attempted.held:
        params.append(dt(now))
    return _fence_sql(attempted.held), params


def _fence_sql(held: bool) -> str:
    sql = f"id = %s AND status = '{JobStatus.RUNNING}' AND lease_token = %s"
    return sql + " AND lease_expires_at > %s" if held else sql


def _in_one_statement(
    attempted: Attempted, outcome: Outcome, outbox: Outbox, now: datetime
) -> Recorded | None:
    """PostgreSQL: lock the run; if it is moving forward, the fenced outcome, its events, the
    jobs they start and the run's counters (settling it when nothing is pending any more),
    in ONE statement. Every part selects from the job's UPDATE, so a refused write writes
    nothing; the run counts the jobs the statement really inserted (duplicates skipped)."""
    changes = _changes(attempted, outcome)
    fence, fence_params = _fence(attempted, now)
    final = outcome.status != JobStatus.QUEUED
    shape = (
        tuple(changes),
        fence,
        len(outbox.events),
        len(outbox.jobs),
        final,
        outcome.status == JobStatus.DEAD,
    )
    # a step's few events and jobs: a shape seen again and again; a large fan-out's statement
    # is built each time (kept, hundreds of them would hold megabytes)
    small = len(outbox.events) + len(outbox.jobs) <= _KEPT_ROWS
    sql = _kept_statement(*shape) if small else _one_statement_sql(*shape)
    params: list[Any] = [
        attempted.correlation_id,
        *changes.values(),
        js(outcome.attempt.to_json()),
        *fence_params,
    ]
    for event in outbox.events:
        values = event_values(event)
        params += [values[c] for c in EVENT_COLUMNS]
    for job in outbox.jobs:
        values = job_values(job, now)
        params += [values[c] for c in JOB_COLUMNS]
    if final or outbox.jobs:
        params += run_change_params(attempted.correlation_id, attempted.job_id, now)
    ((won, ids, *run_row),) = execute(sql, params)
    if not won:
        return None
    created_ids = set(ids or ())
    settled = settled_status([run_row], attempted.job_id)
    return Recorded(
        [j for j in outbox.jobs if j.id in created_ids],
        settled,
        parent=run_row[2] if settled is not None else None,
    )


def _one_statement_sql(
    columns: tuple[str, ...], fence: str, events: int, jobs: int, final: bool, dead: bool
) -> str:
    """The statement of :func:`_in_one_statement` for an outcome of this shape: the job
    columns it sets, its fence, how many events and jobs it inserts, whether it ends the job
    (``final``) and dead-letters it."""
    assignments = ", ".join(f"{column} = %s" for column in columns)
    append = dialect().json_append("attempt_log")
    parts = [
        f"WITH lock AS MATERIALIZED (SELECT ended_by, status FROM {RUN} "
        "WHERE correlation_id = %s FOR UPDATE), "
        f"done AS (UPDATE {JOB} SET {assignments}, attempt_log = {append} WHERE {fence} "
        f"AND NOT EXISTS (SELECT 1 FROM lock WHERE {_STOPPING}) RETURNING 1)"
    ]
    for name, model, names, rows in (
        ("ev", EventRow, EVENT_COLUMNS, events),
        ("jb", Job, JOB_COLUMNS, jobs),
    ):
        if not rows:
            continue
        row = cast_row(model, tuple(names))
        parts.append(
            f", {name} AS (INSERT INTO {model._meta.db_table} ({', '.join(names)}) "
            f"SELECT * FROM (VALUES {', '.join([row] * rows)}) v ({', '.join(names)}) "
            "WHERE EXISTS (SELECT 1 FROM done) ON CONFLICT DO NOTHING RETURNING id)"
        )
    inserted = "(SELECT count(*) FROM jb)" if jobs else "0"
    settle = "NULL, NULL, NULL"
    if final or jobs:
        delta = RunDelta(pending=f"{inserted} - {int(final)}", dead=int(dead))
        parts.append(
            f", run AS ({run_change_sql(delta)} AND EXISTS (SELECT 1 FROM done) "
            f"RETURNING {SETTLED_FIELDS})"
        )
        settle = ", ".join(f"(SELECT {f} FROM run)" for f in SETTLED_FIELDS.split(", "))
    created = "(SELECT array_agg(id) FROM jb)" if jobs else "NULL"
    parts.append(f" SELECT (SELECT count(*) FROM done), {created}, {settle}")
    return "".join(parts)


#: outcome statements with up to this many inserted rows (events and jobs) are built once per
#: shape and kept
_KEPT_ROWS = 16
_kept_statement = functools.lru_cache(maxsize=256)(_one_statement_sql)


def _written_before(attempted: Attempted, outcome: Outcome, outbox: Outbox) -> Recorded | None:
    """The fence refused the write: was it this very outcome, written by an earlier try
    whose reply was lost? Only this attempt's outcome leaves its token on a finished row."""
    if not attempted.held:
        return None  # the sweeper's write leaves no token; another sweeper did it
    rows = execute(
        f"SELECT status, attempts FROM {JOB} WHERE id = %s AND lease_token = %s",
        [attempted.job_id, attempted.token],
    )
    expected = {outcome.status.value, JobStatus.CANCELLED.value}
    if not rows or rows[0][0] not in expected or rows[0][1] != attempted.attempt:
        return None
    run = execute(
        f"SELECT status, last_job_id FROM {RUN} WHERE correlation_id = %s",
        [attempted.correlation_id],
    )
    return Recorded(
        existing(outbox.jobs),
        settled_status(run, attempted.job_id),
        retry_cancelled=rows[0][0] == JobStatus.CANCELLED and outcome.status == JobStatus.QUEUED,
    )


def lock_run(correlation_id: str) -> RunState:
    """Lock the run's row until the transaction ends (the first lock any write of a run
    takes) and read its state."""
    rows = execute(
        f"SELECT status, ended_by FROM {RUN} WHERE correlation_id = %s{dialect().lock_rows}",
        [correlation_id],
    )
    if not rows:
        return RunState(None)
    return RunState(RunStatus(rows[0][0]), rows[0][1] or "")


def run_jobs(correlation_id: str) -> list[RunJob]:
    """The run's jobs, as the saga rules see them (read under the run's lock)."""
    rows = execute(
        "SELECT id, queue, status, finished_at, compensates, payload, priority, trace_id "
        f"FROM {JOB} WHERE correlation_id = %s",
        [correlation_id],
    )
    return [
        RunJob(
            id=job_id,
            correlation_id=correlation_id,
            queue=queue,
            status=JobStatus(status),
            finished_at=from_dt(finished) if finished is not None else None,
            compensates=compensates,
            payload=from_json(payload),
            priority=priority,
            trace_id=trace_id or "",
        )
        for job_id, queue, status, finished, compensates, payload, priority, trace_id in rows
    ]


def stop_forward_jobs(jobs: list[RunJob], keep: str, now: datetime) -> int:
    """Cancel the run's queued forward jobs and ask its running ones to stop (but ``keep``);
    return how many were cancelled."""
    cancel, ask = rules.stop_effects(jobs, keep)
    cancelled = 0
    if cancel:
        cancelled = update(
            f"UPDATE {JOB} SET status = '{JobStatus.CANCELLED}', finished_at = %s, "
            f"cancel_requested = %s WHERE id IN ({marks(len(cancel))}) "
            f"AND status = '{JobStatus.QUEUED}'",
            [dt(now), True, *cancel],
        )
    if ask:
        update(
            f"UPDATE {JOB} SET cancel_requested = %s WHERE id IN ({marks(len(ask))})",
            [True, *ask],
        )
    return cancelled


def forward_allowed(outbox: Outbox) -> Outbox:
    """``outbox`` without the forward jobs of runs that were stopped or are compensating."""
    forward = {j.correlation_id for j in outbox.jobs if j.compensates is None}
    forward |= {a.correlation_id for a in outbox.arrivals}
    if not forward:
        return outbox
    blocked = set(
        WorkflowRun.objects.filter(correlation_id__in=forward)
        .filter(Q(status=RunStatus.COMPENSATING) | ~Q(ended_by=""))
        .values_list("correlation_id", flat=True)
    )
    if not blocked:
        return outbox
    jobs = [j for j in outbox.jobs if j.compensates is not None or j.correlation_id not in blocked]
    arrivals = [a for a in outbox.arrivals if a.correlation_id not in blocked]
    return replace(outbox, jobs=jobs, arrivals=arrivals)


def write_from_outside(outbox: Outbox) -> list[NewJob]:
    """Insert ``outbox`` (events from outside any attempt: ``emit()``, a decision, an event
    from another service, a child run a step starts) and count its jobs on their runs. A run
    it touches that is left with nothing pending settles here (an event nothing subscribes
    to, say)."""
    outbox = outbox if outbox.stopping else forward_allowed(outbox)
    now = utcnow()
    with transaction.atomic(savepoint=False):
        if outbox.starts is not None:
            insert_rows(
                RUN,
                RUN_COLUMNS,
                [run_values(e.correlation_id, outbox.starts, now) for e in outbox.events],
                key="correlation_id",
            )
        # a join is checked under its run's lock (see celery_workflows.joins)
        for correlation_id in sorted({a.correlation_id for a in outbox.arrivals}):
            lock_run(correlation_id)
        created = write_rows(outbox, now)
        per_run = Counter(j.correlation_id for j in created)
        for correlation_id in sorted({e.correlation_id for e in outbox.events} | set(per_run)):
            change_run(correlation_id, "", now, RunDelta(pending=per_run[correlation_id]))
    planned = {j.id for j in outbox.jobs}
    if sum(j.id in planned for j in created) < len(planned):
        # skipped rows are duplicates of earlier writes - or this write, run again after
        # a lost reply: ids are fresh uuids, so a row with one of ours is ours
        return existing(outbox.jobs) + [j for j in created if j.id not in planned]
    return created


def write_rows(outbox: Outbox, now: datetime) -> list[NewJob]:
    """Insert an outbox's events, gathers and jobs (skipping ones written before, by an
    earlier try or a duplicate delivery) and the jobs of the joins its events complete (the
    caller holds their runs' locks); return the jobs this call created. Counts nothing on
    runs."""
    insert_rows(EVENT, EVENT_COLUMNS, [event_values(e) for e in outbox.events])
    insert_rows(GATHER, GATHER_COLUMNS, [gather_values(g, now) for g in outbox.gathers])
    jobs = [*outbox.jobs, *joins.completed(outbox.arrivals, run_events)]
    created = insert_rows(JOB, JOB_COLUMNS, [job_values(j, now) for j in jobs])
    return [j for j in jobs if j.id in created]


def final_for_gather(outcome: Outcome, cancelled_retry: bool) -> bool:
    """Whether an outcome counts a branch on its gather: it succeeded or died for good."""
    return not cancelled_retry and outcome.status in (JobStatus.SUCCEEDED, JobStatus.DEAD)


def count_branch(gather_id: str, succeeded: bool) -> gathers.Tally | None:
    """Count a branch's final outcome on its gather (under the run's lock): a success always,
    a dead branch only where the gather continues without it; the gather as it now stands."""
    ok = int(succeeded)
    sql = (
        f"UPDATE {GATHER} SET succeeded = succeeded + %s, failed = failed + "
        "CASE WHEN on_failure = 'continue' THEN %s ELSE 0 END WHERE id = %s"
    )
    fields = "correlation_id, into_queue, total, on_failure, trace_id, priority, succeeded, failed"
    if dialect().returning:
        rows = execute(f"{sql} RETURNING {fields}", [ok, 1 - ok, gather_id])
    else:
        update(sql, [ok, 1 - ok, gather_id])
        rows = execute(f"SELECT {fields} FROM {GATHER} WHERE id = %s", [gather_id])
    if not rows:
        return None
    correlation_id, into, total, on_failure, trace_id, priority, done, failed = rows[0]
    start = gathers.GatherStart(
        gather_id, correlation_id, into, total, on_failure, trace_id or "", priority
    )
    return gathers.Tally(start, done, failed)


def branches(gather_id: str) -> list[gathers.BranchRow]:
    """A complete gather's branch jobs (re-driven ones too), in item order."""
    rows = execute(
        f"SELECT gather_index, status, result, dead_reason FROM {JOB} WHERE gather_id = %s "
        "ORDER BY gather_index",
        [gather_id],
    )
    return [(index, status, from_json(result), reason) for index, status, result, reason in rows]


def run_events(correlation_id: str, names: tuple[str, ...]) -> list[joins.EventRow]:
    """The run's events of these names, oldest first (for a join, under the run's lock)."""
    rows = execute(
        f"SELECT id, name, payload FROM {EVENT} WHERE correlation_id = %s "
        f"AND name IN ({marks(len(names))}) ORDER BY emitted_at, id",
        [correlation_id, *names],
    )
    return [(event_id, name, from_json(payload)) for event_id, name, payload in rows]


def plan_undo(correlation_id: str, undo: UndoPlanner | None, now: datetime) -> list[NewJob]:
    """Write the run's next compensation if one is due now (under the run's lock)."""
    if undo is None:
        return []
    job = undo(run_jobs(correlation_id))
    return write_rows(Outbox(jobs=[job]), now) if job is not None else []


def _locked(
    attempted: Attempted,
    outcome: Outcome,
    outbox: Outbox,
    undo: UndoPlanner | None,
    now: datetime,
) -> Recorded | None:
    """The outcome write in one transaction that holds the run's lock throughout."""
    forward = attempted.compensates is None
    dead = outcome.status == JobStatus.DEAD
    with transaction.atomic():
        run = lock_run(attempted.correlation_id)
        # a forward step of a stopped run is not tried again: it is cancelled instead
        cancelled_retry = outcome.status == JobStatus.QUEUED and not rules.retries_allowed(
            run.stopping, attempted.compensates
        )
        changes = _changes(attempted, outcome)
        if cancelled_retry:
            changes.update(
                status=JobStatus.CANCELLED.value,
                finished_at=dt(outcome.attempt.finished_at),
                published_at=None,
            )
        fence, fence_params = _fence(attempted, now)
        assignments = ", ".join(f"{column} = %s" for column in changes)
        append = dialect().json_append("attempt_log")
        if not update(
            f"UPDATE {JOB} SET {assignments}, attempt_log = {append} WHERE {fence}",
            [*changes.values(), js(outcome.attempt.to_json()), *fence_params],
        ):
            return _written_before(attempted, outcome, outbox)
        tally = None
        if attempted.gather_id and forward and final_for_gather(outcome, cancelled_retry):
            tally = count_branch(attempted.gather_id, outcome.status == JobStatus.SUCCEEDED)
        # a dead branch of a gather that continues without it is not the run's failure
        tolerated = dead and tally is not None and tally.tolerates_failure
        dead = dead and not tolerated
        # in a service that compensates, a dead forward step stops its run
        fails = undo is not None and forward and dead and run.open and not run.stopping
        stopped = 0
        if fails:
            _leave_gate(attempted.correlation_id)
            stopped = stop_forward_jobs(run_jobs(attempted.correlation_id), attempted.job_id, now)
        if run.stopping and not outbox.stopping:
            # what the step emitted is recorded; the forward steps it would start are not
            outbox = replace(
                outbox,
                jobs=[j for j in outbox.jobs if j.compensates is not None],
                arrivals=[],
                gathers=[],
            )
        created = write_rows(outbox, now) if outbox else []
        if tally is not None and tally.complete and not (fails or run.stopping):
            gathered = gathers.gathered_job(tally.start, branches(tally.start.id), now)
            created += write_rows(Outbox(jobs=[gathered]), now)
        undone = plan_undo(attempted.correlation_id, undo, now) if fails or run.stopping else []
        if outbox.gate is not None and outcome.status == JobStatus.SUCCEEDED:
            _open_gate(attempted.correlation_id, outbox.gate)
        # child runs count their jobs on themselves, not on this run
        started = []
        if outbox.children and outcome.status == JobStatus.SUCCEEDED and not run.stopping:
            for child in outbox.children:
                started += write_from_outside(child)
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
        settled, parent = change_run_ended(
            attempted.correlation_id, attempted.job_id, now, RunDelta(**asdict(delta))
        )
    return Recorded(
        [*created, *undone, *started], settled, retry_cancelled=cancelled_retry, parent=parent
    )


def _open_gate(correlation_id: str, gate: dict[str, Any]) -> None:
    """The run waits on ``gate`` - if it is not stopped, and, for a gate that awaits an event
    from outside, unless that event already came (a webhook can beat the outcome of the step
    that asked for it). A run already waiting (another branch asked first) queues it behind
    the open one (under the run's lock, which the caller holds)."""
    if arrived(correlation_id, gate):
        return
    rows = execute(
        f"SELECT status, ended_by, waiting_for FROM {RUN} WHERE correlation_id = %s",
        [correlation_id],
    )
    if not rows or rows[0][1]:
        return
    status, _, waiting = rows[0]
    if status == RunStatus.WAITING and waiting:
        update(
            f"UPDATE {RUN} SET waiting_for = %s WHERE correlation_id = %s",
            [js(approvals.queued_behind(from_json(waiting), gate)), correlation_id],
        )
        return
    expires = gate.get("expires_at")
    update(
        f"UPDATE {RUN} SET status = '{RunStatus.WAITING}', waiting_for = %s, "
        f"gate_expires_at = %s WHERE correlation_id = %s AND status = '{RunStatus.RUNNING}' "
        "AND ended_by = ''",
        [js(gate), dt(datetime.fromisoformat(expires)) if expires else None, correlation_id],
    )


def arrived(correlation_id: str, gate: dict[str, Any]) -> bool:
    """Whether the event a gate awaits from outside already happened in the run since the
    step that asked for it was created (False for other gates)."""
    return approvals.awaits_event(gate) and bool(
        execute(
            f"SELECT 1 FROM {EVENT} WHERE correlation_id = %s AND name = %s AND emitted_at >= %s",
            [correlation_id, gate["awaits"], dt(datetime.fromisoformat(gate["since"]))],
        )
    )


def _leave_gate(correlation_id: str) -> None:
    """A run waiting for a decision that is stopped (or fails) is running again - its stop is
    under way - and its gate is closed unanswered."""
    update(
        f"UPDATE {RUN} SET status = '{RunStatus.RUNNING}', waiting_for = NULL, "
        f"gate_expires_at = NULL WHERE correlation_id = %s AND status = '{RunStatus.WAITING}'",
        [correlation_id],
    )


def stop(
    correlation_id: str, reason: str, actor: str, outbox: Outbox, undo: UndoPlanner | None
) -> list[NewJob] | None:
    """Stop an open run once (see :meth:`celery_workflows.store.Operations.stop_run`)."""
    now = utcnow()
    with transaction.atomic():
        run = lock_run(correlation_id)
        if not run.open or run.ended_by:
            return None
        _leave_gate(correlation_id)
        update(
            f"UPDATE {RUN} SET ended_by = %s WHERE correlation_id = %s",
            [(reason or f"stopped by {actor}")[:200], correlation_id],
        )
        jobs = run_jobs(correlation_id)
        cancelled_ids = rules.stop_effects(jobs)[0]
        cancelled = stop_forward_jobs(jobs, "", now)
        AuditEntry.record(
            correlation_id, "", "stop", actor, reason=reason, cancelled_jobs=cancelled_ids
        )
        created = write_rows(outbox, now) if outbox else []
        undone = plan_undo(correlation_id, undo, now)
        delta = RunDelta(
            pending=len(created) + len(undone) - cancelled,
            cancelled=cancelled,
            compensation=len(undone),
            compensating=bool(undone),
        )
        change_run(correlation_id, "", now, delta)
    return [*created, *undone]
