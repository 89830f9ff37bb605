"""Jobs a queue's limits hold back (:mod:`celery_workflows.limits`): what the worker does when
the claim holds one, and how held jobs are sent on.

The claim parks a job its queue's cap holds back; nobody polls for it. The attempt that frees a
slot hands it to the best held job at once: the worker that ran it claims that job and runs it
itself, with no broker hop (:func:`take`, bounded like local continuation by
``workflows_local_continuations`` in a row); past that bound, or when the sweeper recorded a
lease that ran out, the best held job is sent on (:func:`release`). The sweeper's pass
does the same for every capped queue (:func:`release_all`): the backstop for a worker killed
between its outcome and that release, and the path of a capped queue's retries due later and
of its jobs parked while it was paused. A job held by the rate is already promised its moment
by the claim; it is sent again for then.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from .errors import LedgerUnavailableError
from .events import publish_or_hand_to_sweeper
from .lease import new_lease_token, worker_name
from .limits import Held, HeldBy
from .queues import QueueSpec
from .records import ClaimedJob, Dispatch
from .store import Store

logger = logging.getLogger("celery_workflows.limits")

#: held jobs the sweeper may send on per capped queue and pass
SWEEP_RELEASE = 500
#: the sweeper sends on only held jobs due at least this long (see :func:`release_all`)
BACKSTOP_AFTER_SECONDS = 10.0


def on_held(spec: QueueSpec, job_id: str, attempt: int, held: Held) -> None:
    """The claim held ``job_id`` back (not charged, not lost): say why, and send its notice
    again for the moment the rate promised it (a parked job is sent on by a release)."""
    if held.by is HeldBy.RATE:
        # always sent when promised within the horizon: a promise of 0 s (the start came free
        # while the promise was made) must not wait for the sweeper's re-publish of lost
        # notices, minutes later
        if held.retry_in is not None:
            spec.publish(Dispatch(job_id, spec.qualified_name, attempt, None, held.retry_in))
        logger.debug(
            "%s: job %s held by the rate (%s s)", spec.qualified_name, job_id, held.retry_in
        )
        return
    logger.debug("%s: job %s held back (%s limit)", spec.qualified_name, job_id, held.by)


def runs_here(spec: QueueSpec) -> bool:
    """Whether a process that frees a slot of ``spec``'s queue takes the next held job
    itself: for caps without a rate (a rate is taken by the usual claim)."""
    limits = spec.limits
    return limits is not None and limits.caps and limits.rate is None


def take(store: Store, spec: QueueSpec) -> ClaimedJob | None:
    """Claim the best held job of ``spec``'s queue for this process (see :func:`runs_here`).
    The attempt before it is already recorded: a ledger that does not answer now leaves the
    held jobs to the sweeper's backstop rather than fail that attempt's task."""
    assert spec.limits is not None
    try:
        return store.take_held(
            spec.qualified_name,
            spec.limits,
            new_lease_token(),
            worker_name(),
            spec.lifecycle.visibility_timeout,
        )
    except LedgerUnavailableError:
        logger.warning(
            "%s: ledger unavailable; held jobs wait for the sweeper", spec.qualified_name
        )
        return None


def release(
    store: Store, spec: QueueSpec, most: int = 1, due_before: datetime | None = None
) -> int:
    """Send on up to ``most`` held jobs of ``spec``'s queue that now have a slot; how many."""
    limits = spec.limits
    if limits is None or not limits.caps:
        return 0
    due = store.release_held(spec.qualified_name, limits, most, due_before)
    if due and publish_or_hand_to_sweeper(store, spec, [d.dispatch for d in due]):
        logger.debug("%s: %d held job(s) sent on", spec.qualified_name, len(due))
    return len(due)


def release_all(store: Store, specs: list[QueueSpec], now: datetime) -> int:
    """The sweeper's backstop over capped queues: send on the jobs held for at least
    :data:`BACKSTOP_AFTER_SECONDS` that have a slot. Not the ones held a moment ago: a slot
    that frees is handed over by the attempt that freed it, and a backstop that raced the
    hand-over would send on the best held job while the hand-over took the next best."""
    due_before = now - timedelta(seconds=BACKSTOP_AFTER_SECONDS)
    return sum(release(store, spec, SWEEP_RELEASE, due_before) for spec in specs)
