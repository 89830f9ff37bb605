"""The ledger's hot path: the writes every job makes - insert, claim, outcome with its outbox.

:class:`SqlLedger` implements :class:`celery_workflows.store.Ledger` on hand-written statements
(:mod:`.statements` says why, and holds what differs between databases); the outcome write is
:mod:`.outcomes`, the run's counters :mod:`.runcounters`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, connection, transaction

from celery_workflows.clock import utcnow
from celery_workflows.errors import StepTransactionError
from celery_workflows.ids import new_id
from celery_workflows.limits import Held, Limits
from celery_workflows.records import (
    AttemptRecord,
    ClaimedJob,
    DueJob,
    EnqueueResult,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
)
from celery_workflows.store import UndoPlanner

from . import slots
from .models import Job
from .outcomes import Attempted, write_from_outside, write_outcome
from .rows import dt, from_dt, from_json, job_values, js, run_values
from .statements import (
    CONTROL,
    JOB,
    JOB_COLUMNS,
    RUN,
    RUN_COLUMNS,
    Dialect,
    batches,
    dialect,
    execute,
    insert_rows,
    update,
)

#: what a worker needs to know about the job it claimed
CLAIM_FIELDS = [
    "queue",
    "payload",
    "max_attempts",
    "correlation_id",
    "attempt_log",
    "created_at",
    "priority",
    "trace_id",
    "compensates",
    "coalesce_key",
    "gather_id",
]


#: what a claim reads back: the job's fields, and its run's business key for the attempt's log
#: lines (one index lookup)
_CLAIM_RETURNS = ", ".join(
    [
        *CLAIM_FIELDS,
        f"(SELECT r.business_key FROM {RUN} r WHERE r.correlation_id = {JOB}.correlation_id)",
    ]
)


@functools.lru_cache(maxsize=64)
def _claim_sql(d: Dialect, slot_sql: str, relaxed: bool) -> str:
    """The claim's statement in dialect ``d`` (built once per form; ``slot_sql``: a limited
    queue's slot conditions). The second branch matches only this claim's own token: running
    the same claim again (its reply was lost with the connection) wins it again instead of
    losing the job. ``relaxed``: committed without waiting for its WAL flush (PostgreSQL) - a
    claim lost in a database crash only means the attempt's outcome is fenced and the job runs
    again; outcomes are always durable."""
    sql = (
        f"UPDATE {JOB} SET status = '{JobStatus.RUNNING}', attempts = %s, lease_token = %s, "
        "lease_expires_at = %s, worker = %s, started_at = %s "
        f"WHERE id = %s AND ((status = '{JobStatus.QUEUED}' AND attempts = %s "
        f"AND NOT EXISTS (SELECT 1 FROM {CONTROL} c WHERE c.queue = {JOB}.queue "
        f"AND c.paused){slot_sql}) "
        f"OR (status = '{JobStatus.RUNNING}' AND attempts = %s AND lease_token = %s))"
    )
    if relaxed:
        sql = d.relaxed_commit(sql)
    return f"{sql} RETURNING {_CLAIM_RETURNS}" if d.returning else sql


class SqlLedger:
    """:class:`celery_workflows.store.Ledger` on the statements above."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        transaction.on_commit(callback)

    @contextmanager
    def atomic_step(self) -> Iterator[None]:
        # the ledger's statements use the default connection, as the project's models do
        # unless routed elsewhere: one transaction holds both
        try:
            with transaction.atomic():
                yield
        except DatabaseError as exc:
            raise StepTransactionError(f"{type(exc).__name__}: {exc}") from exc

    def run_on_commit_now(self, which: Callable[[Callable[[], None]], bool]) -> None:
        # Django keeps the callbacks of a transaction in ``run_on_commit`` and drops those
        # of a savepoint when it is rolled back: what is left there was not rolled back
        pending = connection.run_on_commit
        picked = [entry for entry in pending if which(entry[1])]
        connection.run_on_commit = [entry for entry in pending if not which(entry[1])]
        for entry in picked:
            entry[1]()

    def insert_job(self, job: NewJob) -> EnqueueResult:
        now = utcnow()
        if job.idempotency_key is None:
            try:
                self._insert(job, now)
            except IntegrityError:
                # only this insert, run again after its reply was lost, can collide here
                if connection.in_atomic_block or not self.knows_job(job.id):
                    raise
            return EnqueueResult(job.id, True, job.correlation_id, now)
        try:
            with transaction.atomic():
                self._insert(job, now)
        except IntegrityError:
            if self.knows_job(job.id):  # this insert, run again after a lost reply
                return EnqueueResult(job.id, True, job.correlation_id, now)
            first = (
                Job.objects.filter(queue=job.queue, idempotency_key=job.idempotency_key)
                .values_list("id", "correlation_id")
                .first()
            )
            if first is None:
                raise
            return EnqueueResult(first[0], False, first[1])
        return EnqueueResult(job.id, True, job.correlation_id, now)

    def insert_jobs(self, jobs: list[NewJob]) -> list[EnqueueResult]:
        if not jobs:
            return []
        now = utcnow()
        with transaction.atomic():
            created = insert_rows(JOB, JOB_COLUMNS, [job_values(j, now) for j in jobs])
            counts = Counter(j.correlation_id for j in jobs if j.id in created)
            starts = {j.correlation_id: j.starts for j in jobs if j.starts is not None}
            runs = [
                run_values(cid, starts[cid], now, pending_jobs=n)
                for cid, n in counts.items()
                if cid in starts
            ]
            for batch in batches(runs, len(RUN_COLUMNS)):
                sql = dialect().upsert_counting(
                    RUN, RUN_COLUMNS, "correlation_id", "pending_jobs", rows=len(batch)
                )
                execute(sql, [run[c] for run in batch for c in RUN_COLUMNS])
        results = []
        for job in jobs:
            first = None
            if job.id not in created and job.idempotency_key is not None:
                first = (
                    Job.objects.filter(queue=job.queue, idempotency_key=job.idempotency_key)
                    .exclude(id=job.id)
                    .values_list("id", "correlation_id")
                    .first()
                )
            # not created and no other job with its key: this very row, written by an
            # earlier try whose reply was lost
            results.append(
                EnqueueResult(job.id, True, job.correlation_id, now)
                if first is None
                else EnqueueResult(first[0], False, first[1])
            )
        return results

    def _insert(self, job: NewJob, now: datetime) -> None:
        """INSERT the job row and count it on its run (creating the run if ``job.starts``
        and the run does not exist yet), atomically."""
        d = dialect()
        values = job_values(job, now)
        job_sql = d.insert(JOB, JOB_COLUMNS, 1, ignore=False)
        job_params = [values[c] for c in JOB_COLUMNS]
        if job.starts is None:
            with transaction.atomic():
                execute(job_sql, job_params)
                update(
                    f"UPDATE {RUN} SET pending_jobs = pending_jobs + 1 WHERE correlation_id = %s",
                    [job.correlation_id],
                )
            return
        run = run_values(job.correlation_id, job.starts, now, pending_jobs=1)
        run_sql = d.upsert_counting(RUN, RUN_COLUMNS, "correlation_id", "pending_jobs")
        run_params = [run[c] for c in RUN_COLUMNS]
        if d.one_statement_outbox:
            execute(f"WITH run AS ({run_sql}) {job_sql}", [*run_params, *job_params])
            return
        with transaction.atomic():
            execute(run_sql, run_params)
            execute(job_sql, job_params)

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
        if limits is None:
            return self._claim(job_id, attempt, lease_token, worker, lease_seconds, now)
        slots.check_database()
        short_wait = min(limits.interval, slots.SHORT_WAIT_SECONDS)
        for _ in range(3):
            try:
                with transaction.atomic():
                    if limits.caps:
                        slots.lock_queue(queue)
                    claimed = self._claim(
                        job_id, attempt, lease_token, worker, lease_seconds, now, limits, queue
                    )
                    if claimed is None:
                        return (
                            slots.park_held(job_id, attempt, limits, queue, now)
                            if limits.caps
                            else None
                        )
                    if limits.rate is not None:
                        started = slots.take_start(job_id, queue, limits.interval)
                        claimed = dataclasses.replace(claimed, started_at=started)
                    return claimed
            except slots.RateHeld as held:
                if held.wait > short_wait:
                    break
                time.sleep(held.wait)  # outside the transaction: nothing is held meanwhile
                now = utcnow()
        return slots.defer_for_rate(job_id, attempt, queue, limits.interval)

    def _claim(
        self,
        job_id: str,
        attempt: int,
        lease_token: str,
        worker: str,
        lease_seconds: float,
        now: datetime,
        limits: Limits | None = None,
        queue: str = "",
    ) -> ClaimedJob | None:
        expires = now + timedelta(seconds=lease_seconds)
        slot_sql, slot_params = slots.slot_conditions(limits, queue, now) if limits else ("", [])
        params = [
            attempt,
            lease_token,
            dt(expires),
            worker,
            dt(now),
            job_id,
            attempt - 1,
            *slot_params,
            attempt,
            lease_token,
        ]
        d = dialect()
        sql = _claim_sql(d, slot_sql, relaxed=not connection.in_atomic_block)
        if d.returning:
            rows = execute(sql, params)
        elif update(sql, params):
            rows = execute(f"SELECT {_CLAIM_RETURNS} FROM {JOB} WHERE id = %s", [job_id])
        else:
            rows = []
        if not rows:
            return None
        row = dict(zip([*CLAIM_FIELDS, "business_key"], rows[0], strict=True))
        return ClaimedJob(
            id=job_id,
            attempt=attempt,
            lease_token=lease_token,
            lease_expires_at=expires,
            started_at=now,
            queue=row["queue"],
            payload=from_json(row["payload"]),
            max_attempts=row["max_attempts"],
            correlation_id=row["correlation_id"],
            attempt_log=from_json(row["attempt_log"]) or [],
            created_at=from_dt(row["created_at"]),
            priority=row["priority"],
            trace_id=row["trace_id"],
            compensates=row["compensates"],
            business_key=row["business_key"] or "",
            coalesce_key=row["coalesce_key"],
            gather_id=row["gather_id"],
        )

    def newer_job(self, job: ClaimedJob) -> str | None:
        rows = execute(
            f"SELECT id FROM {JOB} WHERE queue = %s AND coalesce_key = %s AND created_at > %s "
            "ORDER BY created_at DESC LIMIT 1",
            [job.queue, job.coalesce_key, dt(job.created_at)],
        )
        return str(rows[0][0]) if rows else None

    def release_held(
        self, queue: str, limits: Limits, most: int, due_before: datetime | None = None
    ) -> list[DueJob]:
        return slots.release_held(queue, limits, most, due_before)

    def take_held(
        self, queue: str, limits: Limits, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None:
        now = utcnow()
        with transaction.atomic():
            slots.lock_queue(queue)
            for due in slots.choose_held(queue, limits, 1, now):
                return self._claim(
                    due.job_id, due.attempt, lease_token, worker, lease_seconds, now, limits, queue
                )
        return None

    def extend_lease(self, job_id: str, lease_token: str, lease_seconds: float) -> datetime | None:
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        fenced = update(
            f"UPDATE {JOB} SET lease_expires_at = %s WHERE id = %s "
            f"AND status = '{JobStatus.RUNNING}' AND lease_token = %s AND lease_expires_at > %s",
            [dt(expires), job_id, lease_token, dt(now)],
        )
        return expires if fenced else None

    def report_progress(self, job_id: str, lease_token: str, progress: dict[str, Any]) -> bool:
        return bool(
            update(
                f"UPDATE {JOB} SET progress = %s WHERE id = %s "
                f"AND status = '{JobStatus.RUNNING}' AND lease_token = %s",
                [js(progress), job_id, lease_token],
            )
        )

    def record_outcome(
        self, job: ClaimedJob, outcome: Outcome, outbox: Outbox, undo: UndoPlanner | None = None
    ) -> Recorded | None:
        attempted = Attempted(
            job.id,
            job.correlation_id,
            job.attempt,
            job.lease_token,
            job.compensates,
            gather_id=job.gather_id,
        )
        return write_outcome(attempted, outcome, outbox, undo)

    def write_outbox(self, outbox: Outbox) -> list[NewJob]:
        """Insert ``outbox`` (events from outside any attempt: ``emit()``, a decision, an
        event from another service) and count its jobs on their runs. A run it touches that
        is left with nothing pending settles here (an event nothing subscribes to, say)."""
        return write_from_outside(outbox)

    def knows_job(self, job_id: str) -> bool:
        return bool(execute(f"SELECT 1 FROM {JOB} WHERE id = %s", [job_id]))

    def is_cancel_requested(self, job_id: str) -> bool:
        rows = execute(f"SELECT cancel_requested FROM {JOB} WHERE id = %s", [job_id])
        return bool(rows and rows[0][0])

    def record_unroutable(self, queue: str, body: Any, reason: str) -> str:
        now = utcnow()
        job = NewJob(
            id=new_id(),
            service=queue.split(".", 1)[0],
            queue=queue,
            payload=body,
            max_attempts=1,
            available_at=now,
            correlation_id=new_id(),
            published=False,
        )
        values = {
            **job_values(job, now),
            "status": JobStatus.DEAD.value,
            "attempts": 1,
            "finished_at": dt(now),
            "dead_reason": reason,
            "attempt_log": js([AttemptRecord.refused(reason, now).to_json()]),
        }
        execute(
            dialect().insert(JOB, JOB_COLUMNS, 1, ignore=False), [values[c] for c in JOB_COLUMNS]
        )
        return job.id
