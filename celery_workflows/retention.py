"""Retention: finished workflow runs are deleted after a while, in small batches.

Run it from cron with ``manage.py workflows prune --days N``, or schedule the Celery task
``celery_workflows.prune_finished_runs`` with beat, e.g.
``{"task": "celery_workflows.prune_finished_runs", "schedule": 3600, "kwargs": {"days": 30}}``.
"""

from __future__ import annotations

from datetime import timedelta

from .clock import utcnow
from .store import get_store

#: runs deleted per transaction, so a big prune never holds long locks
PRUNE_BATCH = 500
PRUNE_TASK = "celery_workflows.prune_finished_runs"


def prune_finished_runs(days: int, batch_size: int = PRUNE_BATCH) -> int:
    """Delete runs that finished more than ``days`` days ago; return how many."""
    if days < 0 or batch_size < 1:
        raise ValueError("days must be >= 0 and batch_size >= 1")
    return get_store().prune_finished(utcnow() - timedelta(days=days), batch_size)
