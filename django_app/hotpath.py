"""Raw SQL for the three writes every job makes: insert, claim and outcome.

The ORM costs ~0.2 ms of Python per statement to compile; on a busy worker that is most of the
ledger's overhead, so these statements are written once, by hand, for the project's database.
``RETURNING`` (PostgreSQL, SQLite >= 3.35) lets the claim win the lease and read the job in one
round trip; other databases fall back to UPDATE then SELECT.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

from django.db import IntegrityError, connection, models, transaction
from django.utils.dateparse import parse_datetime

from celery_workflows.store import RunStart

from .models import Event, Job, WorkflowRun

TABLE = Job._meta.db_table
#: every column in model order, so an INSERT can name them all
COLUMNS = [f.column for f in Job._meta.concrete_fields]
CLAIM_FIELDS = [
    "queue",
    "payload",
    "max_attempts",
    "correlation_id",
    "attempt_log",
    "created_at",
    "priority",
    "trace_id",
]
RUN_TABLE = WorkflowRun._meta.db_table
EVENT_TABLE = Event._meta.db_table
EVENT_COLUMNS = [f.column for f in Event._meta.concrete_fields]


def dt(value: datetime | None) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def js(value: Any) -> Any:
    return connection.ops.adapt_json_value(value, None)


def from_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def from_dt(value: Any) -> datetime:
    if isinstance(value, str):
        value = parse_datetime(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def supports_returning() -> bool:
    return connection.vendor in ("postgresql", "sqlite")


RUN_COLUMNS = [f.column for f in WorkflowRun._meta.concrete_fields]


def run_values(correlation_id: str, starts: RunStart, now: datetime) -> dict[str, Any]:
    return {
        "correlation_id": correlation_id,
        "name": starts.name,
        "business_key": starts.business_key,
        "started_by": starts.started_by,
        "status": "running",
        "started_at": dt(now),
        "finished_at": None,
        "last_job_id": "",
        "waiting_for": None,
    }


def insert(values: dict[str, Any], run: dict[str, Any] | None = None) -> None:
    """INSERT one job row (and its workflow run unless that exists), atomically.

    ``values`` maps every column name to an adapted value. On PostgreSQL both inserts are one
    statement; elsewhere the caller's transaction (or a new one) holds them together.
    """
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    job_sql = f"INSERT INTO {TABLE} ({cols}) VALUES ({marks})"
    job_params = [values[c] for c in COLUMNS]
    if run is None:
        with connection.cursor() as cursor:
            cursor.execute(job_sql, job_params)
        return
    ignore = connection.vendor == "mysql"
    run_sql = (
        f"INSERT {'IGNORE ' if ignore else ''}INTO {RUN_TABLE} ({', '.join(RUN_COLUMNS)}) "
        f"VALUES ({', '.join(['%s'] * len(RUN_COLUMNS))})"
        + ("" if ignore else " ON CONFLICT DO NOTHING")
    )
    run_params = [run[c] for c in RUN_COLUMNS]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"WITH run AS ({run_sql}) {job_sql}", [*run_params, *job_params])
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(run_sql, run_params)
        cursor.execute(job_sql, job_params)


def insert_new(
    table: str, columns: list[str], rows: list[dict[str, Any]], key: str = "id"
) -> set[str]:
    """INSERT rows, skipping any that collide with a unique key; return the ids inserted.

    One statement on PostgreSQL and SQLite (``ON CONFLICT DO NOTHING RETURNING id``); a
    savepoint per row elsewhere. Must run inside a transaction.
    """
    if not rows:
        return set()
    if supports_returning():
        marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
        sql = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            + ", ".join([marks] * len(rows))
            + f" ON CONFLICT DO NOTHING RETURNING {key}"
        )
        params = [row[c] for row in rows for c in columns]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return {r[0] for r in cursor.fetchall()}
    inserted = set()
    single = (
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})"
    )
    for row in rows:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(single, [row[c] for c in columns])
            inserted.add(row[key])
        except IntegrityError:
            continue
    return inserted


def claim(
    job_id: str, attempt: int, lease_token: str, worker: str, now: datetime, expires: datetime
) -> dict[str, Any] | None:
    """Win attempt ``attempt`` of a queued job; return the fields a worker needs, or None."""
    sql = (
        f"UPDATE {TABLE} SET status = 'running', attempts = %s, lease_token = %s, "
        "lease_expires_at = %s, worker = %s, started_at = %s "
        "WHERE id = %s AND status = 'queued' AND attempts = %s"
    )
    params = [attempt, lease_token, dt(expires), worker, dt(now), job_id, attempt - 1]
    with connection.cursor() as cursor:
        if supports_returning():
            cursor.execute(f"{sql} RETURNING {', '.join(CLAIM_FIELDS)}", params)
            row = cursor.fetchone()
        else:
            cursor.execute(sql, params)
            row = None
            if cursor.rowcount:
                cursor.execute(
                    f"SELECT {', '.join(CLAIM_FIELDS)} FROM {TABLE} WHERE id = %s", [job_id]
                )
                row = cursor.fetchone()
    if row is None:
        return None
    fields = dict(zip(CLAIM_FIELDS, row, strict=True))
    fields["payload"] = from_json(fields["payload"])
    fields["attempt_log"] = from_json(fields["attempt_log"]) or []
    fields["created_at"] = from_dt(fields["created_at"])
    return fields


@functools.cache
def _cast_row(model: type[models.Model], columns: tuple[str, ...]) -> str:
    """``(CAST(%s AS type), ...)``: VALUES rows in an INSERT ... SELECT lose column types."""
    types = {f.column: f.db_type(connection) for f in model._meta.concrete_fields}
    return "(" + ", ".join(f"CAST(%s AS {types[c]})" for c in columns) + ")"


def fenced_update_with_outbox(
    job_id: str,
    lease_token: str,
    now: datetime,
    changes: dict[str, Any],
    events: list[dict[str, Any]],
    jobs: list[dict[str, Any]],
) -> set[str] | None:
    """PostgreSQL: the fenced outcome, its events and the jobs they start in ONE statement.

    The inserts select from the UPDATE's result, so a fenced (zombie) attempt writes nothing.
    Returns the ids of the jobs created (duplicates skipped), or None when fenced.
    """
    assignments = ", ".join(f"{column} = %s" for column in changes)
    params: list[Any] = [*changes.values(), job_id, lease_token, dt(now)]
    parts = [
        f"WITH done AS (UPDATE {TABLE} SET {assignments} WHERE id = %s AND status = 'running' "
        "AND lease_token = %s AND lease_expires_at > %s RETURNING 1)"
    ]
    for name, model, columns, rows, returning in (
        ("ev", Event, EVENT_COLUMNS, events, ""),
        ("jb", Job, COLUMNS, jobs, " RETURNING id"),
    ):
        if not rows:
            continue
        row = _cast_row(model, tuple(columns))
        parts.append(
            f", {name} AS (INSERT INTO {model._meta.db_table} ({', '.join(columns)}) SELECT * "
            f"FROM (VALUES {', '.join([row] * len(rows))}) v WHERE EXISTS (SELECT 1 FROM done) "
            f"ON CONFLICT DO NOTHING{returning})"
        )
        params += [r[c] for r in rows for c in columns]
    created = "(SELECT array_agg(id) FROM jb)" if jobs else "NULL"
    parts.append(f" SELECT (SELECT count(*) FROM done), {created}")
    with connection.cursor() as cursor:
        cursor.execute("".join(parts), params)
        won, ids = cursor.fetchone()
    return set(ids or ()) if won else None


def fenced_update(job_id: str, lease_token: str, now: datetime, changes: dict[str, Any]) -> bool:
    """Apply ``changes`` (column -> adapted value) only while the lease is held and unexpired."""
    assignments = ", ".join(f"{column} = %s" for column in changes)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TABLE} SET {assignments} WHERE id = %s AND status = 'running' "
            "AND lease_token = %s AND lease_expires_at > %s",
            [*changes.values(), job_id, lease_token, dt(now)],
        )
        return bool(cursor.rowcount)


def finish_run(correlation_id: str, last_job_id: str, now: datetime) -> str | None:
    """Settle a workflow run whose jobs are all done; the row lock makes one caller win.

    cancelled: a job was cancelled; completed: no job was dead-lettered; compensated: one was,
    and jobs started by events it emitted (its compensation) ran; dead_lettered: one was, with
    nothing to undo it.
    """
    sql = (
        f"UPDATE {RUN_TABLE} SET status = CASE "
        f"WHEN EXISTS (SELECT 1 FROM {TABLE} WHERE correlation_id = %s AND status = 'cancelled') "
        "THEN 'cancelled' "
        f"WHEN NOT EXISTS (SELECT 1 FROM {TABLE} WHERE correlation_id = %s AND status = 'dead') "
        "THEN 'completed' "
        f"WHEN EXISTS (SELECT 1 FROM {TABLE} d JOIN {EVENT_TABLE} e ON e.causation_id = d.id "
        f"JOIN {TABLE} c ON c.caused_by = e.id WHERE d.correlation_id = %s AND d.status = 'dead') "
        "THEN 'compensated' ELSE 'dead_lettered' END, "
        "finished_at = %s, last_job_id = %s "
        "WHERE correlation_id = %s AND status IN ('running', 'compensating') AND NOT EXISTS "
        f"(SELECT 1 FROM {TABLE} WHERE correlation_id = %s AND status IN ('queued', 'running'))"
    )
    params = [
        correlation_id,
        correlation_id,
        correlation_id,
        dt(now),
        last_job_id,
        correlation_id,
        correlation_id,
    ]
    with connection.cursor() as cursor:
        if supports_returning():
            cursor.execute(f"{sql} RETURNING status", params)
            row = cursor.fetchone()
            return None if row is None else str(row[0])
        cursor.execute(sql, params)
        if not cursor.rowcount:
            return None
        cursor.execute(
            f"SELECT status FROM {RUN_TABLE} WHERE correlation_id = %s", [correlation_id]
        )
        return str(cursor.fetchone()[0])
