"""A run's counters, kept by the statement that moves one of its jobs, and its settling.

:func:`run_change` renders :mod:`celery_workflows.rules` into SQL: the counters change by a
:class:`RunDelta`, and when that leaves nothing pending on a run that settles from its status,
the same statement writes the final status (:data:`~celery_workflows.rules.FINAL_STATUS`, first
match wins), ``finished_at`` and ``last_job_id``. The row lock makes concurrent branches of one
run take turns, so exactly one write sees the count reach zero.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from celery_workflows.records import RunStatus
from celery_workflows.rules import FINAL_STATUS, SETTLES_FROM

from .rows import dt
from .statements import RUN, dialect, execute, update


@dataclass(frozen=True)
class RunDelta:
    """How one write changes its run's counters. ``pending`` and ``compensation`` may be SQL
    expressions of the enclosing statement (the count of jobs it really inserted)."""

    pending: int | str = 0
    dead: int = 0
    cancelled: int = 0
    compensation: int | str = 0
    failed_compensation: int = 0
    #: the run stops moving forward (a failure, or its undo has begun): ``compensating``
    compensating: bool = False


def _sql(value: int | str) -> str:
    return f"({value})" if isinstance(value, str) else str(int(value))


def run_change(
    correlation_id: str, job_id: str, now: datetime, delta: RunDelta
) -> tuple[str, list[Any]]:
    """``UPDATE`` of a run's counters by ``delta`` (by the write that moves job ``job_id``),
    settling the run in the same statement when nothing of it is pending any more."""
    return run_change_sql(delta), run_change_params(correlation_id, job_id, now)


def run_change_params(correlation_id: str, job_id: str, now: datetime) -> list[Any]:
    """The parameters of :func:`run_change_sql`'s statement, whatever the delta."""
    return [dt(now), job_id, correlation_id]


@functools.lru_cache(maxsize=64)
def run_change_sql(delta: RunDelta) -> str:
    """:func:`run_change`'s statement; its parameters: the time, the job, the run. Built once
    per delta (a worker's forward steps all use the same few)."""
    p, comp = _sql(delta.pending), _sql(delta.compensation)
    added = {
        "failed_compensations": f"failed_compensations + {_sql(delta.failed_compensation)} > 0",
        "compensation_jobs": f"compensation_jobs + {comp} > 0",
        "ended_by": "ended_by <> ''",
        "dead_jobs": f"dead_jobs + {_sql(delta.dead)} > 0",
        "cancelled_jobs": f"cancelled_jobs + {_sql(delta.cancelled)} > 0",
    }
    final = (
        "CASE "
        + " ".join(f"WHEN {added[counter]} THEN '{status}'" for counter, status in FINAL_STATUS)
        + f" ELSE '{RunStatus.COMPLETED}' END"
    )
    open_ = ", ".join(f"'{s}'" for s in SETTLES_FROM)
    settles = f"status IN ({open_}) AND pending_jobs + {p} <= 0"
    otherwise = (
        f"CASE WHEN status = '{RunStatus.RUNNING}' THEN '{RunStatus.COMPENSATING}' ELSE status END"
        if delta.compensating
        else "status"
    )
    # the settling assignments come first: MySQL evaluates SET left to right with new values
    return (
        f"UPDATE {RUN} SET status = CASE WHEN {settles} THEN {final} ELSE {otherwise} END, "
        f"finished_at = CASE WHEN {settles} THEN %s ELSE finished_at END, "
        f"last_job_id = CASE WHEN {settles} THEN %s ELSE last_job_id END, "
        f"pending_jobs = CASE WHEN pending_jobs + {p} < 0 THEN 0 ELSE pending_jobs + {p} END, "
        f"dead_jobs = dead_jobs + {_sql(delta.dead)}, "
        f"cancelled_jobs = cancelled_jobs + {_sql(delta.cancelled)}, "
        f"compensation_jobs = compensation_jobs + {comp}, "
        f"failed_compensations = failed_compensations + {_sql(delta.failed_compensation)} "
        "WHERE correlation_id = %s"
    )


#: what a run's change returns: enough to tell whether it settled, and whose child it is
SETTLED_FIELDS = "status, last_job_id, parent_id"


def change_run(
    correlation_id: str, job_id: str, now: datetime, delta: RunDelta
) -> RunStatus | None:
    """Apply :func:`run_change` now; return the run's final status if this settled it."""
    return change_run_ended(correlation_id, job_id, now, delta)[0]


def change_run_ended(
    correlation_id: str, job_id: str, now: datetime, delta: RunDelta
) -> tuple[RunStatus | None, str | None]:
    """:func:`change_run`, and the run's parent if this settled a child run (whose parent
    learns of it: :mod:`celery_workflows.children`)."""
    sql, params = run_change(correlation_id, job_id, now, delta)
    if dialect().returning:
        rows = execute(f"{sql} RETURNING {SETTLED_FIELDS}", params)
    elif update(sql, params):
        rows = execute(
            f"SELECT {SETTLED_FIELDS} FROM {RUN} WHERE correlation_id = %s", [correlation_id]
        )
    else:
        rows = []
    status = settled_status(rows, job_id)
    return status, rows[0][2] if status is not None else None


def settled_status(rows: list[Any], job_id: str) -> RunStatus | None:
    """The final status in a ``(status, last_job_id)`` row if job ``job_id`` settled the run."""
    if not rows or rows[0][0] is None:
        return None
    status = RunStatus(rows[0][0])
    return status if status.is_final and rows[0][1] == job_id else None
