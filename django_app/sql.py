"""The ledger's hot path in raw SQL, and the one object that knows the database's dialect.

The ORM costs ~0.2 ms of Python per statement to compile; on a busy worker that is most of the
ledger's overhead, so the writes every job makes - insert, claim, outcome with its outbox - are
written here once, by hand. What differs between PostgreSQL, SQLite and MariaDB/MySQL
(``RETURNING``, ``ON CONFLICT`` or ``INSERT IGNORE``, appending to a JSON list, the outcome and
its outbox in one statement) is decided by a :class:`Dialect`, chosen from the connection's
vendor; no other module branches on the vendor.

:class:`SqlLedger` implements :class:`celery_workflows.store.Ledger` on these statements.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from django.db import (
    DEFAULT_DB_ALIAS,
    DataError,
    IntegrityError,
    ProgrammingError,
    connection,
    connections,
    models,
    transaction,
)
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q

from celery_workflows.clock import utcnow
from celery_workflows.errors import LedgerWriteError
from celery_workflows.ids import new_id
from celery_workflows.records import (
    AttemptOutcome,
    ClaimedJob,
    EnqueueResult,
    JobStatus,
    NewJob,
    Outbox,
    Outcome,
    Recorded,
    RunStatus,
    StepRecord,
)

from .models import Event as EventRow
from .models import Job, QueueControl, WorkflowRun
from .rows import dt, event_values, from_dt, from_json, job_values, js, outcome_changes, run_values


def _columns(model: type[models.Model]) -> list[str]:
    return [str(f.column) for f in model._meta.concrete_fields]


T = TypeVar("T")

JOB = Job._meta.db_table
JOB_COLUMNS = _columns(Job)
EVENT = EventRow._meta.db_table
EVENT_COLUMNS = _columns(EventRow)
RUN = WorkflowRun._meta.db_table
CONTROL = QueueControl._meta.db_table
RUN_COLUMNS = _columns(WorkflowRun)
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
]

_OPEN_RUN = f"'{RunStatus.RUNNING}', '{RunStatus.COMPENSATING}'"
#: a job (row ``v``) may be written unless its run was stopped or is compensating - then only
#: compensations are (a failed or cancelled workflow does not start new forward steps)
_FORWARD_ALLOWED = (
    f"(v.compensates IS NOT NULL OR NOT EXISTS (SELECT 1 FROM {RUN} r "
    "WHERE r.correlation_id = v.correlation_id "
    f"AND (r.ended_by <> '' OR r.status = '{RunStatus.COMPENSATING}')))"
)


def marks(n: int) -> str:
    return ", ".join(["%s"] * n)


class Dialect:
    """SQL that differs between databases. The base class speaks MariaDB/MySQL."""

    #: ``UPDATE/INSERT ... RETURNING``
    returning = False
    #: the outcome, its events, its jobs and the run's settling in ONE statement
    one_statement_outbox = False
    #: statements run as server-side prepared statements (psycopg 3)
    server_prepared = False

    def relaxed_commit(self, update_sql: str) -> str:
        """``update_sql`` (an ``UPDATE ... SET ... WHERE``), committed without waiting for its
        WAL flush where the database allows it for one statement; unchanged elsewhere."""
        return update_sql

    def insert(self, table: str, columns: Sequence[str], rows: int, ignore: bool) -> str:
        """``INSERT`` of ``rows`` rows; ``ignore`` skips rows that hit a unique key."""
        values = ", ".join([f"({marks(len(columns))})"] * rows)
        verb = "INSERT IGNORE" if ignore else "INSERT"
        return f"{verb} INTO {table} ({', '.join(columns)}) VALUES {values}"

    def json_append(self, column: str) -> str:
        """An expression: the JSON list in ``column`` with one JSON value (a parameter) added."""
        return f"JSON_ARRAY_APPEND({column}, '$', CAST(%s AS JSON))"

    def upsert_counting(
        self, table: str, columns: Sequence[str], key: str, counter: str, rows: int = 1
    ) -> str:
        """INSERT ``rows`` rows; where ``key`` exists, add the new ``counter`` to the old one."""
        sql = self.insert(table, columns, rows, ignore=False)
        return f"{sql} ON DUPLICATE KEY UPDATE {counter} = {counter} + VALUES({counter})"


class SQLite(Dialect):
    returning = True

    def insert(self, table: str, columns: Sequence[str], rows: int, ignore: bool) -> str:
        sql = super().insert(table, columns, rows, ignore=False)
        return f"{sql} ON CONFLICT DO NOTHING" if ignore else sql

    def json_append(self, column: str) -> str:
        return f"json_insert({column}, '$[#]', json(%s))"

    def upsert_counting(
        self, table: str, columns: Sequence[str], key: str, counter: str, rows: int = 1
    ) -> str:
        sql = self.insert(table, columns, rows, ignore=False)
        return (
            f"{sql} ON CONFLICT ({key}) DO UPDATE SET {counter} = {table}.{counter} + "
            f"excluded.{counter}"
        )


class PostgreSQL(SQLite):
    one_statement_outbox = True
    server_prepared = True

    def relaxed_commit(self, update_sql: str) -> str:
        # set_config(..., is_local => true) lasts for this statement's own transaction only;
        # the UPDATE joins the one-row CTE so that it is evaluated
        head, where = update_sql.split(" WHERE ", 1)
        return (
            "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) "
            f"{head} FROM relaxed WHERE {where}"
        )

    def json_append(self, column: str) -> str:
        return f"{column} || jsonb_build_array(%s::jsonb)"


_DIALECTS: dict[str, Dialect] = {
    "postgresql": PostgreSQL(),
    "sqlite": SQLite(),
    "mysql": Dialect(),
}


def dialect() -> Dialect:
    """The dialect of the default database connection."""
    return _dialect_of(connections[DEFAULT_DB_ALIAS])


def _dialect_of(db: BaseDatabaseWrapper) -> Dialect:
    return _DIALECTS.get(db.vendor, _DIALECTS["mysql"])


def execute(sql: str, params: Sequence[Any]) -> Any:
    """Run one statement; return the cursor's rows (empty when it returns none)."""
    with _cursor() as (cursor, options):
        cursor.execute(sql, params, **options)
        return cursor.fetchall() if _returns_rows(cursor) else []


def _returns_rows(cursor: Any) -> bool:
    """Whether the statement just run returned rows (possibly none). psycopg's ``pgresult``
    says so without building ``description`` (a column object per column, on every call)."""
    result = getattr(cursor, "pgresult", None)
    if result is not None:
        return bool(result.nfields)
    return cursor.description is not None


def update(sql: str, params: Sequence[Any]) -> int:
    """Run one UPDATE; return how many rows it changed."""
    with _cursor() as (cursor, options):
        cursor.execute(sql, params, **options)
        return int(cursor.rowcount)


@contextlib.contextmanager
def _cursor() -> Iterator[tuple[Any, dict[str, bool]]]:
    """A cursor for the ledger's statements and the options to execute them with.

    On PostgreSQL a server-binding psycopg cursor, so that with prepared statements on each
    statement is parsed and planned once per connection: that halves the database's CPU per
    job (planning the outcome statement costs more than running it). Errors are Django's, as
    from any Django cursor. Elsewhere Django's cursor.

    The thread's connection is looked up once here: each attribute read through Django's
    ``connection`` proxy is a thread-local lookup, and the hot path makes many.
    """
    db = connections[DEFAULT_DB_ALIAS]
    if not _dialect_of(db).server_prepared:
        with db.cursor() as cursor:
            yield cursor, {}
        return
    import psycopg  # the PostgreSQL backend's driver (psycopg 3)

    db.ensure_connection()
    raw = db.connection
    with db.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        yield cursor, _prepare(raw)


def _prepare(raw: Any) -> dict[str, bool]:
    """Prepare the ledger's statements on first use when the connection ``raw`` has prepared
    statements on. Django turns them off unless ``OPTIONS["prepare_threshold"]`` is set (so that
    PgBouncer < 1.21 in transaction mode, which cannot keep them, works); the configuration
    reference recommends setting it without such a pooler."""
    return {"prepare": raw.prepare_threshold is not None}


def insert_rows(
    table: str, columns: list[str], rows: list[dict[str, Any]], key: str = "id"
) -> set[str]:
    """INSERT rows, skipping any that collide with a unique key; return the keys inserted.

    One statement where the dialect has ``RETURNING``; a savepoint per row elsewhere (which
    reports duplicates as errors). Must run inside a transaction.
    """
    if not rows:
        return set()
    d = dialect()
    if d.returning:
        inserted: set[str] = set()
        for batch in batches(rows, len(columns)):
            sql = d.insert(table, columns, len(batch), ignore=True) + f" RETURNING {key}"
            inserted.update(r[0] for r in execute(sql, [row[c] for row in batch for c in columns]))
        return inserted
    inserted = set()
    single = d.insert(table, columns, 1, ignore=False)
    for row in rows:
        try:
            with transaction.atomic():
                execute(single, [row[c] for c in columns])
        except IntegrityError:
            continue
        inserted.add(row[key])
    return inserted


def existing(jobs: list[NewJob]) -> list[NewJob]:
    """The jobs of ``jobs`` whose rows exist."""
    found: set[str] = set()
    for batch in batches(jobs, 1):
        rows = execute(
            f"SELECT id FROM {JOB} WHERE id IN ({marks(len(batch))})", [j.id for j in batch]
        )
        found.update(r[0] for r in rows)
    return [j for j in jobs if j.id in found]


def fits_one_statement(changes: dict[str, Any], outbox: Outbox) -> bool:
    """Whether an outcome's changes and its outbox fit the parameter limit of the single
    statement :meth:`SqlLedger._record_in_one_statement` writes (else: one transaction)."""
    params = (
        len(changes)
        + len(outbox.events) * len(EVENT_COLUMNS)
        + len(outbox.jobs) * len(JOB_COLUMNS)
        + 64  # the fence and the run's counters
    )
    return params <= max_params()


def max_params() -> int:
    """How many parameters one statement may carry on the default database."""
    db = connections[DEFAULT_DB_ALIAS]
    if db.vendor == "sqlite":  # the library's own limit (Django assumes the oldest, 999)
        db.ensure_connection()
        return int(db.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return int(db.features.max_query_params or 65535)  # PostgreSQL's and MySQL's protocol


def batches(items: Sequence[T], per_item: int) -> Iterator[Sequence[T]]:
    """``items`` in slices small enough for one statement each, at ``per_item`` parameters
    per item: ``enqueue_many()`` of ten thousand jobs, or a step that starts thousands of
    jobs, must not hit the parameter limit."""
    size = max(1, max_params() // per_item)
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_change(
    correlation_id: str,
    job_id: str,
    now: datetime,
    *,
    pending: int | str,
    dead: int = 0,
    cancelled: int = 0,
    compensation: int | str = 0,
    failed_compensation: int = 0,
    compensating: bool = False,
) -> tuple[str, list[Any]]:
    """``UPDATE`` of a run's job counters by the statement (or transaction) that moves job
    ``job_id``; if that leaves nothing pending and the run is running or compensating, it
    settles in the same statement: its final status, ``finished_at`` and ``last_job_id``.

    ``pending`` and ``compensation`` are numbers, or SQL expressions of the enclosing statement
    (the count of jobs it inserted). The row lock makes concurrent branches of one run take
    turns, so exactly one of them sees the count reach zero. ``compensating`` marks a running
    run as compensating. Final status: ``dead_lettered`` if a compensation failed;
    ``compensated`` if steps were undone; ``cancelled`` if the run was stopped or a job
    cancelled; ``completed`` if no job was dead-lettered; ``dead_lettered`` otherwise.
    """
    p, d, c, comp, failed = (
        v if isinstance(v, str) else str(int(v))
        for v in (pending, dead, cancelled, compensation, failed_compensation)
    )
    p, comp = f"({p})", f"({comp})"
    settles = f"status IN ({_OPEN_RUN}) AND pending_jobs + {p} <= 0"
    final = (
        f"CASE WHEN failed_compensations + {failed} > 0 THEN '{RunStatus.DEAD_LETTERED}' "
        f"WHEN compensation_jobs + {comp} > 0 THEN '{RunStatus.COMPENSATED}' "
        f"WHEN cancelled_jobs + {c} > 0 OR ended_by <> '' THEN '{RunStatus.CANCELLED}' "
        f"WHEN dead_jobs + {d} = 0 THEN '{RunStatus.COMPLETED}' "
        f"ELSE '{RunStatus.DEAD_LETTERED}' END"
    )
    otherwise = (
        f"CASE WHEN status = '{RunStatus.RUNNING}' THEN '{RunStatus.COMPENSATING}' ELSE status END"
        if compensating
        else "status"
    )
    # the settling assignments come first: MySQL evaluates SET left to right with new values
    sql = (
        f"UPDATE {RUN} SET status = CASE WHEN {settles} THEN {final} ELSE {otherwise} END, "
        f"finished_at = CASE WHEN {settles} THEN %s ELSE finished_at END, "
        f"last_job_id = CASE WHEN {settles} THEN %s ELSE last_job_id END, "
        f"pending_jobs = CASE WHEN pending_jobs + {p} < 0 THEN 0 ELSE pending_jobs + {p} END, "
        f"dead_jobs = dead_jobs + {d}, cancelled_jobs = cancelled_jobs + {c}, "
        f"compensation_jobs = compensation_jobs + {comp}, "
        f"failed_compensations = failed_compensations + {failed} WHERE correlation_id = %s"
    )
    return sql, [dt(now), job_id, correlation_id]


def forward_allowed(outbox: Outbox) -> Outbox:
    """``outbox`` without the forward jobs of runs that were stopped or are compensating."""
    forward = {j.correlation_id for j in outbox.jobs if j.compensates is None}
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
    return dataclasses.replace(outbox, jobs=jobs)


def run_deltas(
    compensates: str | None, outcome: Outcome, outbox: Outbox, inserted: int | str
) -> dict[str, Any]:
    """How an attempt's outcome changes its run's counters (empty: not at all).

    ``compensates`` is set when the job is a compensation; ``inserted`` counts the jobs its
    outbox really inserted (a number, or an SQL expression).
    """
    final = outcome.status != JobStatus.QUEUED
    dead = outcome.status == JobStatus.DEAD
    if not (final or outbox.jobs):
        return {}
    jobs = inserted if isinstance(inserted, str) else int(inserted)
    return {
        "pending": (f"{jobs} - 1" if isinstance(jobs, str) else jobs - 1) if final else jobs,
        "dead": int(dead),
        "compensation": jobs if dead or outbox.compensating else 0,
        "failed_compensation": int(dead and compensates is not None),
        "compensating": outbox.compensating,
    }


def change_run(correlation_id: str, job_id: str, now: datetime, **deltas: Any) -> RunStatus | None:
    """Apply :func:`run_change` now; return the run's final status if this settled it."""
    sql, params = run_change(correlation_id, job_id, now, **deltas)
    if dialect().returning:
        rows = execute(f"{sql} RETURNING status, last_job_id", params)
    elif update(sql, params):
        rows = execute(
            f"SELECT status, last_job_id FROM {RUN} WHERE correlation_id = %s", [correlation_id]
        )
    else:
        rows = []
    return settled_status(rows, job_id)


def settled_status(rows: list[Any], job_id: str) -> RunStatus | None:
    """The final status in a ``(status, last_job_id)`` row if job ``job_id`` settled the run."""
    if not rows or rows[0][0] is None:
        return None
    status = RunStatus(rows[0][0])
    return status if status.is_final and rows[0][1] == job_id else None


@functools.cache
def _cast_row(model: type[models.Model], columns: tuple[str, ...]) -> str:
    """``(CAST(%s AS type), ...)``: VALUES rows in an INSERT ... SELECT lose column types."""
    types = {f.column: f.db_type(connection) for f in model._meta.concrete_fields}
    return "(" + ", ".join(f"CAST(%s AS {types[c]})" for c in columns) + ")"


class SqlLedger:
    """:class:`celery_workflows.store.Ledger` on the statements above."""

    def on_commit(self, callback: Callable[[], None]) -> None:
        transaction.on_commit(callback)

    def insert_job(self, job: NewJob) -> EnqueueResult:
        now = utcnow()
        if job.idempotency_key is None:
            try:
                self._insert(job, now)
            except IntegrityError:
                # only this insert, run again after its reply was lost, can collide here
                if connection.in_atomic_block or not self.knows_job(job.id):
                    raise
            return EnqueueResult(job.id, True, job.correlation_id)
        try:
            with transaction.atomic():
                self._insert(job, now)
        except IntegrityError:
            if self.knows_job(job.id):  # this insert, run again after a lost reply
                return EnqueueResult(job.id, True, job.correlation_id)
            first = (
                Job.objects.filter(queue=job.queue, idempotency_key=job.idempotency_key)
                .values_list("id", "correlation_id")
                .first()
            )
            if first is None:
                raise
            return EnqueueResult(first[0], False, first[1])
        return EnqueueResult(job.id, True, job.correlation_id)

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
                EnqueueResult(job.id, True, job.correlation_id)
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
        self, job_id: str, attempt: int, lease_token: str, worker: str, lease_seconds: float
    ) -> ClaimedJob | None:
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        # the second branch matches only this claim's own token: running the same claim again
        # (its reply was lost with the connection) wins it again instead of losing the job.
        # The claim commits without waiting for its WAL flush (PostgreSQL): a claim lost in a
        # database crash only means the attempt's outcome is fenced and the job runs again -
        # outcomes are always durable
        sql = (
            f"UPDATE {JOB} SET status = '{JobStatus.RUNNING}', attempts = %s, lease_token = %s, "
            "lease_expires_at = %s, worker = %s, started_at = %s "
            f"WHERE id = %s AND ((status = '{JobStatus.QUEUED}' AND attempts = %s "
            f"AND NOT EXISTS (SELECT 1 FROM {CONTROL} c WHERE c.queue = {JOB}.queue "
            "AND c.paused)) "
            f"OR (status = '{JobStatus.RUNNING}' AND attempts = %s AND lease_token = %s))"
        )
        params = [
            attempt,
            lease_token,
            dt(expires),
            worker,
            dt(now),
            job_id,
            attempt - 1,
            attempt,
            lease_token,
        ]
        # the run's business key comes along for the attempt's log lines (one index lookup)
        key = f"(SELECT r.business_key FROM {RUN} r WHERE r.correlation_id = {JOB}.correlation_id)"
        fields = ", ".join([*CLAIM_FIELDS, key])
        if not connection.in_atomic_block:
            sql = dialect().relaxed_commit(sql)
        if dialect().returning:
            rows = execute(f"{sql} RETURNING {fields}", params)
        elif update(sql, params):
            rows = execute(f"SELECT {fields} FROM {JOB} WHERE id = %s", [job_id])
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
        )

    def extend_lease(self, job_id: str, lease_token: str, lease_seconds: float) -> datetime | None:
        now = utcnow()
        expires = now + timedelta(seconds=lease_seconds)
        fenced = self._fenced_update(job_id, lease_token, now, {"lease_expires_at": dt(expires)})
        return expires if fenced else None

    def record_outcome(self, job: ClaimedJob, outcome: Outcome, outbox: Outbox) -> Recorded | None:
        # the lease token stays on the row as this attempt's receipt (see _written_before)
        changes = outcome_changes(outcome)
        changes.update(
            lease_expires_at=None,
            attempt_log=js([*job.attempt_log, outcome.attempt.to_json()]),
        )
        now = utcnow()
        final = outcome.status != JobStatus.QUEUED
        try:
            if (
                dialect().one_statement_outbox
                and outbox.starts is None
                and fits_one_statement(changes, outbox)
            ):
                recorded = self._record_in_one_statement(job, outcome, outbox, changes, now, final)
            else:
                recorded = self._record_in_transaction(job, outcome, outbox, changes, now, final)
        except (DataError, IntegrityError, ProgrammingError) as exc:
            raise LedgerWriteError(str(exc)) from exc
        return recorded if recorded is not None else self._written_before(job, outcome, outbox)

    def _record_in_transaction(
        self,
        job: ClaimedJob,
        outcome: Outcome,
        outbox: Outbox,
        changes: dict[str, Any],
        now: datetime,
        final: bool,
    ) -> Recorded | None:
        with transaction.atomic():
            if not self._fenced_update(job.id, job.lease_token, now, changes):
                return None
            created = self.write_outbox(outbox, count_on_run=False) if outbox else []
            deltas = run_deltas(job.compensates, outcome, outbox, len(created))
            settled = change_run(job.correlation_id, job.id, now, **deltas) if deltas else None
        return Recorded(created, settled)

    def _written_before(self, job: ClaimedJob, outcome: Outcome, outbox: Outbox) -> Recorded | None:
        """The fence refused the write: was it this very outcome, written by an earlier try
        whose reply was lost? Only this attempt's outcome leaves its token on a finished row."""
        rows = execute(
            f"SELECT status, attempts FROM {JOB} WHERE id = %s AND lease_token = %s",
            [job.id, job.lease_token],
        )
        if not rows or rows[0][0] != outcome.status or rows[0][1] != job.attempt:
            return None
        run = execute(
            f"SELECT status, last_job_id FROM {RUN} WHERE correlation_id = %s",
            [job.correlation_id],
        )
        return Recorded(existing(outbox.jobs), settled_status(run, job.id))

    def _fenced_update(
        self, job_id: str, lease_token: str, now: datetime, changes: dict[str, Any]
    ) -> bool:
        """Apply ``changes`` (column -> adapted value) only while the lease is held."""
        assignments = ", ".join(f"{column} = %s" for column in changes)
        return bool(
            update(
                f"UPDATE {JOB} SET {assignments} WHERE id = %s AND status = '{JobStatus.RUNNING}' "
                "AND lease_token = %s AND lease_expires_at > %s",
                [*changes.values(), job_id, lease_token, dt(now)],
            )
        )

    def _record_in_one_statement(
        self,
        job: ClaimedJob,
        outcome: Outcome,
        outbox: Outbox,
        changes: dict[str, Any],
        now: datetime,
        final: bool,
    ) -> Recorded | None:
        """PostgreSQL: the fenced outcome, its events, the jobs they start and the run's
        counters (settling it when nothing is pending any more), in ONE statement.

        Every part selects from the UPDATE's result, so a fenced (zombie) attempt writes
        nothing; the run counts the jobs the statement really inserted (duplicates skipped).
        """
        assignments = ", ".join(f"{column} = %s" for column in changes)
        params: list[Any] = [*changes.values(), job.id, job.lease_token, dt(now)]
        parts = [
            f"WITH done AS (UPDATE {JOB} SET {assignments} WHERE id = %s "
            f"AND status = '{JobStatus.RUNNING}' AND lease_token = %s AND lease_expires_at > %s "
            "RETURNING 1)"
        ]
        for name, model, columns, rows in (
            ("ev", EventRow, EVENT_COLUMNS, [event_values(e) for e in outbox.events]),
            ("jb", Job, JOB_COLUMNS, [job_values(j, now) for j in outbox.jobs]),
        ):
            if not rows:
                continue
            row = _cast_row(model, tuple(columns))
            only = f" AND {_FORWARD_ALLOWED}" if model is Job else ""
            parts.append(
                f", {name} AS (INSERT INTO {model._meta.db_table} ({', '.join(columns)}) "
                f"SELECT * FROM (VALUES {', '.join([row] * len(rows))}) v ({', '.join(columns)}) "
                f"WHERE EXISTS (SELECT 1 FROM done){only} ON CONFLICT DO NOTHING RETURNING id)"
            )
            params += [r[c] for r in rows for c in columns]
        inserted = "(SELECT count(*) FROM jb)" if outbox.jobs else 0
        settle = "NULL, NULL"
        deltas = run_deltas(job.compensates, outcome, outbox, inserted)
        if deltas:
            run_sql, run_params = run_change(job.correlation_id, job.id, now, **deltas)
            parts.append(
                f", run AS ({run_sql} AND EXISTS (SELECT 1 FROM done) "
                "RETURNING status, last_job_id)"
            )
            params += run_params
            settle = "(SELECT status FROM run), (SELECT last_job_id FROM run)"
        created = "(SELECT array_agg(id) FROM jb)" if outbox.jobs else "NULL"
        parts.append(f" SELECT (SELECT count(*) FROM done), {created}, {settle}")
        ((won, ids, *run_row),) = execute("".join(parts), params)
        if not won:
            return None
        created_ids = set(ids or ())
        return Recorded(
            [j for j in outbox.jobs if j.id in created_ids], settled_status([run_row], job.id)
        )

    def write_outbox(self, outbox: Outbox, count_on_run: bool = True) -> list[NewJob]:
        """Insert ``outbox``; with ``count_on_run``, count its jobs on their runs here (an
        attempt's outcome counts them itself, with its own change)."""
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
            insert_rows(EVENT, EVENT_COLUMNS, [event_values(e) for e in outbox.events])
            created = insert_rows(JOB, JOB_COLUMNS, [job_values(j, now) for j in outbox.jobs])
            per_run = Counter(j.correlation_id for j in outbox.jobs if j.id in created)
            for correlation_id, count in per_run.items() if count_on_run else ():
                sql, params = run_change(
                    correlation_id,
                    "",
                    now,
                    pending=count,
                    compensation=count if outbox.compensating else 0,
                    compensating=outbox.compensating,
                )
                update(sql, params)
        if len(created) < len(outbox.jobs):
            # skipped rows are duplicates of earlier writes - or this write, run again after
            # a lost reply: ids are fresh uuids, so a row with one of ours is ours
            return existing(outbox.jobs)
        return [j for j in outbox.jobs if j.id in created]

    def completed_steps(self, correlation_id: str) -> list[StepRecord]:
        rows = (
            Job.objects.filter(correlation_id=correlation_id, status=JobStatus.SUCCEEDED)
            .order_by("-finished_at")
            .values_list("id", "queue", "payload", "finished_at", "compensates")
        )
        return [
            StepRecord(job_id, queue, payload, finished or utcnow(), compensates)
            for job_id, queue, payload, finished, compensates in rows
        ]

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
        entry = {
            "attempt": 1,
            "outcome": AttemptOutcome.INVALID_PAYLOAD.value,
            "error": reason,
            "started_at": now.isoformat(),
            "finished_at": now.isoformat(),
            "worker": "",
            "traceback": "",
            "duration_ms": 0,
        }
        values = {
            **job_values(job, now),
            "status": JobStatus.DEAD.value,
            "attempts": 1,
            "finished_at": dt(now),
            "dead_reason": reason,
            "attempt_log": js([entry]),
        }
        execute(
            dialect().insert(JOB, JOB_COLUMNS, 1, ignore=False), [values[c] for c in JOB_COLUMNS]
        )
        return job.id
