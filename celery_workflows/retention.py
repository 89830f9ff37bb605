"""Retention: finished workflow runs are deleted after a while, in small batches.

A run goes with its jobs, events and its own state documents. Documents shared by every run
stay, and so does the audit trail - what operators did, including each prune (audited with
its actor): delete audit entries yourself when your retention policy allows.

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


def prune_finished_runs(days: int, batch_size: int = PRUNE_BATCH, actor: str = "beat") -> int:
    """Delete runs that finished more than ``days`` days ago; return how many. Audited with
    ``actor`` (the Celery task's default: ``beat``)."""
    if days < 0 or batch_size < 1:
        raise ValueError("days must be >= 0 and batch_size >= 1")
    if not actor:
        raise ValueError("pruning needs an actor for the audit trail")
    return get_store().prune_finished(utcnow() - timedelta(days=days), batch_size, actor)
