"""The floor: the toolkit's work for one standalone job, with none of the toolkit's code.

What a standalone job costs the toolkit is fixed by its statements and its messages: at enqueue
one INSERT of the job and its run (a durable commit) and one Celery publish; at the worker one
Celery consume, the claim UPDATE (the lease, committed without waiting for its WAL flush), the
business work, and the outcome statement (the job's outcome and the run's settling, under the
run's row lock, a durable commit). This module does exactly that and nothing more - the same
statement texts against the same tables, as psycopg server-side prepared statements on one
connection per process, the same ``apply_async(args=(job id, attempt))`` notice to a plain
Celery task with the same options (``acks_late=False``, no result) - so the rate it reaches is
what the statements and the broker allow on this machine. ``make bench`` runs it beside the
toolkit and plain Celery (``floor=`` and ``floor_ratio=`` on the ``jobs`` lines): the gap
between the toolkit and the floor is the toolkit's own Python.

Its Celery app is set up as both other sides' are, as a Django project's Celery app usually is:
settings read from Django's (``bench.plain_settings``, which does not install the toolkit), so
Celery's Django fixup runs around each task as it does for them. What Celery itself costs in
such a project (each configuration lookup on the publish path goes through Django's settings)
is not the toolkit's, and is in the floor too.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from celery import Celery

from bench.work import work

DATABASE_URL = os.environ.get(
    "BENCH_FLOOR_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/cw_bench"
)
QUEUE = "bench.floor"

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.plain_settings")

app = Celery("floor")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(task_serializer="json", accept_content=["json"], worker_hijack_root_logger=False)
app.conf.CELERY_DB_REUSE_MAX = 1000

#: the enqueue's one statement: the run (or one more pending job on it) and the job
INSERT = (
    "WITH run AS (INSERT INTO celery_workflows_workflowrun (correlation_id, name, business_key,"
    " status, started_by, started_at, finished_at, last_job_id, waiting_for, pending_jobs,"
    " dead_jobs, cancelled_jobs, compensation_jobs, failed_compensations, deadline_at,"
    " gate_expires_at, ended_by, definition_version, parent_id) VALUES (%s, %s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (correlation_id) DO UPDATE"
    " SET pending_jobs = celery_workflows_workflowrun.pending_jobs + excluded.pending_jobs)"
    " INSERT INTO celery_workflows_job (id, service, queue, status, payload, result, attempts,"
    " max_attempts, priority, correlation_id, idempotency_key, available_at, published_at,"
    " lease_token, lease_expires_at, worker, started_at, finished_at, cancel_requested,"
    " dead_reason, attempt_log, caused_by, trace_id, compensates, redriven_from_id, limit_key,"
    " coalesce_key, gather_id, gather_index, progress, created_at) VALUES (%s, %s, %s, %s, %s,"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
    " %s, %s, %s, %s)"
)

#: the claim: the lease, if the job is still queued at this attempt and its queue not paused
CLAIM = (
    "WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)) UPDATE"
    " celery_workflows_job SET status = 'running', attempts = %s, lease_token = %s,"
    " lease_expires_at = %s, worker = %s, started_at = %s FROM relaxed WHERE id = %s AND"
    " ((status = 'queued' AND attempts = %s AND NOT EXISTS (SELECT 1 FROM"
    " celery_workflows_queuecontrol c WHERE c.queue = celery_workflows_job.queue AND c.paused))"
    " OR (status = 'running' AND attempts = %s AND lease_token = %s)) RETURNING queue, payload,"
    " max_attempts, correlation_id, attempt_log, created_at, priority, trace_id, compensates,"
    " coalesce_key, gather_id, (SELECT r.business_key FROM celery_workflows_workflowrun r WHERE"
    " r.correlation_id = celery_workflows_job.correlation_id)"
)

#: the outcome: the job's result, fenced by its lease, and the run settled, under the run's lock
_SETTLES = "status IN ('running', 'compensating') AND pending_jobs + (0 - 1) <= 0"
OUTCOME = (
    "WITH lock AS MATERIALIZED (SELECT ended_by, status FROM celery_workflows_workflowrun WHERE"
    " correlation_id = %s FOR UPDATE), done AS (UPDATE celery_workflows_job SET status = %s,"
    " result = %s, finished_at = %s, attempts = %s, lease_expires_at = %s, attempt_log ="
    " attempt_log || jsonb_build_array(%s::jsonb) WHERE id = %s AND status = 'running' AND"
    " lease_token = %s AND lease_expires_at > %s AND NOT EXISTS (SELECT 1 FROM lock WHERE"
    " (ended_by <> '' OR status = 'compensating')) RETURNING 1), run AS (UPDATE"
    f" celery_workflows_workflowrun SET status = CASE WHEN {_SETTLES} THEN CASE WHEN"
    " failed_compensations + 0 > 0 THEN 'dead_lettered' WHEN compensation_jobs + 0 > 0 THEN"
    " 'compensated' WHEN ended_by <> '' THEN 'cancelled' WHEN dead_jobs + 0 > 0 THEN"
    " 'dead_lettered' WHEN cancelled_jobs + 0 > 0 THEN 'cancelled' ELSE 'completed' END ELSE"
    f" status END, finished_at = CASE WHEN {_SETTLES} THEN %s ELSE finished_at END, last_job_id"
    f" = CASE WHEN {_SETTLES} THEN %s ELSE last_job_id END, pending_jobs = CASE WHEN"
    " pending_jobs + (0 - 1) < 0 THEN 0 ELSE pending_jobs + (0 - 1) END, dead_jobs = dead_jobs"
    " + 0, cancelled_jobs = cancelled_jobs + 0, compensation_jobs = compensation_jobs + 0,"
    " failed_compensations = failed_compensations + 0 WHERE correlation_id = %s AND EXISTS"
    " (SELECT 1 FROM done) RETURNING status, last_job_id, parent_id) SELECT (SELECT count(*)"
    " FROM done), NULL, (SELECT status FROM run), (SELECT last_job_id FROM run), (SELECT"
    " parent_id FROM run)"
)

_connection: psycopg.Connection[Any] | None = None


def connection() -> psycopg.Connection[Any]:
    """This process's one connection (autocommit: each statement is its own transaction)."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(DATABASE_URL, autocommit=True, prepare_threshold=0)
    return _connection


def new_id() -> str:
    """32 hex digits, time-ordered like the toolkit's ids (index locality matters)."""
    return f"{time.time_ns() // 1000:016x}{secrets.token_hex(8)}"


def enqueue(payload: dict[str, Any]) -> str:
    """The job and its run in one durable statement, then the notice."""
    now = datetime.now(UTC)
    run_id, job_id = new_id(), new_id()
    connection().execute(
        INSERT,
        [
            run_id,
            "bench",
            "",
            "running",
            "bench.floor",
            now,
            None,
            "",
            None,
            1,
            0,
            0,
            0,
            0,
            None,
            None,
            "",
            "floor",
            None,
            job_id,
            "bench",
            QUEUE,
            "queued",
            json.dumps(payload),
            None,
            0,
            5,
            None,
            run_id,
            None,
            now,
            now,
            None,
            None,
            "",
            None,
            None,
            False,
            "",
            "[]",
            None,
            "",
            None,
            None,
            "",
            "",
            None,
            None,
            None,
            now,
        ],
        prepare=True,
    )
    floor_step.apply_async(args=(job_id, 1), queue=QUEUE, priority=None)
    return job_id


@app.task(name="bench.floor_step", ignore_result=True, acks_late=False)
def floor_step(job_id: str, attempt: int) -> None:
    db = connection()
    started = datetime.now(UTC)
    token = secrets.token_hex(16)
    worker = f"floor:{os.getpid()}"
    claimed = db.execute(
        CLAIM,
        [
            attempt,
            token,
            started + timedelta(seconds=60),
            worker,
            started,
            job_id,
            attempt - 1,
            attempt,
            token,
        ],
        prepare=True,
    ).fetchone()
    if claimed is None:
        return
    payload = claimed[1]
    work(payload["counter"], payload["io_ms"])
    finished = datetime.now(UTC)
    log = {
        "error": "",
        "worker": worker,
        "attempt": attempt,
        "outcome": "succeeded",
        "traceback": "",
        "started_at": started.isoformat(),
        "duration_ms": round((finished - started).total_seconds() * 1000, 1),
        "finished_at": finished.isoformat(),
    }
    db.execute(
        OUTCOME,
        [
            claimed[3],
            "succeeded",
            "null",
            finished,
            attempt,
            None,
            json.dumps(log),
            job_id,
            token,
            finished,
            finished,
            job_id,
            claimed[3],
        ],
        prepare=True,
    ).fetchone()
