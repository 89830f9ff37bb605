"""System checks: a broken workflow graph is reported by ``manage.py check`` with a hint."""

from __future__ import annotations

from typing import Any

from django.core.checks import Error, register

from celery_workflows import graph


@register()
def check_workflow_graph(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    return [
        Error(
            problem,
            hint="Declare the queue with @service.queue_worker(...) or fix the subscription.",
            id="celery_workflows.E001",
        )
        for problem in graph.problems()
    ]
