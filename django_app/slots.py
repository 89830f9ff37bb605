"""The ledger's side of flow control (:mod:`celery_workflows.limits`): the limited claim, the
jobs it holds back, and their release.

A slot is an unexpired lease: the claim of a capped queue counts its queue's (and key's)
running rows whose lease has not expired, in the claim's own ``UPDATE``. Counting and claiming
must not interleave between two workers, so on PostgreSQL both run in a transaction that first
takes a lock on the queue's name (an advisory lock: no row to create, nothing to clean up); a
statement run after the lock sees every claim committed before it. SQLite's writers take turns
anyway. Nothing is ever released explicitly: an outcome, or a lease that runs out, frees the
slot by itself, so a killed worker holds nothing beyond its lease.

A job the cap holds back is parked (``published_at`` cleared) in the same transaction, so the
attempt that frees a slot - which looks under the same lock - always sees it. The rate is paced
on the queue's control row with the generic cell rate algorithm (no burst): ``next_start`` is
the earliest moment the next attempt may start; a job that comes too early is rolled back,
given the next free moment after those already promised (``rate_backlog``) and sent again then.
The clock is the database's, so workers on hosts whose clocks differ still keep the pace.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import connection, transaction

from celery_workflows.clock import utcnow
from celery_workflows.errors import ConfigurationError
from celery_workflows.lifecycle import PUBLISH_HORIZON_SECONDS
from celery_workflows.limits import Held, HeldBy, Limits
from celery_workflows.records import DueJob, JobStatus

from .rows import dt
from .statements import CONTROL, CONTROL_COLUMNS, JOB, dialect, execute, insert_rows, update

#: candidates read per release (more held jobs wait their turn for the next release)
RELEASE_SCAN = 200

_paused = f"EXISTS (SELECT 1 FROM {CONTROL} c WHERE c.queue = {JOB}.queue AND c.paused)"
_running = f"s.queue = {JOB}.queue AND s.status = '{JobStatus.RUNNING}' AND s.lease_expires_at > %s"


def slot_conditions(limits: Limits, queue: str, now: datetime) -> tuple[str, list[Any]]:
    """SQL (``AND ...``) that holds while the claimed row is of ``queue`` and its queue and
    key have a free slot."""
    sql = f" AND {JOB}.queue = %s"
    params: list[Any] = [queue]
    others = f"SELECT count(*) FROM {JOB} s WHERE {_running} AND s.id <> {JOB}.id"
    if limits.concurrency is not None:
        sql += f" AND ({others}) < %s"
        params += [dt(now), limits.concurrency]
    if limits.key is not None:
        sql += f" AND ({others} AND s.limit_key = {JOB}.limit_key) < %s"
        params += [dt(now), limits.per_key]
    return sql, params


#: the databases whose SQL enforces limits (MySQL/MariaDB refuse a count of the table an
#: UPDATE changes); ``manage.py check`` reports E006 on the others
VENDORS = ("postgresql", "sqlite")


def check_database() -> None:
    """Limits are enforced in SQL that PostgreSQL and SQLite run; refuse the others clearly."""
    if connection.vendor not in VENDORS:
        raise ConfigurationError(
            f"queue limits need PostgreSQL or SQLite; this ledger is on {connection.vendor}"
        )


def lock_queue(queue: str) -> None:
    """Serialise the claims and releases of ``queue`` until the transaction ends (PostgreSQL;
    elsewhere the writers take turns already). The claim's commit does not wait for its WAL
    flush: a claim lost in a crash only means its attempt runs again."""
    lock = dialect().name_lock()
    if lock is not None:
        execute(
            f"SELECT ({lock.removeprefix('SELECT ')}), "
            "set_config('synchronous_commit', 'off', true)",
            [f"cw-slots:{queue}"],
        )


def park_held(job_id: str, attempt: int, limits: Limits, queue: str, now: datetime) -> Held | None:
    """After a capped claim that won nothing: park the job if it is claimable and only a slot
    was missing (in the claim's transaction); why it waits, or None if it is not claimable."""
    parked = update(
        f"UPDATE {JOB} SET published_at = NULL WHERE id = %s AND status = '{JobStatus.QUEUED}' "
        f"AND attempts = %s AND NOT {_paused}",
        [job_id, attempt - 1],
    )
    if not parked:
        return None
    if limits.key is None:
        return Held(HeldBy.CONCURRENCY)
    if limits.concurrency is None:
        return Held(HeldBy.KEY)
    in_use = execute(
        f"SELECT count(*) FROM {JOB} WHERE queue = %s AND status = '{JobStatus.RUNNING}' "
        "AND lease_expires_at > %s",
        [queue, dt(now)],
    )[0][0]
    return Held(HeldBy.CONCURRENCY if in_use >= limits.concurrency else HeldBy.KEY)


#: the longest a claim waits in place for its queue's next start (at most one interval):
#: a job that comes back a moment after its promised start - the start before it was a little
#: late - waits that moment instead of going to the back of the line
SHORT_WAIT_SECONDS = 0.1


class RateHeld(Exception):
    """Raised inside the claim's transaction to roll the claim back: no start is free yet.
    ``wait``: seconds until the queue's next start."""

    def __init__(self, wait: float) -> None:
        super().__init__(wait)
        self.wait = wait


_ensured: set[str] = set()


def take_start(job_id: str, queue: str, interval: float) -> datetime:
    """Take the queue's next start under its rate for ``job_id`` and record that moment (by
    the database's clock) as the attempt's start; or raise :class:`RateHeld`."""
    d = dialect()
    now = d.epoch_now
    sql = (
        f"UPDATE {CONTROL} SET next_start = {d.greatest}(next_start, {now}) + %s "
        f"WHERE queue = %s AND next_start <= {now} RETURNING next_start - %s"
    )
    params = [interval, queue, interval]
    rows = execute(sql, params)
    if not rows and queue not in _ensured and _ensure_control_row(queue):
        rows = execute(sql, params)
    if rows:
        # the attempt's start is the moment the rate granted: starts of a paced queue, as the
        # ledger records them, are never closer than its interval
        started = datetime.fromtimestamp(float(rows[0][0]), UTC)
        update(f"UPDATE {JOB} SET started_at = %s WHERE id = %s", [dt(started), job_id])
        return started
    rows = execute(f"SELECT next_start - {now} FROM {CONTROL} WHERE queue = %s", [queue])
    raise RateHeld(max(0.0, float(rows[0][0])) if rows else interval)


def _ensure_control_row(queue: str) -> bool:
    """Create the queue's control row if it has none; True if this call created it."""
    _ensured.add(queue)
    values = {c: None for c in CONTROL_COLUMNS} | {
        "queue": queue,
        "paused": False,
        "paused_by": "",
        "reason": "",
        "failures": 0,
        "next_start": 0.0,
        "rate_backlog": 0.0,
    }
    return bool(insert_rows(CONTROL, CONTROL_COLUMNS, [values], key="queue"))


def defer_for_rate(job_id: str, attempt: int, queue: str, interval: float) -> Held:
    """Promise the job the first start after those already promised, and move it there: due
    then, and published then unless that is beyond the horizon (the sweeper sends it when
    due). Each job held by the rate gets its own moment, so they do not all come back at once."""
    d = dialect()
    now = d.epoch_now
    rows = execute(
        f"UPDATE {CONTROL} SET rate_backlog = {d.greatest}(rate_backlog, next_start, {now}) + %s "
        f"WHERE queue = %s RETURNING rate_backlog - %s - {now}",
        [interval, queue, interval],
    )
    wait = max(0.0, float(rows[0][0])) if rows else interval
    at = utcnow() + timedelta(seconds=wait)
    published = wait <= PUBLISH_HORIZON_SECONDS
    update(
        f"UPDATE {JOB} SET available_at = %s, published_at = %s "
        f"WHERE id = %s AND status = '{JobStatus.QUEUED}' AND attempts = %s",
        [dt(at), dt(at) if published else None, job_id, attempt - 1],
    )
    return Held(HeldBy.RATE, retry_in=wait if published else None)


def release_held(
    queue: str, limits: Limits, most: int, due_before: datetime | None = None
) -> list[DueJob]:
    """Mark published (to be sent on) up to ``most`` of the jobs ``limits`` held back (with
    ``due_before``: only jobs due since then)."""
    now = utcnow()
    if due_before is not None and not execute(
        # the sweeper's backstop, each pass: no lock, no transaction while nothing waits
        f"SELECT 1 FROM {JOB} WHERE queue = %s AND status = '{JobStatus.QUEUED}' "
        "AND published_at IS NULL AND available_at <= %s LIMIT 1",
        [queue, dt(due_before)],
    ):
        return []
    with transaction.atomic():
        lock_queue(queue)
        chosen = choose_held(queue, limits, most, now, due_before or now)
        if chosen:
            marks = ", ".join(["%s"] * len(chosen))
            update(
                f"UPDATE {JOB} SET published_at = %s WHERE id IN ({marks}) "
                f"AND status = '{JobStatus.QUEUED}' AND published_at IS NULL",
                [dt(now), *[c.job_id for c in chosen]],
            )
        return chosen


def choose_held(
    queue: str, limits: Limits, most: int, now: datetime, due_by: datetime | None = None
) -> list[DueJob]:
    """Up to ``most`` of the jobs ``limits`` held back and due by ``due_by`` (default: now),
    as many as there are free slots now:
    highest priority first, then the longest waiting, skipping keys whose slots are all
    taken. Run under the queue's lock (:func:`lock_queue`), so that a job parked at the same
    moment is seen."""
    candidates = execute(
        f"SELECT id, attempts, priority, limit_key FROM {JOB} "
        f"WHERE queue = %s AND status = '{JobStatus.QUEUED}' AND published_at IS NULL "
        f"AND available_at <= %s AND NOT {_paused} "
        "ORDER BY COALESCE(priority, 0) DESC, available_at, id LIMIT %s",
        [queue, dt(due_by or now), RELEASE_SCAN],
    )
    if not candidates:
        return []
    in_use = Counter(
        dict(
            execute(
                f"SELECT limit_key, count(*) FROM {JOB} WHERE queue = %s "
                f"AND status = '{JobStatus.RUNNING}' AND lease_expires_at > %s "
                "GROUP BY limit_key",
                [queue, dt(now)],
            )
        )
    )
    free = most
    if limits.concurrency is not None:
        free = min(most, limits.concurrency - in_use.total())
    chosen: list[DueJob] = []
    for job_id, attempts, priority, key in candidates:
        if len(chosen) >= free:
            break
        if limits.key is not None:
            if in_use[key] >= limits.per_key:
                continue
            in_use[key] += 1
        chosen.append(DueJob(job_id, queue, attempts + 1, priority, None))
    return chosen
