"""The rules of a workflow run, as pure functions: no Django, no SQL, no registry.

A run is open while any of its jobs is pending (queued or running); its counters are kept by
the statement that moves one of its jobs, and the write that ends its last pending job settles
it. The ledger applies these rules under the run's row lock - the final status is rendered into
its SQL from :data:`FINAL_STATUS` (see :func:`django_app.runcounters.run_change`), and the
saga's decisions are taken here, on a snapshot of the run's jobs read under that lock:

- **What stops a run.** An operator's cancel, a passed deadline, a schedule's ``replace``
  (each recorded as the run's ``ended_by``), or - in a service that compensates - a step that
  dead-letters. From then on no forward step starts: queued forward jobs are cancelled, running
  ones are asked to stop (``ctx.cancel_requested``) and, if they fail, are not retried; jobs
  their outcomes would start are not written. Compensations go on.
- **What is undone, and when.** Every completed step whose queue declares an undo, exactly once,
  in reverse order of completion, one at a time - starting once no forward step of the run is
  pending any more (a step still running may yet complete, and must then be undone first). A
  compensation that dead-letters stops the chain for an operator; re-driving it continues it.
- **How it ends.** :func:`final_status`, first matching rule of :data:`FINAL_STATUS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .records import PENDING_JOB_STATUSES, JobStatus, RunStatus

#: how a run whose last pending job ended is settled: the first counter (or ``ended_by``)
#: that is set decides; none set means ``completed``
FINAL_STATUS: tuple[tuple[str, RunStatus], ...] = (
    ("failed_compensations", RunStatus.DEAD_LETTERED),
    ("compensation_jobs", RunStatus.COMPENSATED),
    ("ended_by", RunStatus.CANCELLED),
    ("dead_jobs", RunStatus.DEAD_LETTERED),
    ("cancelled_jobs", RunStatus.CANCELLED),
)
#: orders a step without a finishing time (never expected of a completed one) first
_EARLIEST = datetime.min.replace(tzinfo=UTC)
#: statuses a run settles from when nothing of it is pending (a waiting run waits for its
#: decision, whatever is pending)
SETTLES_FROM = (RunStatus.RUNNING, RunStatus.COMPENSATING)


@dataclass(frozen=True)
class RunCounters:
    """What a run's row counts (after the write being judged)."""

    status: RunStatus
    pending_jobs: int = 0
    dead_jobs: int = 0
    cancelled_jobs: int = 0
    compensation_jobs: int = 0
    failed_compensations: int = 0
    ended_by: str = ""


def final_status(run: RunCounters) -> RunStatus:
    """The status a run ends with once nothing of it is pending."""
    for counter, status in FINAL_STATUS:
        if getattr(run, counter):
            return status
    return RunStatus.COMPLETED


def settled(run: RunCounters) -> RunStatus | None:
    """The run's final status if this state settles it, else None."""
    if run.status in SETTLES_FROM and run.pending_jobs <= 0:
        return final_status(run)
    return None


def changed(
    run: RunCounters,
    *,
    pending: int = 0,
    dead: int = 0,
    cancelled: int = 0,
    compensation: int = 0,
    failed_compensation: int = 0,
    compensating: bool = False,
) -> RunCounters:
    """A run's counters after one write moved its jobs (what ``run_change`` renders in SQL):
    the counters change; if that leaves nothing pending on a run that settles from its status,
    it takes its final status; otherwise a write that stops it moving forward
    (``compensating``) makes a running run ``compensating``."""
    after = dataclasses.replace(
        run,
        pending_jobs=max(0, run.pending_jobs + pending),
        dead_jobs=run.dead_jobs + dead,
        cancelled_jobs=run.cancelled_jobs + cancelled,
        compensation_jobs=run.compensation_jobs + compensation,
        failed_compensations=run.failed_compensations + failed_compensation,
    )
    final = settled(after)
    if final is not None:
        return dataclasses.replace(after, status=final)
    if compensating and run.status == RunStatus.RUNNING:
        return dataclasses.replace(after, status=RunStatus.COMPENSATING)
    return after


@dataclass(frozen=True)
class Delta:
    """How one write changes its run's counters (what :func:`changed` applies)."""

    pending: int = 0
    dead: int = 0
    cancelled: int = 0
    compensation: int = 0
    failed_compensation: int = 0
    #: the run stops moving forward (a failure, or its undo has begun)
    compensating: bool = False


def outcome_delta(
    *,
    final: bool,
    dead: bool,
    forward: bool,
    fails: bool,
    created: int,
    undone: int,
    stopped: int,
    cancelled_retry: bool,
) -> Delta:
    """How an attempt's outcome changes its run's counters.

    The jobs the outcome wrote (``created``, and the compensation ``undone`` it started) become
    pending; the attempted job stops being pending if its outcome is ``final``. A failure that
    stops the run (``fails``) cancels ``stopped`` queued forward jobs, as a stopped run cancels
    the retry it refuses (``cancelled_retry``). A dead compensation counts as failed; a stop or
    an undo begun makes the run compensating.
    """
    return Delta(
        pending=created + undone - int(final) - stopped,
        dead=int(dead),
        cancelled=stopped + int(cancelled_retry),
        compensation=undone,
        failed_compensation=int(dead and not forward),
        compensating=fails or bool(undone),
    )


@dataclass(frozen=True)
class RunJob:
    """One job of a run, as the saga rules see it."""

    id: str
    correlation_id: str
    queue: str
    status: JobStatus
    finished_at: datetime | None
    #: set for a compensation: the job whose work it undoes
    compensates: str | None = None
    payload: Any = None
    priority: int | None = None
    trace_id: str = ""

    @property
    def pending(self) -> bool:
        return self.status in PENDING_JOB_STATUSES

    @property
    def forward(self) -> bool:
        return self.compensates is None


def next_undo(jobs: Sequence[RunJob], undoable: Callable[[str], bool]) -> RunJob | None:
    """The completed step of a stopped run to undo now, or None (nothing to undo, or not yet).

    ``undoable(queue)`` says whether a step of that queue declares an undo. Nothing is undone
    while a forward step is pending (it may still complete), while a compensation is pending
    (one at a time) or after a compensation was dead-lettered (an operator's turn). A step
    that has a compensation in any status is not undone again.
    """
    if any(job.pending for job in jobs):
        return None
    if any(job.status == JobStatus.DEAD and not job.forward for job in jobs):
        return None
    handled = {job.compensates for job in jobs if not job.forward}
    done = [
        job
        for job in jobs
        if job.forward
        and job.status == JobStatus.SUCCEEDED
        and job.id not in handled
        and undoable(job.queue)
    ]
    if not done:
        return None
    return max(done, key=lambda job: (job.finished_at or _EARLIEST, job.id))


def stop_effects(jobs: Sequence[RunJob], keep: str = "") -> tuple[list[str], list[str]]:
    """What stopping a run does to its forward jobs: (queued ones to cancel, running ones to
    ask to stop). Compensations are left alone, and so is job ``keep`` (the one whose outcome
    stops the run)."""
    cancel = [j.id for j in jobs if j.forward and j.status == JobStatus.QUEUED and j.id != keep]
    ask = [j.id for j in jobs if j.forward and j.status == JobStatus.RUNNING and j.id != keep]
    return cancel, ask


def retries_allowed(stopped: bool, compensates: str | None) -> bool:
    """Whether a failed attempt may be retried: not a forward step of a stopped run."""
    return not stopped or compensates is not None
