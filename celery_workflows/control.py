"""Operating queues: pause and resume, the poison threshold, and per-minute figures.

Pausing a queue holds its jobs in the ledger. The claim itself refuses a job of a paused
queue (one more condition in the same statement), so a pause holds from the moment it is
committed; the worker that received the notice marks the job unpublished and drops the
notice, and the sweeper does not publish that queue's jobs while it is paused. Resuming lets
the sweeper publish them again on its next pass (within ``workflows_sweep_interval``), so
nothing is lost and nothing is duplicated - each attempt is still claimed exactly once.
Attempts already running when the queue is paused finish normally. A job handed straight to
the process that finished the step before it (local continuation) consults that process's
copy of the pause flags, read from the ledger at most once a second (:data:`REFRESH_SECONDS`),
so such a next step may still start within a second of a pause.

The poison threshold (``Lifecycle(pause_after_failures=N)``) counts failed attempts of a queue
in a row, across every worker, and pauses the queue when the count reaches N - with the
``queue_paused`` signal and an audit entry by ``poison-threshold``. A success resets the count.
Counted are exceptions, lost leases and fatal errors; a ``ctx.retry()``, a payload that fails
its schema and a ``ctx.dead_letter()`` neither count nor reset.

Each process also sums its attempts per queue and minute in memory and adds the sums to the
ledger :data:`FLUSH_SECONDS` after the first unsaved attempt (one small write per queue, not
one per job; a short-lived timer thread in the pool process does it, on a connection of its
own that it closes): the dashboard's throughput and failure rate. A process killed with
SIGKILL loses at most its last few seconds of these figures - never a job. The sweeper, in the
worker's main process, saves what it counted at the end of its pass instead (no thread may
run in a process that forks pool children).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Iterable
from datetime import datetime

from . import registry, signals
from .errors import ConfigurationError, LedgerUnavailableError
from .queues import QueueSpec
from .records import AttemptOutcome, JobStatus, Outcome, QueueControl, QueueMinute
from .store import Controls, get_store

logger = logging.getLogger("celery_workflows.control")

#: seconds a process trusts its copy of the pause flags and failure counts
REFRESH_SECONDS = 1.0
#: seconds between two additions of a process's per-minute sums to the ledger
FLUSH_SECONDS = 5.0
POISON_ACTOR = "poison-threshold"
#: attempt outcomes that count towards a queue's poison threshold
POISON_OUTCOMES = (AttemptOutcome.FAILED, AttemptOutcome.LEASE_EXPIRED, AttemptOutcome.FATAL)


class _Cache:
    """This process's copy of the queue controls, and its unsaved per-minute sums."""

    def __init__(self) -> None:
        self.fetched = -math.inf
        self.controls: dict[str, QueueControl] = {}
        self.minutes: dict[tuple[str, datetime], list[float]] = {}
        self.lock = threading.Lock()
        #: the pending timer thread that saves ``minutes``, and the process it belongs to
        self.timer: threading.Timer | None = None
        self.timer_pid = 0

    def fresh(self, store: Controls) -> dict[str, QueueControl]:
        if time.monotonic() - self.fetched > REFRESH_SECONDS:
            try:
                self.controls = store.queue_controls()
            except LedgerUnavailableError:
                # the store already reconnected and retried for its budget: an attempt's
                # outcome must not fail over a pause flag, so the last copy stands until the
                # database answers again (the claim itself checks the ledger's flag)
                logger.warning("queue controls unreadable; using the copy from before")
            self.fetched = time.monotonic()
        return self.controls

    def forget(self) -> None:
        self.fetched = -math.inf


_cache = _Cache()


def queue_controls(store: Controls) -> dict[str, QueueControl]:
    """The queues that are paused or failing, as this process last read them (<= 1 s old)."""
    return _cache.fresh(store)


def is_paused(queue: str, store: Controls, refresh: bool = False) -> bool:
    """Whether ``queue`` is paused (``refresh``: read the ledger now, not this process's copy)."""
    if refresh:
        _cache.forget()
    control = queue_controls(store).get(queue)
    return control is not None and control.paused


def paused_queues(store: Controls) -> set[str]:
    return {name for name, control in queue_controls(store).items() if control.paused}


def pause_queue(queue: str, *, actor: str = "python", reason: str = "") -> bool:
    """Stop starting jobs of ``queue`` (``service.queue``); its jobs wait in the ledger.
    Audited with ``actor``. Returns False if it was paused already."""
    registry.get_queue(queue)
    return _set_paused(get_store(), queue, True, actor, reason)


def resume_queue(queue: str, *, actor: str = "python") -> bool:
    """Start ``queue``'s jobs again, beginning with those held while it was paused.
    Audited with ``actor``. Returns False if it was not paused."""
    registry.get_queue(queue)
    return _set_paused(get_store(), queue, False, actor, "")


def _set_paused(store: Controls, queue: str, paused: bool, actor: str, reason: str) -> bool:
    if not actor:
        raise ConfigurationError("pausing or resuming a queue needs an actor")
    changed = store.set_paused(queue, paused, actor, reason)
    _cache.forget()
    if changed and paused:
        logger.warning("queue %s paused by %s: %s", queue, actor, reason or "no reason given")
        signals.queue_paused.send(sender=queue, queue=queue, actor=actor, reason=reason)
    elif changed:
        logger.info("queue %s resumed by %s", queue, actor)
        signals.queue_resumed.send(sender=queue, queue=queue, actor=actor)
    return changed


def note_outcome(
    store: Controls, spec: QueueSpec, outcome: Outcome, save_later: bool = True
) -> None:
    """Count a recorded attempt: in this process's per-minute sums (saved by a timer thread
    unless ``save_later`` is False - then the caller calls :func:`flush`), and against the
    queue's poison threshold."""
    failed = outcome.status != JobStatus.SUCCEEDED
    minute = outcome.attempt.finished_at.replace(second=0, microsecond=0)
    # the poison threshold counts what says the queue's work is broken: an exception, a lost
    # lease, a fatal error; a retry the handler asked for, a payload that fails its schema
    # and a job parked on purpose say nothing about the queue (and reset nothing either)
    streak = (
        False
        if outcome.status == JobStatus.SUCCEEDED
        else True
        if outcome.attempt.outcome in POISON_OUTCOMES
        else None
    )
    took = (outcome.attempt.finished_at - outcome.attempt.started_at).total_seconds() * 1000
    with _cache.lock:
        sums = _cache.minutes.setdefault((spec.qualified_name, minute), [0, 0, 0, 0.0])
        sums[0 if not failed else 1] += 1
        sums[2] += outcome.status == JobStatus.DEAD
        sums[3] += took
    threshold = spec.lifecycle.pause_after_failures
    if threshold is not None and streak is not None:
        try:
            _count(store, spec.qualified_name, streak, threshold)
        except LedgerUnavailableError:
            # the outcome is recorded; only this attempt's part of the streak is lost
            logger.warning(
                "%s: failure streak not updated (ledger unavailable)", spec.qualified_name
            )
    if save_later:
        _save_later(store)


def _save_later(store: Controls) -> None:
    timer = _cache.timer
    if timer is not None and _cache.timer_pid == os.getpid() and timer.is_alive():
        return
    timer = threading.Timer(FLUSH_SECONDS, _save_now, args=(store,))
    timer.daemon = True
    _cache.timer, _cache.timer_pid = timer, os.getpid()
    timer.start()


def _save_now(store: Controls) -> None:
    try:
        flush(store)
    finally:
        store.release_connection()


def _count(store: Controls, queue: str, failed: bool, threshold: int) -> None:
    if not failed:
        # in the ledger, not from this process's copy: another worker's failures since the
        # copy was read would otherwise survive this success
        store.reset_failures(queue)
        return
    streak = store.count_failure(queue)
    if streak >= threshold and not is_paused(queue, store):
        reason = f"{streak} attempts in a row failed (pause_after_failures={threshold})"
        _set_paused(store, queue, True, POISON_ACTOR, reason)


def flush(store: Controls) -> None:
    """Add this process's per-minute sums to the ledger (a failure keeps them for next time)."""
    with _cache.lock:
        pending, _cache.minutes = _cache.minutes, {}
    if not pending:
        return
    rows = [
        QueueMinute(queue, minute, int(s[0]), int(s[1]), int(s[2]), float(s[3]))
        for (queue, minute), s in pending.items()
    ]
    try:
        store.add_minutes(rows)
    except Exception:
        logger.warning("per-minute queue figures not saved; kept for the next try", exc_info=True)
        with _cache.lock:
            for (queue, minute), s in pending.items():
                kept = _cache.minutes.setdefault((queue, minute), [0, 0, 0, 0.0])
                for i, value in enumerate(s):
                    kept[i] += value


def running_queues(queues: Iterable[str], store: Controls) -> list[str]:
    """``queues`` without the paused ones (what the sweeper may publish)."""
    paused = paused_queues(store)
    return [q for q in queues if q not in paused]
