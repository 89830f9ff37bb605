"""System checks: a broken workflow graph is reported by ``manage.py check`` with a hint."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register
from django.db import DatabaseError

from celery_workflows import graph


@register()
def check_workflow_graph(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    errors: list[CheckMessage] = [
        Error(
            problem,
            hint="Declare the queue with @service.queue_worker(...) or fix the subscription.",
            id="celery_workflows.E001",
        )
        for problem in graph.problems()
    ]
    return errors + [
        Warning(
            loose_end,
            hint="Subscribe to the event, declare it terminal, or remove what is unused.",
            id="celery_workflows.W002",
        )
        for loose_end in graph.warnings()
    ]


@register()
def check_runs_in_flight(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """What the ledger's runs in flight need that the declarations no longer have."""
    from .inflight import stranded

    try:
        found = stranded()
    except DatabaseError:  # no database here (a build step) or not migrated yet
        return []
    rename = "manage.py workflows rename-{} {} <new name>"
    # kind -> (message class, id, what to do)
    verdicts: dict[str, tuple[type[Error] | type[Warning], str, str]] = {
        "waiting": (
            Error,
            "celery_workflows.E003",
            "Keep the queue declared until these runs drain, or move their jobs to its new "
            "name: " + rename.format("queue", "{name}"),
        ),
        "gate": (
            Error,
            "celery_workflows.E004",
            "Subscribe to the event again, or point the gates at its new name: "
            + rename.format("event", "{name}"),
        ),
        "dead": (
            Warning,
            "celery_workflows.W003",
            "Keep the queue declared until these runs finish, or move them: "
            + rename.format("queue", "{name}"),
        ),
    }
    verdicts["completed"] = verdicts["dead"]
    messages: list[CheckMessage] = []
    for s in found:
        kind, check_id, hint = verdicts[s.kind]
        messages.append(kind(s.describe(), hint=hint.format(name=s.name), id=check_id))
    return messages
