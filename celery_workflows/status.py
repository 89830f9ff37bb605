"""What a workflow run looks like from outside: status, current step, history, state."""

from __future__ import annotations

from .records import PENDING_JOB_STATUSES, HistoryEntry, WorkflowStatus
from .store import get_store


def current_step(history: list[HistoryEntry]) -> str:
    """The step a run is at: its newest pending job's queue, else its last job's."""
    jobs = [h for h in history if h.kind == "job"]
    active = [h for h in jobs if h.status in PENDING_JOB_STATUSES]
    if active:
        return active[-1].name
    return jobs[-1].name if jobs else ""


def get_workflow(id_or_business_key: str) -> WorkflowStatus:
    """The run with this correlation id, or else the newest run with this business key.

    Raises :class:`~celery_workflows.errors.WorkflowNotFoundError`.
    """
    return get_store().get_workflow(id_or_business_key)
