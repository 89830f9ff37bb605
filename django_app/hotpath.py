"""Raw SQL for the three writes every job makes: insert, claim and outcome.

The ORM costs ~0.2 ms of Python per statement to compile; on a busy worker that is most of the
ledger's overhead, so these statements are written once, by hand, for the project's database.
``RETURNING`` (PostgreSQL, SQLite >= 3.35) lets the claim win the lease and read the job in one
round trip; other databases fall back to UPDATE then SELECT.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.db import connection
from django.utils.dateparse import parse_datetime

from .models import Job

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
]


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


def insert(values: dict[str, Any]) -> None:
    """INSERT one job row; ``values`` maps every column name to an adapted value."""
    cols = ", ".join(COLUMNS)
    marks = ", ".join(["%s"] * len(COLUMNS))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {TABLE} ({cols}) VALUES ({marks})", [values[c] for c in COLUMNS]
        )


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
