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
    messages: list[CheckMessage] = []
    for s in found:
        if s.kind == "gate":
            messages.append(
                Error(
                    s.describe(),
                    hint="Subscribe to the event again, or point the gates at its new name: "
                    + rename.format("event", s.name),
                    id="celery_workflows.E004",
                )
            )
        elif s.kind == "waiting":
            messages.append(
                Error(
                    s.describe(),
                    hint="Keep the queue declared until these runs drain, or move their jobs "
                    "to its new name: " + rename.format("queue", s.name),
                    id="celery_workflows.E003",
                )
            )
        else:
            messages.append(
                Warning(
                    s.describe(),
                    hint="Keep the queue declared until these runs finish, or move them: "
                    + rename.format("queue", s.name),
                    id="celery_workflows.W003",
                )
            )
    return messages
