"""``{% load workflows %}``: a model instance's workflow runs on the project's own pages.

``{% workflow_runs order %}`` renders the runs :func:`django_app.subjects.runs_for` finds
(status, start, steps, a link to each run's admin page) for users who may view runs - the same
list as the admin's :class:`~django_app.subjects.WorkflowRunsMixin`.
"""

from __future__ import annotations

from typing import Any

from django import template

from ..subjects import runs_context

register = template.Library()


@register.inclusion_tag("celery_workflows/subject_runs.html", takes_context=True)
def workflow_runs(context: template.Context, obj: Any) -> dict[str, Any]:
    return runs_context(obj, context.get("request"))
