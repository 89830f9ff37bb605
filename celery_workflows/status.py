"""What a workflow run looks like from outside: status, current step, history, state."""

from __future__ import annotations

from .records import WorkflowStatus
from .store import get_store


def get_workflow(id_or_business_key: str) -> WorkflowStatus:
    """The run with this correlation id, or else the newest run with this business key.

    Raises :class:`~celery_workflows.errors.WorkflowNotFoundError`.
    """
    return get_store().get_workflow(id_or_business_key)
