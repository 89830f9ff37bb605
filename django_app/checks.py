"""System checks: a broken workflow graph is reported by ``manage.py check`` with a hint."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

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
