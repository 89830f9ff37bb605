"""What a workflow run looks like from outside: status, current step, history, state."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from .store import get_store


@dataclass(frozen=True)
class HistoryEntry:
    """One job (with its attempts) or one event of a workflow, in time order."""

    kind: str  # "job" or "event"
    at: datetime
    #: the queue for a job, the event name for an event
    name: str
    id: str
    #: job status; for an event, where it came from
    status: str
    attempts: list[dict[str, Any]] = field(default_factory=list)
    payload: Any = None
    result: Any = None
    error: str = ""
    caused_by: str | None = None


@dataclass(frozen=True)
class WorkflowStatus:
    correlation_id: str
    name: str
    business_key: str
    status: str
    current_step: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    history: list[HistoryEntry]
    states: dict[str, Any]

    @property
    def dead_letters(self) -> list[HistoryEntry]:
        return [h for h in self.history if h.kind == "job" and h.status == "dead"]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        for entry in data["history"]:
            entry["at"] = entry["at"].isoformat()
        return data


def get_workflow(id_or_business_key: str) -> WorkflowStatus:
    """The run with this correlation id, or else the newest run with this business key.

    Raises :class:`~celery_workflows.errors.WorkflowNotFoundError`.
    """
    return get_store().get_workflow(id_or_business_key)
